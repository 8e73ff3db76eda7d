"""MUSE: loaders on files written here in the dataset's exact layout, the encodings, every
metric against an independent NumPy / SciPy / rouge-score computation, and ``eval`` and
``unlearn`` end to end on a MUSE directory with a tiny model."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from rouge_score import rouge_scorer
from scipy import stats

from jaxunlearn import cli
from jaxunlearn.data import muse
from jaxunlearn.data import tokenizer as tok_lib
from jaxunlearn.data.forget_retain import prepare_data
from jaxunlearn.errors import DataError
from jaxunlearn.eval import suite
from jaxunlearn.eval.groups import muse as muse_group
from jaxunlearn.eval.muse_results import SUMMARY_KEYS, MuseResult
from jaxunlearn.eval.options import SuiteConfig
from jaxunlearn.models import Llama, save_pretrained
from jaxunlearn.models.presets import get_preset

from _training import train_nll

WORDS = ("the council voted on a new budget for schools and roads while the mayor said "
         "taxes would rise next spring after a long debate in the city hall").split()


def _doc(i: int, n: int) -> str:
    return " ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(n)) + "."


def muse_splits() -> dict:
    """Every config/split of a (tiny) MUSE copy, with the dataset's own fields."""
    qa = lambda i: {"question": f"Who voted on item {i}?", "answer": f"The council {i}"}  # noqa: E731
    return {
        "raw": {"forget": [{"text": _doc(i, 30)} for i in range(3)],
                "retain1": [{"text": _doc(i + 5, 30)} for i in range(3)],
                "retain2": [{"text": _doc(i + 9, 25)} for i in range(2)],
                "holdout": [{"text": _doc(i + 13, 25)} for i in range(2)]},
        "verbmem": {"forget": [{"prompt": _doc(i, 14), "gt": _doc(i + 2, 10)} for i in range(3)]},
        "knowmem": {"forget_qa": [qa(i) for i in range(3)],
                    "forget_qa_icl": [qa(i + 10) for i in range(2)],
                    "retain_qa": [qa(i + 20) for i in range(3)],
                    "retain_qa_icl": [qa(i + 30) for i in range(2)]},
        "privleak": {"forget": [{"text": _doc(i, 12)} for i in range(4)],
                     "retain": [{"text": _doc(i + 3, 12)} for i in range(4)],
                     "holdout": [{"text": _doc(i + 17, 12)} for i in range(4)]},
    }


