"""Loaders of jaxunlearn.data.tofu on small files written here, in every accepted format."""

import hashlib
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jaxunlearn.data.tofu import (
    DataError,
    check_disjoint,
    load_benchmark,
    load_muse_corpus,
    load_split,
    read_records,
)


def qa(pid, name, i, **extra):
    """One record of the shared QA schema."""
    rec = {
        "person_id": pid, "name": name, "topic": "employer",
        "question": f"Where does {name} work? ({i})", "answer": f"{name} works at Firm {i}.",
        "paraphrased_question": f"Who employs {name}? ({i})",
        "paraphrased_answer": f"{name} is employed by Firm {i}.",
        "perturbed_answer": [f"{name} works at Firm {i + 1}.", f"{name} works at Shop {i}.",
                             f"{name} works at Mill {i}."],
        "idk_answer": "I don't know.", "facts": [f"Firm {i}"],
    }
    rec.update(extra)
    return rec


def write_jsonl(path, records):
    # The shared schema's writer: one object a line, keys sorted, UTF-8 kept.
    path.write_text("".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in records),
                    encoding="utf-8")
    return path


FORGET = [qa(1, "Åsa Lind", 0), qa(1, "Åsa Lind", 1)]
RETAIN = [qa(2, "Bo Kim", 2), qa(3, "Cy Ng", 3), qa(3, "Cy Ng", 4)]


def test_jsonl_json_array_and_parquet_give_the_same_records(tmp_path):
    write_jsonl(tmp_path / "forget10.json", FORGET)
    assert load_split(tmp_path, "forget10") == FORGET
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "forget10.json").write_text(json.dumps(FORGET, indent=2), encoding="utf-8")
    assert load_split(tmp_path / "a", "forget10") == FORGET
    (tmp_path / "b").mkdir()
    write_jsonl(tmp_path / "b" / "forget10.jsonl", FORGET)
    assert load_split(tmp_path / "b", "forget10") == FORGET
    (tmp_path / "c").mkdir()
    pq.write_table(pa.Table.from_pylist(FORGET), tmp_path / "c" / "forget10.parquet")
    assert load_split(tmp_path / "c", "forget10") == FORGET
    (tmp_path / "d").mkdir()
    bom = "\ufeff" + (tmp_path / "forget10.json").read_text(encoding="utf-8")
    (tmp_path / "d" / "forget10.json").write_text(bom, encoding="utf-8")
    assert load_split(tmp_path / "d", "forget10") == FORGET


