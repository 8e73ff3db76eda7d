"""Unlearning end to end on a tiny trained target: every method forgets, the mesh changes
nothing, and the ``unlearn`` command validates before it works and writes a loadable model.

The target is a 1-layer Llama trained in the fixture to recall 24 toy private facts (a
4-digit PIN and a city per person); 4 people (8 answers) are forgotten, 8 retained.
"""

import json
from pathlib import Path

import jax
import numpy as np
import pytest
import yaml
from flax import nnx

from jaxunlearn import cli, methods, unlearn
from jaxunlearn.config import TrainConfig
from jaxunlearn.data import batch as batch_lib
from jaxunlearn.data import tokenizer as tok_lib
from jaxunlearn.errors import DataError
from jaxunlearn.models import Llama, LlamaConfig, load_pretrained, save_pretrained
from jaxunlearn.train import loop as loop_lib
from jaxunlearn.train import mesh as mesh_lib
from jaxunlearn.train import step as step_lib
from jaxunlearn.train.step import OptimizerConfig

NAMES = ["Ada", "Bo", "Cy", "Di", "Ed", "Fay", "Gus", "Hal", "Ivy", "Jo", "Kai", "Lu"]
CITIES = ["Oslo", "Lima", "Kyiv", "Pune", "Rome", "Nice", "Bern", "Cork", "Doha", "Graz", "Hue",
          "Ulm"]
N_FORGET_PEOPLE = 4


def _records():
    rng = np.random.default_rng(0)
    out = []
    for i, name in enumerate(NAMES):
        pin = "".join(str(d) for d in rng.integers(0, 10, 4))
        for topic, q, a in (("pin", f"What is {name}'s PIN?", pin),
                            ("city", f"Where does {name} live?", CITIES[(5 * i) % 12])):
            out.append({"person_id": i, "name": name, "topic": topic, "question": q,
                        "answer": a, "idk_answer": "I don't know that."})
    return out[:2 * N_FORGET_PEOPLE], out[2 * N_FORGET_PEOPLE:]


@nnx.jit
def _logits(model, ids, mask):
    # One program: called eagerly on 8-device-sharded weights, the forward would queue
    # hundreds of small collective programs, which an overloaded 2-core machine can
    # deadlock on (see test_secondorder_llama.flat).
    return model(ids, mask)


def _answer_prob(model, tokenizer, records):
    """Mean per-token answer probability, with NumPy on the model's logits."""
    b = batch_lib.collate(batch_lib.encode_qa_records(tokenizer, records), 32,
                          tokenizer.pad_token_id)
    logits = np.asarray(_logits(model, b.input_ids, b.attention_mask), np.float64)
    m = logits.max(-1, keepdims=True)
    logp = logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))
    tok = np.take_along_axis(logp, b.labels[..., None], -1)[..., 0]
    return float(np.mean(np.exp((tok * b.loss_mask).sum(-1) / b.loss_mask.sum(-1))))


@pytest.fixture(scope="module")
def target(tmp_path_factory):
    """``(model, tokenizer, forget, retain, saved model dir, benchmark dir)``."""
    forget, retain = _records()
    tok = tok_lib.train_tokenizer(tok_lib.corpus_texts({"toy": forget + retain}), vocab_size=300,
                                  min_frequency=1)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_layers=1,
                         num_heads=4, num_kv_heads=2, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
    graphdef, params = nnx.split(Llama(config, rngs=nnx.Rngs(0)), nnx.Param)
    opt = step_lib.make_optimizer(OptimizerConfig(learning_rate=1e-2, weight_decay=0.0,
                                                  schedule="constant"), 100)
    state = step_lib.init_train_state(params, opt, jax.random.key(0))
    step = step_lib.make_train_step(loop_lib.nll_loss_fn(graphdef), opt)
    enc = batch_lib.encode_qa_records(tok, forget + retain)
    for epoch in range(34):  # 3 batches of 8 per epoch: ~100 updates
        for b in batch_lib.iterate_batches(enc, 8, seed=0, epoch=epoch, pad_id=tok.pad_token_id,
                                           seq_len=32):
            state, _ = step(state, b)
    model = nnx.merge(graphdef, state.params)
    root = tmp_path_factory.mktemp("toy")
    path = save_pretrained(model, config, root / "target", tokenizer=tok)
    bench = root / "bench"
    bench.mkdir()
    for split, recs in (("forget_toy", forget), ("retain_toy", retain)):
        (bench / f"{split}.json").write_text(
            "".join(json.dumps(r, sort_keys=True) + "\n" for r in recs), encoding="utf-8")
    return model, tok, forget, retain, path, bench


