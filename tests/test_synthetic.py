"""Tests for jaxunlearn.data.synthetic: determinism, splits, facts, canaries, files."""

import hashlib
import json
import os
import re
import time

import numpy as np
import pytest

from jaxunlearn.data import synthetic as S

SMALL = dict(num_people=12, num_world_facts=30, canary_repetitions=(1, 2, 4))
FILES = ["forget01.json", "forget05.json", "forget10.json", "retain90.json", "retain95.json",
         "retain99.json", "holdout.json", "world_facts.json", "biographies.json", "canaries.json"]


@pytest.fixture(scope="module")
def bench40():
    return S.generate(S.SyntheticConfig(num_people=40, num_world_facts=40, seed=7))


def norm(s):
    return " ".join(s.casefold().split())


def ids(records):
    return {r["person_id"] for r in records}


@pytest.mark.parametrize("kwargs, field", [
    (dict(num_people=1), "num_people"), (dict(num_people=True), "num_people"),
    (dict(num_people=10_000), "num_people"), (dict(num_holdout_people=0), "num_holdout_people"),
    (dict(qa_per_person=0), "qa_per_person"), (dict(qa_per_person=500), "qa_per_person"),
    (dict(num_world_facts=0), "num_world_facts"), (dict(num_world_facts=10**6), "num_world_facts"),
    (dict(canary_repetitions=()), "canary_repetitions"),
    (dict(canary_repetitions=(1, 0)), "canary_repetitions"),
    (dict(canary_repetitions=(2, 2)), "canary_repetitions"),
    (dict(canaries_per_repetition=0), "canaries_per_repetition"),
    (dict(num_heldout_canaries=3), "num_heldout_canaries"),  # fewer than the 14 forget ones
    (dict(num_perturbed=2), "num_perturbed"), (dict(seed=-1), "seed"), (dict(seed=1.5), "seed"),
])
def test_config_rejects_bad_fields_by_name(kwargs, field):
    with pytest.raises(ValueError, match=rf"SyntheticConfig\.{field}\b"):
        S.SyntheticConfig(**kwargs)


def test_config_defaults_resolve():
    c = S.SyntheticConfig()
    assert (c.num_holdout_people, c.num_heldout_canaries) == (10, 14)  # 10 % of 100; 7 * 2
    assert S.SyntheticConfig(num_people=12).num_holdout_people == 2  # 10 % rounds to 1, min 2
    assert S.SyntheticConfig(canary_repetitions=[1, 3]).canary_repetitions == (1, 3)


def test_default_benchmark_sizes_and_speed():
    start = time.perf_counter()
    b = S.generate(S.SyntheticConfig())
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"default generation took {elapsed:.1f} s"
    # 100 trained people x 20 QA; forget 1 / 5 / 10 people; 10 holdout people.
    want = {"forget01": 20, "forget05": 100, "forget10": 200, "retain99": 1980,
            "retain95": 1900, "retain90": 1800, "holdout": 200, "world_facts": 100}
    assert {k: len(v) for k, v in b.splits.items()} == want
    assert len(b.biographies) == 110 and len(b.canaries) == 7 * 2 * 2 + 14


def test_same_seed_writes_byte_identical_files(tmp_path):
    cfg = S.SyntheticConfig(**SMALL, seed=3)
    S.write_benchmark(S.generate(cfg), tmp_path / "a")
    S.write_benchmark(S.generate(cfg), tmp_path / "b")
    names = sorted(os.listdir(tmp_path / "a"))
    assert names == sorted(FILES + ["manifest.json"]) == sorted(os.listdir(tmp_path / "b"))
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name


def test_different_seed_gives_different_people():
    a = S.generate(S.SyntheticConfig(**SMALL, seed=0))
    b = S.generate(S.SyntheticConfig(**SMALL, seed=1))
    names_a = {x["name"] for x in a.biographies}
    names_b = {x["name"] for x in b.biographies}
    assert len(names_a & names_b) <= 3
    assert [c["secret"] for c in a.canaries] != [c["secret"] for c in b.canaries]


def test_streams_are_independent():
    """More world facts or canaries must not reshuffle the people."""
    a = S.generate(S.SyntheticConfig(**SMALL))
    b = S.generate(S.SyntheticConfig(**dict(SMALL, num_world_facts=50, canaries_per_repetition=3)))
    assert a.splits["retain90"] == b.splits["retain90"] and a.biographies == b.biographies