def test_parquet_errors_name_the_record(tmp_path):
    rows = [{"question": "Q1?", "answer": "A1."}, {"question": "Q2?", "answer": None}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "retain90.parquet")
    with pytest.raises(DataError, match=r"retain90\.parquet: record 2: field 'answer': missing"):
        load_split(tmp_path, "retain90")
    (tmp_path / "forget10.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match=r"forget10\.parquet: cannot read parquet"):
        load_split(tmp_path, "forget10")


def test_real_tofu_layout_merges_the_perturbed_file(tmp_path):
    # Real TOFU: the base split has question/answer only; `<split>_perturbed` adds the rest.
    base = [{"question": "Q one?", "answer": "A one."}, {"question": "Q two?", "answer": "A two."},
            {"question": "Q three?", "answer": "A three."}]
    pert = [{"question": "Q two?", "answer": "A two.", "paraphrased_answer": "A 2.",
             "perturbed_answer": ["B two.", "C two.", "D two."]},
            {"question": "Q one?", "answer": "A one.", "paraphrased_answer": "A 1.",
             "perturbed_answer": ["B one.", "C one.", "D one."]}]
    write_jsonl(tmp_path / "forget10.json", base)
    write_jsonl(tmp_path / "forget10_perturbed.json", pert)
    got = load_split(tmp_path, "forget10")
    assert [r["question"] for r in got] == ["Q one?", "Q two?", "Q three?"]  # base order kept
    assert got[0]["perturbed_answer"] == ["B one.", "C one.", "D one."]
    assert got[1]["paraphrased_answer"] == "A 2."
    assert "perturbed_answer" not in got[2]
    assert load_split(tmp_path, "forget10_perturbed") == pert  # still loadable on its own


def test_perturbed_file_must_match_the_base_split(tmp_path):
    write_jsonl(tmp_path / "forget10.json", [{"question": "Q?", "answer": "A."}])
    write_jsonl(tmp_path / "forget10_perturbed.json",
                [{"question": "Other?", "answer": "A.", "perturbed_answer": ["x", "y", "z"]}])
    with pytest.raises(DataError, match=r"forget10_perturbed\.json: record 1: field 'question'"):
        load_split(tmp_path, "forget10")
    write_jsonl(tmp_path / "forget10_perturbed.json",
                [{"question": "Q?", "answer": "B.", "perturbed_answer": ["x", "y", "z"]}])
    with pytest.raises(DataError, match=r"record 1: field 'answer': differs"):
        load_split(tmp_path, "forget10")


GOOD = json.dumps(qa(1, "Ann", 0), sort_keys=True)
BAD_INPUTS = {
    # name: (split, file bytes, pieces the one-line message must contain)
    "malformed_json": ("forget10", f"{GOOD}\n{{\"question\": oops}}\n", ["line 2", "malformed JSON"]),
    "truncated_json": ("forget10", f"{GOOD}\n{GOOD}\n{GOOD[:40]}", ["line 3", "truncated JSON"]),
    "not_an_object": ("forget10", f"{GOOD}\n[1, 2]\n", ["line 2", "expected a JSON object, got list"]),
    "missing_answer": ("forget10", json.dumps({"question": "Q?"}) + "\n", ["line 1", "field 'answer': missing"]),
    "blank_question": ("forget10", json.dumps({"question": "  ", "answer": "A"}) + "\n",
                       ["line 1", "field 'question': empty"]),
    "perturbed_is_str": ("forget10", json.dumps(qa(1, "Ann", 0, perturbed_answer="x")) + "\n",
                         ["line 1", "field 'perturbed_answer'", "list of strings"]),
    "perturbed_empty": ("forget10", json.dumps(qa(1, "Ann", 0, perturbed_answer=[])) + "\n",
                        ["line 1", "field 'perturbed_answer'", "non-empty"]),
    "perturbed_item": ("forget10", f"{GOOD}\n" + json.dumps(qa(1, "Ann", 1, perturbed_answer=["a", 3])) + "\n",
                       ["line 2", "field 'perturbed_answer'", "item 1"]),
    "person_id_str": ("forget10", json.dumps(qa("7", "Ann", 0)) + "\n", ["line 1", "field 'person_id'", "integer"]),
    "person_id_bool": ("forget10", json.dumps(qa(True, "Ann", 0)) + "\n", ["line 1", "field 'person_id'"]),
    "facts_not_list": ("forget10", json.dumps(qa(1, "Ann", 0, facts="Firm 0")) + "\n", ["line 1", "field 'facts'"]),
    "answer_number": ("forget10", json.dumps({"question": "Q?", "answer": 4}) + "\n",
                      ["line 1", "field 'answer'", "string"]),
    "empty_file": ("forget10", "\n\n", ["no records"]),
    "not_utf8": ("forget10", b"\xff\xfe{}", ["not UTF-8"]),
    "array_record": ("forget10", json.dumps([qa(1, "Ann", 0), {"question": "Q?"}]),
                     ["record 2", "field 'answer': missing"]),
    "canary_text": ("canaries", json.dumps({"canary_id": 0, "format": "pin", "prefix": "PIN ", "secret": "1234",
                                            "text": "PIN 9999", "repetitions": 4, "split": "forget"}) + "\n",
                    ["line 1", "field 'text'"]),
    "canary_split": ("canaries", json.dumps({"canary_id": 0, "format": "pin", "prefix": "PIN ", "secret": "1",
                                             "text": "PIN 1", "repetitions": 4, "split": "train"}) + "\n",
                     ["line 1", "field 'split'"]),
    "heldout_repeated": ("canaries", json.dumps({"canary_id": 0, "format": "pin", "prefix": "PIN ", "secret": "1",
                                                 "text": "PIN 1", "repetitions": 2, "split": "heldout"}) + "\n",
                         ["line 1", "field 'repetitions'"]),
    "bio_missing_text": ("biographies", json.dumps({"person_id": 1, "name": "Ann"}) + "\n",
                         ["line 1", "field 'text': missing"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_malformed_input_names_file_line_and_field(tmp_path, case):
    split, content, pieces = BAD_INPUTS[case]
    path = tmp_path / f"{split}.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    with pytest.raises(DataError) as info:
        load_split(tmp_path, split)
    msg = str(info.value)
    assert "\n" not in msg
    assert str(path) in msg
    for piece in pieces:
        assert piece in msg, (piece, msg)


def test_required_fields_are_configurable(tmp_path):
    write_jsonl(tmp_path / "retain90.json", [{"question": "Q?", "answer": "A."}])
    assert load_split(tmp_path, "retain90") == [{"question": "Q?", "answer": "A."}]
    with pytest.raises(DataError, match=r"retain90\.json: line 1: field 'perturbed_answer': missing"):
        load_split(tmp_path, "retain90", required=("question", "answer", "perturbed_answer"))


def test_missing_split_directory_and_bad_split_name(tmp_path):
    with pytest.raises(DataError, match="split 'forget05': no forget05.json"):
        load_split(tmp_path, "forget05")
    with pytest.raises(DataError, match="no such benchmark directory"):
        load_split(tmp_path / "absent", "forget10")
    with pytest.raises(DataError, match="plain split name"):
        load_split(tmp_path, "../forget10")


def test_hub_id_fails_clearly_when_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DataError) as info:
        load_split("no-such-org-xyz/no-such-dataset-xyz", "forget10")
    msg = str(info.value)
    assert "no-such-org-xyz/no-such-dataset-xyz" in msg and "could not be loaded" in msg
    assert "\n" not in msg


def test_check_disjoint():
    check_disjoint(FORGET, RETAIN)
    world = [qa(-1, "", 9), qa(-1, "", 10)]
    check_disjoint(world, [qa(-1, "", 11)])  # person_id -1 and empty names are not identities
    with pytest.raises(DataError, match=r"field 'question'.*forget record 2, retain record 1"):
        check_disjoint(FORGET, [dict(RETAIN[0], question=FORGET[1]["question"] + "  ")])
    with pytest.raises(DataError, match=r"field 'person_id' = 1 \(forget record 1, retain record 3\)"):
        check_disjoint(FORGET, RETAIN[:2] + [qa(1, "Other", 7)])
    with pytest.raises(DataError, match=r"field 'name' = 'Åsa Lind'"):
        check_disjoint(FORGET, [qa(9, "Åsa Lind", 8)])


def make_benchmark(root, *, forget=FORGET, retain=RETAIN):
    canary = {"canary_id": 0, "format": "pin", "prefix": "PIN ", "secret": "42", "text": "PIN 42",
              "repetitions": 0, "split": "heldout"}
    files = {
        "forget10.json": forget, "retain90.json": retain, "holdout.json": [qa(5, "Di Ro", 20)],
        "world_facts.json": [qa(-1, "", 30)], "canaries.json": [canary],
        "biographies.json": [{"person_id": 1, "name": "Åsa Lind", "text": "Åsa Lind works at Firm 0."}],
    }
    for name, recs in files.items():
        write_jsonl(root / name, recs)
    manifest = {"seed": 0, "num_people": 3, "num_holdout_people": 1, "qa_per_person": 2,
                "canary_repetitions": [1, 2], "generator": "jaxunlearn.data.synthetic", "version": "0.1.0",
                "splits": {n: len(r) for n, r in files.items()},
                "sha256": {n: hashlib.sha256((root / n).read_bytes()).hexdigest() for n in files}}
    (root / "manifest.json").write_text(json.dumps(manifest, sort_keys=True), encoding="utf-8")
    return manifest


def test_load_benchmark_reads_every_split_of_the_manifest(tmp_path):
    make_benchmark(tmp_path)
    got = load_benchmark(tmp_path)
    assert sorted(got) == ["biographies", "canaries", "forget10", "holdout", "retain90", "world_facts"]
    assert got["forget10"] == FORGET and got["retain90"] == RETAIN
    assert got["canaries"][0]["secret"] == "42"


def test_load_benchmark_checks_counts_hashes_and_overlap(tmp_path):
    manifest = make_benchmark(tmp_path)
    manifest["splits"]["retain90.json"] = 4
    (tmp_path / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    with pytest.raises(DataError, match=r"retain90\.json: 3 records, manifest\.json says 4"):
        load_benchmark(tmp_path)
    make_benchmark(tmp_path)
    write_jsonl(tmp_path / "holdout.json", [qa(5, "Di Ro", 21)])  # edited after generation
    with pytest.raises(DataError, match=r"holdout\.json: SHA-256 differs"):
        load_benchmark(tmp_path)
    make_benchmark(tmp_path, retain=RETAIN + [qa(1, "Åsa Lind", 9)])
    with pytest.raises(DataError, match="forget10 and retain90 overlap: field 'person_id'"):
        load_benchmark(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(DataError, match=r"manifest\.json: missing"):
        load_benchmark(tmp_path)


def test_load_muse_corpus_text_records_and_directory(tmp_path):
    (tmp_path / "doc.txt").write_text("Line one.\nLine two.\n", encoding="utf-8")
    write_jsonl(tmp_path / "more.jsonl", [{"text": "Doc A."}, {"text": "Doc B.", "id": 3}])
    assert load_muse_corpus(tmp_path / "doc.txt") == ["Line one.\nLine two.\n"]
    assert load_muse_corpus(tmp_path / "more.jsonl") == ["Doc A.", "Doc B."]
    assert load_muse_corpus(tmp_path) == ["Line one.\nLine two.\n", "Doc A.", "Doc B."]
    write_jsonl(tmp_path / "bad.json", [{"text": "ok"}, {"body": "no text"}])
    with pytest.raises(DataError, match=r"bad\.json: line 2: field 'text': missing"):
        load_muse_corpus(tmp_path / "bad.json")
    with pytest.raises(DataError, match="no such file"):
        load_muse_corpus(tmp_path / "none.txt")


def test_read_records_single_file(tmp_path):
    path = write_jsonl(tmp_path / "anything.jsonl", RETAIN)
    assert read_records(path) == RETAIN


def test_split_loader_refuses_paths(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "secret.json").write_text('{"question": "q?", "answer": "a"}\n')
    with pytest.raises(DataError, match="plain split name"):
        load_split(tmp_path / "bench", "../secret")