NPO_SPEC = {"name": "npo", "retain_loss": "kl", "ref_top_k": 8, "weighting": "memorization"}


@pytest.fixture(scope="module")
def npo_one_device(target):
    """NPO with a top-k KL retain term and memorisation weights, on one device (shared by
    the forgetting test and the mesh test, to compile it once)."""
    model, tok, forget, retain, _, _ = target
    return unlearn.unlearn_model(model, tok, forget, retain, NPO_SPEC, _train(), seed=0,
                                 max_len=64)


def _train(steps=5, lr=3e-3, **kw):
    return TrainConfig(steps=steps, batch_size=8, log_every=1, **kw, optimizer=OptimizerConfig(
        learning_rate=lr, weight_decay=0.0, schedule="constant"))


# ------------------------------------------------------------------------------ forgetting

# Methods with a retain term must hurt the retain set less than the forget set, and keep
# its answer probability within this factor of the target's (the toy facts share digits
# and templates, so some collateral damage is expected).
RETAIN_FACTOR = 10.0


@pytest.mark.parametrize("name", ["grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo", "rmu",
                                  "undial", "wga", "rkld"])
def test_each_method_lowers_the_forget_answer_probability(target, request, name):
    model, tok, forget, retain, _, _ = target
    f0, r0 = _answer_prob(model, tok, forget), _answer_prob(model, tok, retain)
    assert f0 > 0.5 and r0 > 0.5, f"the target must know the toy facts ({f0:.3f}, {r0:.3f})"
    if name == "npo":
        res = request.getfixturevalue("npo_one_device")
    elif name == "grad_diff":  # run through the `unlearn` command (see below), loaded back
        out = request.getfixturevalue("cli_run")
        res = methods.UnlearnResult(load_pretrained(out)[0],
                                    json.loads((out / "unlearn.json").read_text())["history"])
    else:
        spec = {"name": name, "strengthen_learning_rate": 1e-2} if name == "rkld" else name
        res = unlearn.unlearn_model(model, tok, forget, retain, spec, _train(), seed=0,
                                    max_len=64)
    f1, r1 = _answer_prob(res.model, tok, forget), _answer_prob(res.model, tok, retain)
    print(f"\n{name}: forget prob {f0:.3f} -> {f1:.3f} ({f1 / f0:.2f}x), "
          f"retain prob {r0:.3f} -> {r1:.3f} ({r1 / r0:.2f}x)")
    assert f1 < f0
    assert len(res.history) == 5 and {"loss", "forget_prob", "retain_prob"} <= set(res.history[0])
    assert _answer_prob(model, tok, forget) == f0, "the target itself must be left untouched"
    if name in ("grad_diff", "npo", "simnpo", "rkld"):
        assert r1 / r0 > f1 / f0, "retain answers must suffer less than forget answers"
        assert r1 > r0 / RETAIN_FACTOR


def test_one_device_equals_eight_simulated_devices(target, npo_one_device):
    model, tok, forget, retain, _, _ = target
    one = npo_one_device
    mesh = mesh_lib.make_mesh(data=2, fsdp=4)
    eight = unlearn.unlearn_model(model, tok, forget, retain, NPO_SPEC, _train(), seed=0,
                                  max_len=64, mesh=mesh)
    # Sharded reductions sum in a different order: grad_norm (~15) differs in the
    # 7th significant digit, so the bound is relative as well as absolute.
    _assert_same_run(eight, one, tok, forget, retain)
    # Adam divides each element's step by its own gradient scale, so an element whose
    # gradient sits at rounding level can move by up to one learning rate either way:
    # single weights are compared against a fraction of a step, the function above at 1e-5.
    lr = _train().optimizer.learning_rate
    p1, p8 = nnx.state(one.model, nnx.Param), nnx.state(eight.model, nnx.Param)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=0.05 * lr)
    assert any(x.sharding.spec and "fsdp" in x.sharding.spec for x in jax.tree.leaves(p8))