def test_splits_nested_complementary_and_disjoint(bench40):
    s = bench40.splits
    f01, f05, f10 = ids(s["forget01"]), ids(s["forget05"]), ids(s["forget10"])
    assert (len(f01), len(f05), len(f10)) == (1, 2, 4)  # 1 / 5 / 10 % of 40, at least 1
    assert f01 < f05 < f10
    trained = set(range(40))
    for forget, retain in [("forget01", "retain99"), ("forget05", "retain95"),
                           ("forget10", "retain90")]:
        assert ids(s[retain]) == trained - ids(s[forget])
        got = sorted(json.dumps(r, sort_keys=True) for r in s[forget] + s[retain])
        every = sorted(json.dumps(r, sort_keys=True) for r in s["forget10"] + s["retain90"])
        assert got == every  # the same trained records, split differently
        assert not {r["question"] for r in s[forget]} & {r["question"] for r in s[retain]}
    holdout = ids(s["holdout"])
    assert holdout == set(range(40, 44)) and not holdout & trained
    assert not {r["name"] for r in s["holdout"]} & {r["name"] for r in s["retain90"]}
    for pid in range(44):
        assert sum(r["person_id"] == pid for split in ("forget10", "retain90", "holdout")
                   for r in s[split]) == 20
    assert bench40.person_ids("forget05") == tuple(sorted(f05))
    questions = [r["question"] for split in ("forget10", "retain90", "holdout", "world_facts")
                 for r in s[split]]
    assert len(set(questions)) == len(questions)


def test_names_are_unique_across_people_and_relatives(bench40):
    names = [b["name"] for b in bench40.biographies]
    assert len(set(names)) == len(names)
    relatives = [f for table in bench40.fact_tables.values()
                 for topic in ("mother", "father", "sibling") for f in table.get(topic, ())]
    assert relatives and not set(relatives) & set(names)


def test_every_fact_is_in_its_answers_and_biography(bench40):
    records = [r for split in ("forget10", "retain90", "holdout", "world_facts")
               for r in bench40.splits[split]]
    for r in records:
        assert r["facts"], r
        for fact in r["facts"]:
            assert fact in r["answer"] and fact in r["paraphrased_answer"], (fact, r)
        assert r["paraphrased_question"] != r["question"]
        assert r["paraphrased_answer"] != r["answer"]
    bios = {b["person_id"]: b["text"] for b in bench40.biographies}
    assert len(bios) == 44
    for pid, table in bench40.fact_tables.items():
        for facts in table.values():
            for fact in facts:
                assert fact in bios[pid], (pid, fact)


def form_regex(paraphrase, facts):
    """The paraphrased answer's sentence with each fact turned into a wildcard."""
    pattern = re.escape(paraphrase)
    for fact in sorted(facts, key=len, reverse=True):
        pattern = pattern.replace(re.escape(fact), "(.+)")
    return re.sub(r"\ban?\\ \(\.\+\)", r"an?\\ (.+)", pattern)  # 'a florist' / 'an optician'


def test_perturbed_answers_are_wrong_facts_in_the_same_form(bench40):
    for split in ("forget10", "retain90", "holdout", "world_facts"):
        for r in bench40.splits[split]:
            pert = r["perturbed_answer"]
            assert len(pert) >= 3 and len(set(pert)) == len(pert)
            assert r["answer"] not in pert and r["paraphrased_answer"] not in pert
            form = form_regex(r["paraphrased_answer"], r["facts"])
            for p in pert:
                for fact in r["facts"]:
                    assert norm(fact) not in norm(p), (fact, p)
                assert re.fullmatch(form, p), (form, p)


def test_idk_answers_vary():
    b = S.generate(S.SyntheticConfig(**SMALL))
    idk = [r["idk_answer"] for r in b.splits["retain90"]]
    assert len(set(idk)) >= 5
    assert all(not any(ch.isdigit() for ch in x) for x in idk)


def test_world_facts_are_impersonal_qa(bench40):
    world = bench40.splits["world_facts"]
    assert len(world) == 40
    assert all(r["person_id"] == -1 and r["name"] == "" for r in world)
    assert len({r["topic"] for r in world}) >= 5
    people_names = {b["name"] for b in bench40.biographies}
    assert not any(n in r["answer"] for r in world for n in people_names)


def pattern_regex(pattern):
    return "".join({"D": "[0-9]", "L": "[A-Z]", "l": "[a-z]"}.get(c, re.escape(c)) for c in pattern)