def write_muse(root: Path, splits: dict | None = None) -> Path:
    """``<root>/<config>/<split>.json`` in JSON lines, as a local copy of the hub dataset."""
    for config, parts in (splits or muse_splits()).items():
        (root / config).mkdir(parents=True, exist_ok=True)
        for split, rows in parts.items():
            (root / config / f"{split}.json").write_text(
                "".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A MUSE directory, its tokenizer and a tiny model trained briefly on the forget side."""
    root = write_muse(tmp_path_factory.mktemp("muse") / "MUSE-News")
    texts = [r[f] for parts in muse_splits().values() for rows in parts.values() for r in rows
             for f in ("text", "prompt", "gt", "question", "answer") if f in r]
    tok = tok_lib.train_tokenizer(texts + ["Question: ", "\nAnswer: "], vocab_size=400)
    config = get_preset("tiny", vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    data = muse.load_muse_eval(root)
    train = [muse.encode_completion(tok, r["prompt"], r["gt"], insert_space=True)[0]
             for r in data.verbmem]
    train += [muse.encode_completion(tok, "", t)[0] for t in data.privleak_forget]
    model = train_nll(Llama(config, rngs=nnx.Rngs(0)), train, steps=30, learning_rate=1e-2,
                      warmup_steps=0, batch_size=4, seq_len=64, pad_id=tok.pad_token_id)
    path = save_pretrained(model, config, root.parent / "model", tokenizer=tok)
    return root, tok, model, path


# ------------------------------------------------------------------------------ loaders


def test_loader_reads_every_split_in_the_layout_and_recognises_it(tmp_path):
    root = write_muse(tmp_path / "m")
    for config, parts in muse_splits().items():
        for split, rows in parts.items():
            assert muse.load_muse_split(root, config, split) == rows
    assert muse.is_muse_dir(root) and muse.is_muse_source(root)
    assert muse.is_muse_source("muse-bench/MUSE-Books") and not muse.is_muse_source(tmp_path)
    data = muse.load_muse_eval(root)
    assert data.privleak_forget == tuple(r["text"] for r in muse_splits()["privleak"]["forget"])
    assert len(data.verbmem) == 3 and len(data.retain_qa_icl) == 2
    # MUSE-Books' older knowmem names, and a JSON array instead of JSON lines.
    (root / "knowmem" / "retain_qa.json").rename(root / "knowmem" / "retain2_qa.json")
    rows = muse_splits()["knowmem"]["retain_qa"]
    (root / "knowmem" / "retain2_qa.json").write_text(json.dumps(rows))
    assert muse.load_muse_split(root, "knowmem", "retain_qa") == rows


@pytest.mark.parametrize("config, split, line, needle", [
    ("knowmem", "forget_qa", '{"question": "q?"}', "field 'answer': missing"),
    ("verbmem", "forget", '{"prompt": "p", "gt": 3}', "field 'gt': expected a string"),
    ("privleak", "holdout", '{"text": "  "}', "field 'text': empty"),
    ("raw", "forget", '{"text": "a"', "truncated JSON"),
])
def test_bad_records_name_file_line_and_field(tmp_path, config, split, line, needle):
    root = write_muse(tmp_path / "m")
    path = root / config / f"{split}.json"
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(DataError, match=needle) as e:
        muse.load_muse_eval(root) if config != "raw" else muse.load_muse_split(root, config, split)
    line_no = len(muse_splits()[config][split]) + 1
    assert str(path) in str(e.value) and f"line {line_no}" in str(e.value)


def test_missing_split_unknown_names_and_offline_hub_id(tmp_path):
    root = write_muse(tmp_path / "m")
    (root / "privleak" / "holdout.json").unlink()
    with pytest.raises(DataError, match="split 'holdout': no holdout.json"):
        muse.load_muse_eval(root)
    with pytest.raises(DataError, match="unknown"):
        muse.load_muse_split(root, "raw", "forget10")
    with pytest.raises(DataError, match=r"MUSE-News: knowmem/retain_qa: .*hub \(offline"):
        muse.load_muse_split("muse-bench/MUSE-News", "knowmem", "retain_qa")


def test_hub_id_goes_through_datasets_with_config_and_split(monkeypatch):
    datasets = pytest.importorskip("datasets")
    calls = []
    splits = muse_splits()
    splits["knowmem"]["retain2_qa"] = splits["knowmem"].pop("retain_qa")  # Books' old name

    def load_dataset(path, name, split):
        calls.append((path, name, split))
        if split not in splits[name]:
            raise ValueError(f"Unknown split {split!r}")
        return splits[name][split]

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    data = muse.load_muse_eval("muse-bench/MUSE-Books")
    assert ("muse-bench/MUSE-Books", "verbmem", "forget") in calls
    assert ("muse-bench/MUSE-Books", "knowmem", "retain2_qa") in calls
    assert data.retain_qa == tuple(splits["knowmem"]["retain2_qa"])
    splits["privleak"]["holdout"] = [{"text": 5}]
    with pytest.raises(DataError, match=r"hub:muse-bench/MUSE-Books/privleak/holdout: record 1: "
                                        r"field 'text': expected a string"):
        muse.load_muse_eval("muse-bench/MUSE-Books")


# ------------------------------------------------------------------------------ encodings


def test_encode_completion_counts_the_text_after_the_prefix(world):
    _, tok, _, _ = world
    ids = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    enc, prompt = muse.encode_completion(tok, "the council voted", "on a budget",
                                         insert_space=True)
    whole = [tok.bos_token_id] + ids("the council voted on a budget")
    assert enc.token_ids.tolist() == whole and prompt.tolist() == whole[:len(prompt)]
    assert prompt.tolist() == [tok.bos_token_id] + ids("the council voted")
    assert enc.counted.tolist() == [0.0] * len(prompt) + [1.0] * (len(whole) - len(prompt))
    doc, p = muse.encode_completion(tok, "", "the mayor said", max_length=2)
    assert p.tolist() == [tok.bos_token_id]
    assert doc.token_ids.tolist() == [tok.bos_token_id] + ids("the mayor said")[:2]
    assert doc.counted.tolist() == [0.0, 1.0, 1.0]  # no eos, the bos never a label


def test_pretraining_chunks_cut_the_joined_corpus_into_windows(world):
    _, tok, _, _ = world
    docs = [_doc(i, 30) for i in range(3)]
    joined = tok("\n\n".join(docs), add_special_tokens=False)["input_ids"]
    chunks = muse.pretraining_chunks(tok, docs, max_length=16)
    assert len(chunks) == len(joined) // 16 + 1
    assert "".join(chunks) == "\n\n".join(docs)  # byte-level BPE decodes exactly
    exact = muse.pretraining_chunks(tok, [tok.decode(joined[:32])], max_length=16)
    assert len(exact) == 2  # the empty third window is dropped
    records = [{"text": c} for c in chunks]
    prepared = prepare_data(tok, records, records, max_len=16)
    first = prepared.forget["answer"][0]
    assert first.token_ids[0] == tok.bos_token_id and first.length == 16
    with pytest.raises(DataError, match="'idk' view needs question/answer"):
        prepare_data(tok, records, records, views=("answer", "idk"), max_len=16)


def test_knowmem_prompt_is_muse_s_with_or_without_a_chat_template(world):
    _, tok, _, _ = world
    icl = [{"question": "Q1?", "answer": "A1"}, {"question": "Q2?", "answer": "A2"}]
    prompt, full = muse.encode_knowmem(tok, icl, "Q3?", "A3")
    # Our template: "<|bos|>Question: q\nAnswer: a<|eos|>" per turn.
    assert tok.decode(prompt) == ("<|bos|>Question: Q1?\nAnswer: A1<|eos|>Question: Q2?\n"
                                  "Answer: A2<|eos|>Question: Q3?\nAnswer: ")
    assert tok.decode(full, skip_special_tokens=True).endswith("Question: Q3?\nAnswer: A3")
    plain = tok_lib.train_tokenizer(["Question: Q1?\nAnswer: A1"], vocab_size=300)
    plain.chat_template = None
    prompt, full = muse.encode_knowmem(plain, icl, "Q3?", "A3")
    assert plain.decode(prompt) == ("<|bos|>Question: Q1?\nAnswer: A1\n\nQuestion: Q2?\n"
                                    "Answer: A2\n\nQuestion: Q3?\nAnswer: ")
    assert plain.decode(full) == plain.decode(prompt) + "A3"


# ------------------------------------------------------------------------------ metrics


def test_text_helpers_against_rouge_score_and_by_hand():
    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=True)
    pairs = [("The councils voted budgets", "the council voted on the budget"),
             ("nothing alike", "the mayor said"), ("", "x y"), ("a a a b", "a b b")]
    for gen, ref in pairs:
        ours = muse_group.rouge_scores(gen, ref)
        s = scorer.score(ref, gen)
        np.testing.assert_allclose(ours, (s["rouge1"].recall, s["rougeL"].fmeasure,
                                          s["rougeL"].recall), atol=1e-12)
    stops = muse_group.KNOWMEM_STOPWORDS
    assert muse_group.cut_at_stopwords(" Paris\n\nQuestion: next", stops) == "Paris"
    assert muse_group.cut_at_stopwords("Rome\nQuestion 2", stops) == "Rome"
    np.testing.assert_array_equal(muse_group.drop_last(np.array([[0, 1, 1, 0], [1, 0, 0, 0]])),
                                  [[0, 1, 0, 0], [0, 0, 0, 0]])
    # MUSE: ((1 - 0.2) - (1 - 0.6)) / (1 - 0.6) * 100 = 100 (over-unlearned).
    assert muse_group.privleak_of(0.2, 0.6) == pytest.approx(100.0)
    assert muse_group.privleak_of(0.3, 1.0) is None


def _reference_numbers(model, tok, data):
    """Min-K% / Min-K%++ scores and ES as open-unlearning computes them, in NumPy."""
    seqs = [muse.encode_completion(tok, r["prompt"], r["gt"], insert_space=True)[0]
            for r in data.verbmem]
    seqs += [muse.encode_completion(tok, "", t)[0]
             for t in (*data.privleak_forget, *data.privleak_holdout)]
    width = max(len(s.token_ids) for s in seqs)
    ids = np.full((len(seqs), width), tok.pad_token_id, np.int32)
    for i, s in enumerate(seqs):
        ids[i, :len(s.token_ids)] = s.token_ids  # right padding: a causal model ignores it
    logits = np.asarray(jax.jit(lambda g, st, x: nnx.merge(g, st)(x))(
        *nnx.split(model), jnp.asarray(ids)), np.float64)
    out = {"min_k": [], "min_k_pp": [], "es": []}
    for i, s in enumerate(seqs):
        pos = np.flatnonzero(s.counted)[:-1]  # labelled tokens but the last
        logp = logits[i, pos - 1] - np.log(np.exp(logits[i, pos - 1]).sum(-1, keepdims=True))
        target = s.token_ids[pos]
        tl = logp[np.arange(len(pos)), target]
        k = max(1, int(len(tl) * 0.4))
        if i < len(data.verbmem):
            preds = logp.argmax(-1)
            n = len(target)
            for j in range(n):
                if np.array_equal(preds[j:], target[j:]):
                    break
            out["es"].append(1 - j / n)
            continue
        out["min_k"].append(-np.mean(np.sort(tl)[:k]))
        p = np.exp(logp)
        mu = (p * logp).sum(-1)
        sigma = np.sqrt(np.maximum((p * logp ** 2).sum(-1) - mu ** 2, 1e-6))
        out["min_k_pp"].append(-np.mean(np.sort((tl - mu) / sigma)[:k]))
    return out


def _ou_auc(forget_scores, holdout_scores) -> float:
    """sklearn's roc_auc_score(labels forget 0 / holdout 1, scores) via SciPy's U."""
    u = stats.mannwhitneyu(holdout_scores, forget_scores).statistic
    return u / (len(forget_scores) * len(holdout_scores))


def test_muse_metrics_match_an_independent_computation(world):
    root, tok, model, _ = world
    data = muse.load_muse_eval(root)
    result = suite.evaluate_data(model, tok, data, SuiteConfig(batch_size=4, max_records=None))
    m = result.muse
    ref = _reference_numbers(model, tok, data)
    n = len(data.privleak_forget)
    np.testing.assert_allclose(m.min_k_forget, ref["min_k"][:n], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m.min_k_holdout, ref["min_k"][n:], rtol=1e-4, atol=1e-5)
    auc = _ou_auc(ref["min_k"][:n], ref["min_k"][n:])
    assert m.mia_min_k_auc == pytest.approx(auc, abs=1e-12)
    assert m.mia_min_k_plus_plus_auc == pytest.approx(
        _ou_auc(ref["min_k_pp"][:n], ref["min_k_pp"][n:]), abs=1e-12)
    assert m.privleak == pytest.approx(((1 - auc) - 0.5) / 0.5 * 100, abs=1e-9)
    assert m.privleak_reference_auc == 0.5
    np.testing.assert_allclose(m.es, ref["es"], atol=1e-6)  # k / n in float32
    assert m.extraction_strength == pytest.approx(np.mean(ref["es"]), abs=1e-6)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    for items, agg, records in ((m.verbmem, m.forget_verbmem_rouge, data.verbmem),
                                (m.forget_knowmem, m.forget_knowmem_rouge, data.forget_qa),
                                (m.retain_knowmem, m.retain_knowmem_rouge, data.retain_qa)):
        f1 = [scorer.score(s.ground_truth, s.generation)["rougeL"].fmeasure for s in items]
        assert agg == pytest.approx(np.mean(f1), abs=1e-12)
        refs = [r.get("gt", r.get("answer")) for r in records]
        assert [s.ground_truth for s in items] == refs
    assert [s.input for s in m.verbmem] == [r["prompt"] for r in data.verbmem]
    assert m.forget_verbmem_rouge > 0  # the model saw these texts: its continuations overlap
    # The retain model is its own reference: PrivLeak 0; others are measured against it.
    own = suite.own_reference(result).muse
    assert own.privleak == 0.0 and own.privleak_reference_auc == m.mia_min_k_auc
    logs = m.eval_logs()
    assert list(logs) == sorted(["extraction_strength", "forget_knowmem_ROUGE",
                                 "forget_verbmem_ROUGE", "mia_min_k", "privleak",
                                 "retain_knowmem_ROUGE"])
    assert logs["mia_min_k"]["agg_value"] == logs["mia_min_k"]["auc"] == m.mia_min_k_auc
    assert set(logs["forget_verbmem_ROUGE"]["value_by_index"]["0"]) == {
        "input", "ground_truth", "generation", "rouge1_recall", "rougeL_f1", "rougeL_recall"}
    assert set(m.summary()) == set(SUMMARY_KEYS)
    again = MuseResult.from_json(json.loads(json.dumps(result.to_json())), "m")
    assert again.privleak == m.privleak and again.forget_verbmem_rouge == m.forget_verbmem_rouge


# ------------------------------------------------------------------------------ end to end


def test_eval_and_unlearn_commands_on_a_muse_directory(world, tmp_path, capsys):
    root, _, _, path = world
    out = tmp_path / "out"
    code = cli.main(["eval", "--model", f"target={path}", "--retain-model", str(path),
                     f"data.benchmark={root}", f"output_dir={out}", "eval.batch_size=4"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "eval.attacks: not run on MUSE" in captured.err
    models = json.loads((out / "eval.json").read_text())["models"]
    assert models["target"]["muse_privleak"] == pytest.approx(0.0, abs=1e-9)  # same weights
    summary = json.loads((out / "muse" / "target" / "MUSE_SUMMARY.json").read_text())
    assert set(summary) == set(SUMMARY_KEYS)
    assert summary["forget_verbmem_ROUGE"] == models["target"]["muse_forget_verbmem_rouge"]
    logs = json.loads((out / "muse" / "retain" / "MUSE_EVAL.json").read_text())
    assert logs["privleak"]["agg_value"] == 0.0 and len(logs["mia_min_k"]["forget"]
                                                        ["value_by_index"]) == 4
    assert "## MUSE (as open-unlearning)" in (out / "report.md").read_text()

    code = cli.main(["unlearn", f"data.benchmark={root}", "data.forget=forget",
                     f"model.path={path}", "model.preset=null", "method=npo", "train.steps=2",
                     "train.batch_size=8", "data.max_len=32", f"output_dir={tmp_path / 'u'}"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    record = json.loads((tmp_path / "u" / "npo" / "unlearn.json").read_text())
    assert record["forget"] == "forget" and record["retain"] == "retain1"
    assert record["updates"] == 2


@pytest.mark.parametrize("args, needle", [
    (["eval", "--model", "PATH"], "field 'answer': missing"),
    (["unlearn", "method=idk_dpo", "data.forget=forget"], "method.name: idk_dpo does not run"),
    (["unlearn", "method=npo"], "data.forget: 'forget10' is not a MUSE raw split"),
])
def test_bad_muse_input_is_one_line_before_work(world, tmp_path, capsys, args, needle):
    _, _, _, path = world
    root = write_muse(tmp_path / "m")
    bad = root / "knowmem" / "retain_qa_icl.json"
    bad.write_text(bad.read_text() + '{"question": "q?"}\n')
    out = tmp_path / "out"
    argv = [a.replace("PATH", str(path)) for a in args]
    code = cli.main(argv + [f"data.benchmark={root}", f"model.path={path}", "model.preset=null",
                            f"output_dir={out}"])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    if args[0] == "eval":
        assert str(bad) in err and "line 3" in err
    assert not (out / "eval.json").exists() and not (out / "npo").exists()