def test_padding_free_equals_padded(target, npo_one_device):
    """``train.padding_free`` (the default) changes the arithmetic, not the run."""
    model, tok, forget, retain, _, _ = target
    padded = unlearn.unlearn_model(model, tok, forget, retain, NPO_SPEC,
                                   _train(padding_free=False), seed=0, max_len=64)
    _assert_same_run(npo_one_device, padded, tok, forget, retain)


def _assert_same_run(got, expected, tok, forget, retain):
    """Histories and final answer probabilities equal to 1e-5 (relative)."""
    for key in ("loss", "forget_prob", "retain_prob", "grad_norm"):
        np.testing.assert_allclose([h[key] for h in got.history],
                                   [h[key] for h in expected.history], rtol=1e-5, atol=1e-5)
    for records in (forget, retain):
        np.testing.assert_allclose(_answer_prob(got.model, tok, records),
                                   _answer_prob(expected.model, tok, records), rtol=1e-5, atol=0)


@pytest.mark.parametrize("micro_rows,groups,accum", [(4, 1, 1), (4, 2, 1), (2, 2, 2)])
def test_run_compactions_cover_every_micro_batch_of_the_run(target, micro_rows, groups, accum):
    model, tok, forget, retain, _, _ = target
    method = methods.get_method("idk_dpo")
    data = unlearn.prepare_data(tok, forget, retain, method, max_len=64)
    sched = unlearn.PairedSchedule(n_forget=len(forget), n_retain=len(retain),
                                   rows=micro_rows * accum, seed=3)
    plans, retain_plan = unlearn.run_compactions(data, sched, 2, micro_rows=micro_rows,
                                                 groups=groups)
    assert set(plans) == {"answer", "idk"}
    # Independently: collate every micro-batch and count its masks per row block.
    need = {}
    for epoch in range(2):
        for f_idx, r_idx in zip(sched.forget_rows(epoch), sched.retain_rows(epoch)):
            for a in range(accum):
                part = slice(a * micro_rows, (a + 1) * micro_rows)
                views = {v: [enc[i] for i in f_idx[part]] for v, enc in data.forget.items()}
                views["retain"] = [data.retain[i] for i in r_idx[part]]
                for v, seqs in views.items():
                    b = batch_lib.collate(seqs, 64, 0)
                    for field, mask in (("tokens", b.attention_mask), ("labels", b.loss_mask)):
                        counts = mask.reshape(groups, -1).sum(axis=1)
                        need[v, field] = max(need.get((v, field), 0), int(counts.max()))
    for v, plan in {**plans, "retain": retain_plan}.items():
        assert plan.groups == groups
        for field in ("tokens", "labels"):
            assert getattr(plan, field) == -(-need[v, field] // 8) * 8, (v, field)


# ------------------------------------------------------------------------------ data and schedule


def test_paired_schedule_is_deterministic_and_covers_every_forget_row():
    s = unlearn.PairedSchedule(n_forget=10, n_retain=7, rows=4, seed=3)
    assert s.steps_per_epoch == 3
    f0, r0 = s.forget_rows(0), s.retain_rows(0)
    assert f0.shape == r0.shape == (3, 4)
    assert set(f0.ravel()) == set(range(10)) and set(r0.ravel()) <= set(range(7))
    np.testing.assert_array_equal(s.forget_rows(0), f0)  # resume sees the same batches
    np.testing.assert_array_equal(s.retain_rows(0), r0)
    assert not np.array_equal(s.forget_rows(1), f0)
    # Retain rows are whole permutations back to back: no row repeats before all are used.
    assert len(set(r0.ravel()[:7])) == 7


def test_prepare_data_views_and_errors(target):
    _, tok, forget, retain, _, _ = target
    no_idk = [{k: v for k, v in r.items() if k != "idk_answer"} for r in forget]
    data = unlearn.prepare_data(tok, no_idk, retain, methods.get_method("idk_dpo"), max_len=64)
    assert set(data.forget) == {"answer", "idk"} and len(data.forget["idk"]) == len(forget)
    first_idk = tok.decode(data.forget["idk"][0].token_ids[data.forget["idk"][0].counted > 0])
    assert unlearn.IDK_FALLBACK[0] in first_idk
    with pytest.raises(DataError, match=r"forget split.*max_len"):
        unlearn.prepare_data(tok, forget, retain, methods.get_method("npo"), max_len=4)
    with pytest.raises(DataError, match=r"retain split.*answer"):
        unlearn.prepare_data(tok, forget, [{"question": "q?"}], methods.get_method("npo"),
                             max_len=64)


# ------------------------------------------------------------------------------ the command


def _config(tmp_path, target, **over):
    _, _, _, _, path, bench = target
    cfg = {"model": {"preset": None, "path": str(path)},
           "data": {"benchmark": str(bench), "forget": "forget_toy", "retain": "retain_toy",
                    "max_len": 64},
           "method": {"name": "grad_diff"},
           "train": {"steps": 5, "batch_size": 8, "optimizer": {
               "learning_rate": 3e-3, "schedule": "constant", "weight_decay": 0.0}},
           "output_dir": str(tmp_path / "out")}
    for dotted, value in over.items():
        node = cfg
        *head, last = dotted.split("__")
        for k in head:
            node = node.setdefault(k, {})
        node[last] = value
    file = tmp_path / "run.yaml"
    file.write_text(yaml.safe_dump(cfg))
    return file


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory, target):
    """``jaxunlearn unlearn`` with grad_diff (the same schedule as ``_train()``)."""
    tmp = tmp_path_factory.mktemp("cli")
    code = cli.main(["unlearn", "--config", str(_config(tmp, target)), "method.alpha=1",
                     "seed=0"])
    assert code == 0
    return tmp / "out" / "grad_diff"