def test_canaries_follow_the_configuration():
    cfg = S.SyntheticConfig(**SMALL, canaries_per_repetition=3, num_heldout_canaries=11)
    can = S.generate(cfg).canaries
    for reps in (1, 2, 4):
        for split in ("forget", "retain"):
            assert sum(c["repetitions"] == reps and c["split"] == split for c in can) == 3
    held = [c for c in can if c["split"] == "heldout"]
    assert len(held) == 11 and all(c["repetitions"] == 0 for c in held)
    assert [c["canary_id"] for c in can] == list(range(len(can)))
    assert len({c["secret"] for c in can}) == len({c["prefix"] for c in can}) == len(can)
    assert {c["format"] for c in held} == {c["format"] for c in can} == set(S.CANARY_FORMATS)
    for c in can:
        assert c["text"] == c["prefix"] + c["secret"]
        pattern = S.CANARY_FORMATS[c["format"]]
        assert re.fullmatch(pattern_regex(pattern), c["secret"]), c
        assert sum(ch in "DLl" for ch in pattern) >= 6  # random enough for exposure


def test_secret_space_size_by_hand():
    assert S.secret_space_size("DDDD-DDDD") == 10**8
    assert S.secret_space_size("LLDDLLDD") == 26**4 * 10**4
    assert S.secret_space_size("llll-llll-DD") == 26**8 * 100


def test_manifest_counts_and_hashes_match_files(tmp_path):
    cfg = S.SyntheticConfig(**SMALL, seed=11)
    out = S.write_benchmark(S.generate(cfg), tmp_path / "bench")
    manifest = json.loads((out / "manifest.json").read_text("utf-8"))
    assert manifest["generator"] == "jaxunlearn.data.synthetic"
    assert (manifest["seed"], manifest["num_people"], manifest["num_holdout_people"],
            manifest["qa_per_person"], manifest["canary_repetitions"]) == (11, 12, 2, 20, [1, 2, 4])
    assert sorted(manifest["splits"]) == sorted(manifest["sha256"]) == sorted(FILES)
    for name in FILES:
        blob = (out / name).read_bytes()
        assert manifest["sha256"][name] == hashlib.sha256(blob).hexdigest()
        lines = blob.decode("utf-8").split("\n")
        assert lines[-1] == "" and manifest["splits"][name] == len(lines) - 1
        for line in lines[:-1]:
            assert line == json.dumps(json.loads(line), sort_keys=True, ensure_ascii=False)


def listing(path):
    return sorted(os.listdir(path))


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path, monkeypatch):
    parent = tmp_path / "data"
    a = S.generate(S.SyntheticConfig(**SMALL, seed=1))
    b = S.generate(S.SyntheticConfig(**SMALL, seed=2))
    S.write_benchmark(a, parent / "bench")
    assert listing(parent) == ["bench"]
    S.write_benchmark(b, parent / "bench")  # replacing a previous benchmark is allowed
    assert listing(parent) == ["bench"] and S.read_benchmark(parent / "bench") == b

    real_fsync, calls = os.fsync, []

    def failing_fsync(fd):  # the disk fills up after a few files
        calls.append(fd)
        if len(calls) > 4:
            raise OSError(28, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="No space"):
        S.write_benchmark(a, parent / "bench")
    calls.clear()
    with pytest.raises(OSError, match="No space"):
        S.write_benchmark(a, parent / "fresh")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert listing(parent) == ["bench"]  # no half-written 'fresh', no temp dirs
    assert S.read_benchmark(parent / "bench") == b  # the old benchmark is intact


def test_write_refuses_foreign_directories(tmp_path):
    bench = S.generate(S.SyntheticConfig(**SMALL))
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match=r"mine: not empty and not a jaxunlearn benchmark"):
        S.write_benchmark(bench, foreign)
    assert listing(foreign) == ["notes.txt"] and listing(tmp_path) == ["mine"]
    S.write_benchmark(bench, foreign, overwrite=True)
    assert listing(foreign) == sorted(FILES + ["manifest.json"])
    (tmp_path / "empty").mkdir()
    S.write_benchmark(bench, tmp_path / "empty")  # an empty directory is fine
    assert listing(tmp_path) == ["empty", "mine"]
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        S.write_benchmark(bench, tmp_path / "file")