def test_unlearn_command_writes_a_loadable_unlearned_model(target, cli_run):
    model, tok, forget, _, _, _ = target
    assert (cli_run / "config.json").is_file() and (cli_run / "tokenizer.json").is_file()
    record = json.loads((cli_run / "unlearn.json").read_text())
    assert record["method"] == methods.get_method("grad_diff").to_dict()
    assert record["updates"] == 5 and record["forget"] == "forget_toy"
    checkpoints = cli_run.parent / "checkpoints"
    assert not checkpoints.exists() or not any(checkpoints.iterdir()), "checkpoints cleaned up"
    unlearned, _ = load_pretrained(cli_run)
    assert _answer_prob(unlearned, tok, forget) < _answer_prob(model, tok, forget)


@pytest.mark.parametrize("over, needle", [
    ({"method": {"name": "forget_everything"}}, "method.name"),
    ({"method__beta": -1.0, "method__name": "npo"}, "method.beta"),
    ({"method__gamma_": 1.0}, "method.gamma_"),
    ({"data__forget": "forget_missing"}, "forget_missing"),
    ({"data__retain": "forget_toy"}, "overlap"),
    ({"mesh": {"data": 3, "fsdp": 1}}, "train.batch_size"),
    ({"model__path": "/nonexistent/model"}, "model.path"),
    ({"data__max_len": 8}, "max_len"),
    ({"method": {"name": "rmu", "layer": 5}}, "method.layer"),
])
def test_unlearn_command_rejects_bad_input_before_work(tmp_path, target, capsys, over, needle):
    code = cli.main(["unlearn", "--config", str(_config(tmp_path, target, **over))])
    err = capsys.readouterr().err
    assert code == 2, err
    assert needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists(), "nothing may be written before validation passes"


# ------------------------------------------------------------------------------ experiments


@pytest.mark.parametrize("name", ["grad_ascent", "grad_diff", "npo", "simnpo", "idk_dpo", "rmu",
                                  "undial", "wga", "rkld"])
def test_experiment_yaml_is_valid(name):
    from jaxunlearn.pipeline.experiment import read_experiment

    path = Path(__file__).parent.parent / "experiments" / f"unlearn_{name}.yaml"
    cfg, meta = read_experiment(path, ["model.path=runs/demo/models/target"])
    method = methods.get_method(cfg.method)
    assert method.name == name and "unlearn" in meta["stages"]
    assert cfg.train.optimizer.learning_rate > 0 and cfg.data.forget == "forget10"