def test_read_benchmark_round_trip_and_errors(tmp_path):
    cfg = S.SyntheticConfig(**SMALL, seed=4)
    out = S.write_benchmark(S.generate(cfg), tmp_path / "b")
    assert S.read_benchmark(out) == S.generate(cfg)
    path = out / "forget10.json"
    original, original_manifest = path.read_bytes(), (out / "manifest.json").read_bytes()
    lines = original.decode("utf-8").splitlines()
    record = json.loads(lines[0])
    del record["facts"]
    path.write_text("\n".join([json.dumps(record, sort_keys=True)] + lines[1:]) + "\n", "utf-8")
    with pytest.raises(ValueError, match=r"forget10\.json: SHA-256 differs"):
        S.read_benchmark(out)
    manifest = json.loads((out / "manifest.json").read_text("utf-8"))
    manifest["sha256"]["forget10.json"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (out / "manifest.json").write_text(json.dumps(manifest), "utf-8")
    with pytest.raises(ValueError, match=r"forget10\.json:1: missing field\(s\) \['facts'\]"):
        S.read_benchmark(out)
    path.write_bytes(original)
    (out / "manifest.json").write_bytes(original_manifest)
    (out / "canaries.json").unlink()
    with pytest.raises(ValueError, match=r"canaries\.json: missing"):
        S.read_benchmark(out)
    with pytest.raises(ValueError, match=r"manifest\.json"):
        S.read_benchmark(tmp_path)


def test_training_documents_target_and_retain(tmp_path):
    bench = S.generate(S.SyntheticConfig(**dict(SMALL, num_people=40)))
    canaries = bench.canaries
    target = S.training_documents(bench, "target")
    retain = S.training_documents(bench, which="retain", forget_split="forget10")
    qa_t = [d for d in target if d.kind == "qa"]
    assert len(qa_t) == 40 * 20 + 30  # every trained person's QA and the world facts
    assert all(d.prompt and d.text for d in qa_t)
    text_t = [d.text for d in target if d.kind == "text"]
    assert all(d.prompt == "" for d in target if d.kind == "text")
    for c in canaries:
        want = c["repetitions"] if c["split"] in ("forget", "retain") else 0
        assert text_t.count(c["text"]) == want
        assert [d.text for d in retain].count(c["text"]) == (want if c["split"] == "retain" else 0)
    bios = {b["person_id"]: b["text"] for b in bench.biographies}
    assert sum(t in bios.values() for t in text_t) == 40
    forget = {r["name"] for r in bench.splits["forget10"]}
    holdout = {r["name"] for r in bench.splits["holdout"]}
    for d in retain:
        assert not any(n in d.prompt or n in d.text for n in forget | holdout), d
    assert not any(n in d.prompt or n in d.text for d in target for n in holdout)
    assert len([d for d in retain if d.kind == "qa"]) == 36 * 20 + 30
    assert len(S.training_documents(bench, "retain", "forget01")) > len(retain)
    out = S.write_benchmark(bench, tmp_path / "b")
    assert S.training_documents(out, "retain") == retain
    with pytest.raises(ValueError, match="which"):
        S.training_documents(bench, "gold")
    with pytest.raises(ValueError, match="forget_split"):
        S.training_documents(bench, "retain", "forget20")


def test_train_item_validates():
    assert S.TrainItem(kind="qa", prompt="Q?", text="A.").kind == "qa"
    with pytest.raises(ValueError, match="TrainItem.kind"):
        S.TrainItem(kind="doc", prompt="", text="x")
    with pytest.raises(ValueError, match="TrainItem.prompt"):
        S.TrainItem(kind="text", prompt="Q?", text="x")
    with pytest.raises(ValueError, match="TrainItem.text"):
        S.TrainItem(kind="qa", prompt="Q?", text="")


def test_canary_views_are_spread_over_the_run():
    # Hand-worked: view v of r goes to copy v % ceil(r/E) in epoch floor(v * E / r).
    assert S.canary_copies(1, 15) == [(0,)]
    assert S.canary_copies(4, 15) == [(0, 3, 7, 11)]
    assert S.canary_copies(3, 1) == [(0,), (0,), (0,)]
    # 32 views, 3 copies: copy 0 gets views 0, 3, 6, 9, ... -> epochs 0, 1 (45/32), 2 (90/32), 4
    assert S.canary_copies(32, 15)[0] == (0, 1, 2, 4, 5, 7, 8, 9, 11, 12, 14)
    assert len(S.canary_copies(32, 15)) == 3
    for r in (1, 2, 4, 8, 16, 32, 64):
        copies = S.canary_copies(r, 15)
        views = [e for c in copies for e in c]
        assert len(views) == r and all(0 <= e < 15 for e in views)
        assert all(list(c) == sorted(set(c)) for c in copies)  # one view per copy per epoch
        per_epoch = np.bincount(views, minlength=15)
        assert per_epoch.max() - per_epoch.min() <= 1  # evenly spread


def test_training_documents_schedule_canary_views_per_run():
    bench = S.generate(S.SyntheticConfig(**dict(SMALL, num_people=40)))
    every = S.training_documents(bench, "target")
    spread = S.training_documents(bench, "target", epochs=15)
    assert [d for d in every if d.epochs is None] == every
    assert [d for d in spread if d.kind == "qa"] == [d for d in every if d.kind == "qa"]
    for c in bench.canaries:
        views = [e for d in spread if d.text == c["text"] for e in d.epochs]
        assert len(views) == (c["repetitions"] if c["split"] in ("forget", "retain") else 0)
    with pytest.raises(ValueError, match="epochs"):
        S.training_documents(bench, "target", epochs=0)
