"""Bad input through the real command line: exit 2, one line naming the problem, no litter.

Every case runs ``jaxunlearn.cli.main([...])`` in this process (a few that need a fresh
interpreter run ``python -m jaxunlearn.cli ...`` in a subprocess) from its own working
directory, on fixtures built once per module: a benchmark
written by ``jaxunlearn generate-data --people 12`` and a tiny model saved with
``save_pretrained``. A case passes when the command

  * exits with code 2 (user error, DESIGN.md), not 1 (bug) or 0;
  * prints no ``Traceback``, and exactly one ``error:`` line, the last one on stderr;
  * names the problem: the line contains every expected fragment (file, record, field);
  * leaves nothing behind: its working directory (where its output goes) and the
    shared fixtures hold exactly the files they held before (no half-written model,
    checkpoint or report, no temporary names).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import TEST_XLA_FLAGS

REPO = Path(__file__).resolve().parents[1]


def run_cli(args: list[str], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m jaxunlearn.cli *args`` with the test session's 8 CPU devices, offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}",
               TQDM_DISABLE="1")
    return subprocess.run([sys.executable, "-m", "jaxunlearn.cli", *map(str, args)], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=timeout)


def tree(root: Path) -> set[str]:
    """Every file and directory under ``root``, relative (hidden temporaries included)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@dataclasses.dataclass(frozen=True)
class World:
    """The shared fixtures (never modified by a case; copied first when one needs to)."""

    root: Path
    bench: Path
    model: Path  # tiny Llama, vocabulary = the benchmark tokenizer's 512 tokens
    model_small_vocab: Path  # same tokenizer, a 256-row embedding
    model_short_context: Path  # max_position_embeddings = 16
    vocab: int


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    from flax import nnx

    from jaxunlearn.data import tofu
    from jaxunlearn.data import tokenizer as tok_lib
    from jaxunlearn.models import Llama, save_pretrained
    from jaxunlearn.models.presets import get_preset

    root = tmp_path_factory.mktemp("bad_inputs")
    r = run_cli(["generate-data", "--out", root / "bench", "--people", "12"], cwd=root)
    assert r.returncode == 0, r.stderr
    tok = tok_lib.train_tokenizer(tok_lib.corpus_texts(tofu.load_benchmark(root / "bench")),
                                  vocab_size=512)
    config = get_preset("tiny", vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    save_pretrained(Llama(config, rngs=nnx.Rngs(0)), config, root / "model", tokenizer=tok)
    small = config.replace(vocab_size=256)
    save_pretrained(Llama(small, rngs=nnx.Rngs(0)), small, root / "model_small_vocab",
                    tokenizer=tok)
    shutil.copytree(root / "model", root / "model_short_context")
    edit_json(root / "model_short_context" / "config.json",
              lambda c: {**c, "max_position_embeddings": 16})
    return World(root=root, bench=root / "bench", model=root / "model",
                 model_small_vocab=root / "model_small_vocab",
                 model_short_context=root / "model_short_context", vocab=len(tok))


# ------------------------------------------------------------------------------ fixture edits


def edit_json(path: Path, fn: Callable[[dict], dict]) -> None:
    path.write_text(json.dumps(fn(json.loads(path.read_text()))))


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_jsonl(path: Path, lines: list) -> None:
    """Writes records (dicts, lists, ...) as JSON lines; ``str`` items go in verbatim."""
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))


def bench_copy(w: World, ws: Path) -> Path:
    return Path(shutil.copytree(w.bench, ws / "bench"))


def model_copy(w: World, ws: Path) -> Path:
    return Path(shutil.copytree(w.model, ws / "model"))


def unlearn(w: World, ws: Path, *extra: str, bench: Path | None = None,
            model: Path | None = None) -> list[str]:
    """A valid ``unlearn`` command line (see ``test_valid_command_runs``) plus ``extra``."""
    return ["unlearn", f"data.benchmark={bench or w.bench}", f"model.path={model or w.model}",
            f"output_dir={ws / 'out'}", "method=npo", "train.steps=1", "train.batch_size=2",
            "data.max_len=128", *extra]


def write_llama_gguf(path: Path, *, block_count: int) -> None:
    """A llama GGUF whose metadata declares ``block_count`` blocks; only the embedding is stored."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="llama")
    writer.add_embedding_length(64)
    writer.add_feed_forward_length(176)
    writer.add_head_count(4)
    writer.add_block_count(block_count)
    writer.add_context_length(128)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tensor("token_embd.weight", np.ones((256, 64), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_gguf(path: Path, tensors: dict[str, tuple[np.ndarray, object]]) -> None:
    """A GGUF file (llama metadata stub) holding ``name: (raw array, ggml type or None)``."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch="llama")
    for name, (array, raw_dtype) in tensors.items():
        writer.add_tensor(name, array, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


# ------------------------------------------------------------------------------------- cases
# name -> builder(world, case dir) -> (argv, fragments the error line must contain)
Builder = Callable[[World, Path], tuple[list[str], tuple[str, ...]]]
CASES: dict[str, Builder] = {}
# Cases whose fix is owned by another module's author (see the report); strict: they
# start failing loudly the moment the fix lands, so the mark gets removed.
XFAIL: dict[str, str] = {}


# Cases run in a subprocess each (a fresh interpreter: ``jax.distributed`` can be joined
# once per process); all others run in this process through ``jaxunlearn.cli.main``, in
# their own working directory (no interpreter start-up: most fail within a second).
SUBPROCESS: set[str] = set()


def case(fn: Builder) -> Builder:
    CASES[fn.__name__] = fn
    return fn


def in_subprocess(fn: Builder) -> Builder:
    SUBPROCESS.add(fn.__name__)
    return fn


def run_main(args: list) -> subprocess.CompletedProcess:
    """``jaxunlearn.cli.main(args)`` here, its stdout/stderr captured like a subprocess's
    (an exception that escapes prints its traceback and counts as exit 1)."""
    import contextlib
    import io
    import traceback

    from jaxunlearn import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main([str(a) for a in args])
        except SystemExit as e:
            code = e.code
        except BaseException:  # noqa: BLE001 (a bug: report it as the CLI would)
            traceback.print_exc(file=err)
            code = 1
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


# --- data files: malformed, truncated, missing/empty/mistyped fields, empty, overlapping
@case
def forget_malformed_json(w, ws):
    b = bench_copy(w, ws)
    recs = jsonl(b / "forget10.json")
    write_jsonl(b / "forget10.json", recs[:2] + ['{"question": "Who?", "answer": }'] + recs[3:])
    return unlearn(w, ws, bench=b), ("forget10.json", "line 3", "malformed JSON")


@case
def forget_truncated_jsonl(w, ws):
    b = bench_copy(w, ws)
    text = (b / "forget10.json").read_text()
    (b / "forget10.json").write_text(text[: len(text) - 40])  # cut inside the last record
    last = len(text.splitlines())
    return unlearn(w, ws, bench=b), ("forget10.json", f"line {last}", "truncated JSON")


@case
def retain_truncated_parquet(w, ws):
    import pyarrow as pa
    import pyarrow.parquet as pq

    b = bench_copy(w, ws)
    recs = jsonl(b / "retain90.json")
    (b / "retain90.json").unlink()
    pq.write_table(pa.Table.from_pylist(recs), b / "retain90.parquet")
    blob = (b / "retain90.parquet").read_bytes()
    (b / "retain90.parquet").write_bytes(blob[: len(blob) // 2])
    return unlearn(w, ws, bench=b), ("retain90.parquet", "parquet")


@case
def forget_not_utf8(w, ws):
    b = bench_copy(w, ws)
    (b / "forget10.json").write_bytes(b'{"question": "caf\xe9?", "answer": "x"}\n')
    return unlearn(w, ws, bench=b), ("forget10.json", "UTF-8")


@case
def forget_missing_answer(w, ws):
    b = bench_copy(w, ws)
    recs = jsonl(b / "forget10.json")
    del recs[4]["answer"]
    write_jsonl(b / "forget10.json", recs)
    return unlearn(w, ws, bench=b), ("forget10.json", "line 5", "'answer'", "missing")


@case
def forget_empty_question(w, ws):
    b = bench_copy(w, ws)
    recs = jsonl(b / "forget10.json")
    recs[1]["question"] = "   "
    write_jsonl(b / "forget10.json", recs)
    return unlearn(w, ws, bench=b), ("forget10.json", "line 2", "'question'", "empty")


@case
def retain_answer_wrong_type(w, ws):
    b = bench_copy(w, ws)
    recs = jsonl(b / "retain90.json")
    recs[6]["answer"] = 42
    write_jsonl(b / "retain90.json", recs)
    return unlearn(w, ws, bench=b), ("retain90.json", "line 7", "'answer'", "string")


@case
def forget_record_not_object(w, ws):
    b = bench_copy(w, ws)
    recs = jsonl(b / "forget10.json")
    write_jsonl(b / "forget10.json", recs[:9] + [["Who?", "Nobody."]] + recs[10:])
    return unlearn(w, ws, bench=b), ("forget10.json", "line 10", "JSON object")


@case
def forget_perturbed_not_list(w, ws):
    b = bench_copy(w, ws)
    recs = jsonl(b / "forget10.json")
    recs[0]["perturbed_answer"] = "one string, not a list"
    write_jsonl(b / "forget10.json", recs)
    return unlearn(w, ws, bench=b), ("forget10.json", "line 1", "'perturbed_answer'", "list")


@case
def forget_empty_file(w, ws):
    b = bench_copy(w, ws)
    (b / "forget10.json").write_text("\n")
    return unlearn(w, ws, bench=b), ("forget10.json", "no records")


@case
def overlap_same_question(w, ws):
    b = bench_copy(w, ws)
    forget, retain = jsonl(b / "forget10.json"), jsonl(b / "retain90.json")
    retain[7]["question"] = forget[3]["question"]
    write_jsonl(b / "retain90.json", retain)
    return unlearn(w, ws, bench=b), ("overlap", "'question'", "forget10 record 4",
                                     "retain90 record 8")


@case
def overlap_same_person(w, ws):
    b = bench_copy(w, ws)
    forget, retain = jsonl(b / "forget10.json"), jsonl(b / "retain90.json")
    retain[11].update(person_id=forget[0]["person_id"], name=forget[0]["name"])
    write_jsonl(b / "retain90.json", retain)
    return unlearn(w, ws, bench=b), ("overlap", "'person_id'", "retain90 record 12")


@case
def benchmark_dir_missing(w, ws):
    return unlearn(w, ws, bench=ws / "no_such_bench"), ("no_such_bench", "no benchmark at")


@case
def split_name_escapes(w, ws):
    return unlearn(w, ws, "data.forget=../../etc/forget10"), ("data.forget", "../../etc")


# --- lengths and vocabulary
@case
def sequences_longer_than_max_len(w, ws):
    # Says how many: "<n> of <N> sequences are longer than max_len=12".
    return unlearn(w, ws, "data.max_len=12"), ("max_len=12", " of ", "sequences", "longer")


# Without its check a run goes through: train.steps=0 keeps that short.
@case
def sequences_longer_than_model_context(w, ws):
    return (unlearn(w, ws, "train.steps=0", model=w.model_short_context),
            ("of", "longer than the model's context of 16"))


@case
def tokenizer_larger_than_model_vocab(w, ws):
    return (unlearn(w, ws, "train.steps=0", model=w.model_small_vocab),
            (str(w.model_small_vocab), f"tokenizer has {w.vocab} tokens", "vocabulary has 256"))



# --- method and hyper-parameters
@case
def unknown_method(w, ws):
    return unlearn(w, ws, "method=forget_everything"), ("method.name", "forget_everything")


@case
def unknown_hyperparameter(w, ws):
    return unlearn(w, ws, "method.betta=0.1"), ("method.betta", "npo")


@case
def negative_beta(w, ws):
    return unlearn(w, ws, "method.beta=-0.5"), ("method.beta", "-0.5")


@case
def negative_alpha(w, ws):
    return unlearn(w, ws, "method=grad_diff", "method.alpha=-1"), ("method.alpha", "-1")


@case
def non_finite_hyperparameter(w, ws):
    return unlearn(w, ws, "method=simnpo", "method.beta=.nan"), ("method.beta", "finite")


# --- mesh
@case
def mesh_does_not_divide_devices(w, ws):
    return unlearn(w, ws, "mesh.data=0", "mesh.fsdp=3"), ("mesh.fsdp=3", "8 devices")


@case
def mesh_needs_more_devices(w, ws):
    return unlearn(w, ws, "mesh.data=4", "mesh.fsdp=4"), ("16 devices", "8 available")


@case
def mesh_does_not_divide_batch(w, ws):
    return (unlearn(w, ws, "mesh.data=2", "mesh.fsdp=2", "train.batch_size=6"),
            ("train.batch_size=6", "4 batch shards"))


# --- models and checkpoints
@case
def model_path_missing(w, ws):
    return unlearn(w, ws, model=ws / "no_such_model"), ("model.path", "no_such_model",
                                                        "does not exist")


def convert(ws: Path, source: Path) -> list[str]:
    """``convert`` loads the model (then its tokenizer) before anything else."""
    return ["convert", source, "--out", ws / "out" / "converted"]


@case
def model_dir_without_weights(w, ws):
    m = model_copy(w, ws)
    (m / "model.safetensors").unlink()
    return convert(ws, m), (str(m), "no *.safetensors")


@case
def model_dir_with_pickle_only(w, ws):
    m = model_copy(w, ws)
    (m / "model.safetensors").rename(m / "pytorch_model.bin")
    return convert(ws, m), (str(m), "pickled .bin checkpoints are refused")


@case
def model_weights_truncated(w, ws):
    m = model_copy(w, ws)
    blob = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(blob[: len(blob) // 3])
    return convert(ws, m), ("model.safetensors", "not a readable safetensors")


@case
def model_of_another_shape(w, ws):
    m = model_copy(w, ws)
    edit_json(m / "config.json", lambda c: {**c, "intermediate_size": 128})
    return convert(ws, m), (str(m), "gate_proj", "(64, 176)", "(64, 128)")


@case
def model_config_inconsistent(w, ws):
    m = model_copy(w, ws)  # 64 is not a multiple of 3 heads
    edit_json(m / "config.json", lambda c: {**c, "num_attention_heads": 3})
    return convert(ws, m), ("config.json", "3")


@case
def model_config_not_json(w, ws):
    m = model_copy(w, ws)
    (m / "config.json").write_text('{"vocab_size": 512,')
    return convert(ws, m), ("config.json", "malformed JSON")


@case
def model_missing_tokenizer(w, ws):
    m = model_copy(w, ws)
    (m / "tokenizer.json").unlink()
    (m / "tokenizer_config.json").unlink()
    return convert(ws, m), (str(m), "tokenizer")


def _resume_checkpoint(w: World, ws: Path, meta: dict, with_state: bool) -> list[str]:
    """An ``unlearn --resume`` command whose checkpoint directory holds ``meta``."""
    from jaxunlearn.config import load_config

    argv = unlearn(w, ws)
    cfg = load_config(None, argv[1:])
    # Where run_unlearning keeps this configuration's checkpoints.
    fp = cfg.fingerprint("model", "data", "train", "method", "seed")
    step = ws / "out" / "checkpoints" / f"unlearn-npo-{fp}" / "step_00000001"
    step.mkdir(parents=True)
    (step / "meta.json").write_text(json.dumps({**meta, "fingerprint": fp}))
    if with_state:
        (step / "state").mkdir()
    return [argv[0], "--resume", *argv[1:]]


@case
def resume_partial_checkpoint(w, ws):
    meta = {"format_version": 1, "step": 1, "epoch": 0, "batch_index": 1, "leaves": []}
    return _resume_checkpoint(w, ws, meta, with_state=False), ("step_00000001", "partial")


@case
def resume_checkpoint_of_another_model(w, ws):
    from jaxunlearn.models import LlamaConfig

    config = LlamaConfig.from_hf(json.loads((w.model / "config.json").read_text()))
    wider = json.loads(json.dumps(dataclasses.asdict(config.replace(hidden_size=128))))
    meta = {"format_version": 1, "step": 1, "epoch": 0, "batch_index": 1, "leaves": [],
            "model_config": wider}
    return (_resume_checkpoint(w, ws, meta, with_state=True),
            ("step_00000001", "another model", "hidden_size"))


# --- GGUF
@case
def gguf_unsupported_quantisation(w, ws):
    import gguf

    raw = np.zeros((4, 84), np.uint8)  # 4 rows of one Q2_K block (256 values in 84 bytes)
    write_gguf(ws / "q2k.gguf", {"token_embd.weight": (raw, gguf.GGMLQuantizationType.Q2_K)})
    return ["convert", ws / "q2k.gguf", "--out", ws / "out" / "converted"], ("q2k.gguf", "Q2_K")


@case
def gguf_truncated(w, ws):
    write_gguf(ws / "cut.gguf", {"token_embd.weight": (np.ones((64, 256), np.float32), None)})
    blob = (ws / "cut.gguf").read_bytes()
    (ws / "cut.gguf").write_bytes(blob[: len(blob) - 4096])
    return ["convert", ws / "cut.gguf", "--out", ws / "out" / "converted"], ("cut.gguf",
                                                                            "truncated")


@case
def gguf_not_gguf(w, ws):
    (ws / "fake.gguf").write_bytes(b"PK\x03\x04" + bytes(200))
    return ["convert", ws / "fake.gguf", "--out", ws / "out" / "converted"], ("fake.gguf",
                                                                             "not a GGUF")


# --- configuration
@case
def config_bad_yaml(w, ws):
    (ws / "run.yaml").write_text("train:\n  steps: [1, 2\nmethod: npo\n")
    return unlearn(w, ws, "--config", ws / "run.yaml"), ("run.yaml", "YAML")


@case
def config_unknown_key(w, ws):
    (ws / "run.yaml").write_text("trian:\n  steps: 1\n")
    return unlearn(w, ws, "--config", ws / "run.yaml"), ("run.yaml", "'trian'")


@case
def config_wrong_type(w, ws):
    return unlearn(w, ws, "train.batch_size=two"), ("train.batch_size", "integer")


@case
def config_file_missing(w, ws):
    return unlearn(w, ws, "--config", ws / "nope.yaml"), ("nope.yaml", "does not exist")


@case
def config_out_of_range(w, ws):
    return unlearn(w, ws, "train.optimizer.learning_rate=-0.1"), ("learning_rate", "-0.1")


@case
def config_override_without_value(w, ws):
    return unlearn(w, ws, "train.steps"), ("train.steps", "key=value")


# --- other commands
@case
def report_malformed_eval_json(w, ws):
    (ws / "eval.json").write_text('{"models": {"npo": {"forget_quality": 0.1')
    return ["report", ws / "eval.json"], ("eval.json", "malformed JSON")


@case
def experiment_bad_stage(w, ws):
    (ws / "exp.yaml").write_text("stages: [train_target, unlearn_everything]\nmethod: npo\n")
    return ["run", ws / "exp.yaml"], ("exp.yaml", "stages")


@case
def eval_model_missing(w, ws):
    return (["eval", "--model", f"npo={ws / 'gone'}", f"data.benchmark={w.bench}",
             f"output_dir={ws / 'out'}"], ("--model", "gone", "does not exist"))


@case
def generate_data_over_a_model(w, ws):
    m = model_copy(w, ws)
    return ["generate-data", "--out", m, "--people", "12"], (str(m), "not empty")


# --- issue 21: outputs never replace foreign data or leave output_dir
@case
def convert_into_foreign_dir(w, ws):
    (ws / "out" / "converted").mkdir(parents=True)
    (ws / "out" / "converted" / "my_notes.txt").write_text("the user's own file")
    return convert(ws, w.model), ("--out", "converted", "not empty", "not written by jaxunlearn")


@case
def convert_onto_existing_file(w, ws):
    (ws / "out").mkdir()
    (ws / "out" / "converted").write_text("the user's own file")
    return convert(ws, w.model), ("--out", "converted", "is a file")


@case
def checkpoints_symlink_leaves_output_dir(w, ws):
    (ws / "elsewhere").mkdir()
    (ws / "out").mkdir()
    (ws / "out" / "checkpoints").symlink_to(ws / "elsewhere", target_is_directory=True)
    return unlearn(w, ws), ("output_dir", "checkpoints", "outside")


@case
def method_output_symlink_leaves_output_dir(w, ws):
    (ws / "elsewhere").mkdir()
    (ws / "out").mkdir()
    (ws / "out" / "npo").symlink_to(ws / "elsewhere", target_is_directory=True)
    return unlearn(w, ws), ("output_dir", "npo", "outside")


@case
def method_output_is_foreign_dir(w, ws):
    (ws / "out" / "npo").mkdir(parents=True)
    (ws / "out" / "npo" / "results.csv").write_text("the user's own file")
    return unlearn(w, ws), ("output_dir", "npo", "not written by jaxunlearn")


@case
def output_dir_is_a_file(w, ws):
    (ws / "out").write_text("the user's own file")
    return unlearn(w, ws), ("output_dir", "not a directory")


# --- issue 21: sizes refused from metadata, before anything is allocated
@case
def config_json_billion_layers(w, ws):
    m = model_copy(w, ws)
    edit_json(m / "config.json", lambda c: {**c, "num_hidden_layers": 1_000_000_000})
    return convert(ws, m), ("config.json", "num_hidden_layers=1000000000", "GB", "memory")


@case
def config_json_absurd_heads(w, ws):
    m = model_copy(w, ws)
    edit_json(m / "config.json", lambda c: {**c, "num_attention_heads": 10**12, "head_dim": 32})
    return convert(ws, m), ("config.json", "num_attention_heads=1000000000000")


@case
def config_json_zero_heads(w, ws):
    m = model_copy(w, ws)
    edit_json(m / "config.json", lambda c: {**c, "num_attention_heads": 0})
    return convert(ws, m), ("config.json", "num_attention_heads=0")


@case
def gguf_absurd_block_count(w, ws):
    write_llama_gguf(ws / "deep.gguf", block_count=1_000_000_000)
    return ["convert", ws / "deep.gguf", "--out", ws / "out" / "converted"], (
        "deep.gguf", "block_count=1000000000")


@case
def gguf_empty_file(w, ws):
    (ws / "empty.gguf").write_bytes(b"")
    return ["convert", ws / "empty.gguf", "--out", ws / "out" / "converted"], (
        "empty.gguf", "empty")


@case
def yaml_alias_bomb(w, ws):
    # 413 bytes that expand to 9^9 list items through aliases ("billion laughs").
    levels = ["&a0 [x, x, x, x, x, x, x, x, x]"] + [
        f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]" for i in range(1, 9)]
    (ws / "run.yaml").write_text("eval:\n  metrics: [" + ", ".join(levels) + "]\n")
    return unlearn(w, ws, "--config", ws / "run.yaml"), ("run.yaml", "eval.metrics",
                                                         "aliases")


@case
def batch_size_out_of_range(w, ws):
    return unlearn(w, ws, "train.batch_size=100000000000"), ("train.batch_size",
                                                             "100000000000")


@case
def batch_larger_than_memory(w, ws):  # its token arrays alone: 2e9 x 8 x 16 bytes = 256 GB
    return unlearn(w, ws, "train.batch_size=2000000000"), ("train.batch_size=2000000000",
                                                           "GB", "memory")


@case
def batch_cannot_fit_the_model(w, ws):  # 2^26 rows of the tiny model: ~1 TB of activations
    return (unlearn(w, ws, "train.batch_size=67108864"),
            ("train.batch_size=67108864", "GB", "activations"))


# --- issue 21: one line, not a traceback
@case
def config_is_a_directory(w, ws):
    (ws / "conf").mkdir()
    return unlearn(w, ws, "--config", ws / "conf"), ("conf", "directory")


@case
def config_not_utf8(w, ws):
    (ws / "run.yaml").write_bytes(b"train:\n  steps: 1 # caf\xe9\n")
    return unlearn(w, ws, "--config", ws / "run.yaml"), ("run.yaml", "UTF-8", "offset")


@case
def config_duplicate_key(w, ws):
    (ws / "run.yaml").write_text("train:\n  steps: 1\n  steps: 500\n")
    return unlearn(w, ws, "--config", ws / "run.yaml"), ("run.yaml", "line 3", "duplicate",
                                                         "'steps'")


@case
def seed_negative(w, ws):
    return unlearn(w, ws, "seed=-1"), ("seed", "-1")


@case
def seed_out_of_range(w, ws):
    return unlearn(w, ws, f"seed={2**64}"), ("seed", str(2**64), "out of range")


@case
def warmup_steps_out_of_range(w, ws):
    return (unlearn(w, ws, f"train.optimizer.warmup_steps={10**20}"),
            ("warmup_steps", str(10**20)))


@case
def checkpoint_every_negative(w, ws):
    return unlearn(w, ws, "train.checkpoint_every=-1"), ("train.checkpoint_every", "-1")


@case
def question_lone_surrogate(w, ws):
    b = bench_copy(w, ws)
    recs = jsonl(b / "forget10.json")
    recs[2]["question"] = "Where was \ud800 born?"  # json.dumps writes it as \\ud800
    write_jsonl(b / "forget10.json", recs)
    return unlearn(w, ws, bench=b), ("forget10.json", "line 3", "'question'", "surrogate")


@case
@in_subprocess
def distributed_on_a_single_host(w, ws):
    return unlearn(w, ws, "distributed=true"), (
        "distributed", "distributed.coordinator_address", "distributed.num_processes",
        "distributed.process_id", "single host")


# --- issue 21: no longer accepted silently
@case
def safetensors_dtype_says_int(w, ws):
    m = model_copy(w, ws)
    blob = (m / "model.safetensors").read_bytes()
    (m / "model.safetensors").write_bytes(blob.replace(b'"dtype":"F32"', b'"dtype":"I32"', 1))
    return convert(ws, m), ("model.safetensors", "I32", "floating point")


@case
def config_json_nan_eps(w, ws):
    m = model_copy(w, ws)
    edit_json(m / "config.json", lambda c: {**c, "rms_norm_eps": float("nan")})
    return convert(ws, m), ("config.json", "rms_norm_eps=nan", "finite")


@case
def optimizer_b1_out_of_range(w, ws):
    return unlearn(w, ws, "train.optimizer.b1=1.5"), ("optimizer.b1", "1.5")


@case
def optimizer_eps_negative(w, ws):
    return unlearn(w, ws, "train.optimizer.eps=-1e-8"), ("optimizer.eps", "-1e-08")


@case
def optimizer_clip_norm_infinite(w, ws):
    return unlearn(w, ws, "train.optimizer.clip_norm=.inf"), (
        "train.optimizer.clip_norm", "expected a finite number, got inf")


@case
def learning_rate_infinite(w, ws):
    return unlearn(w, ws, "train.optimizer.learning_rate=.inf"), (
        "train.optimizer.learning_rate", "expected a finite number, got inf")


@case
def overlap_after_unicode_normalisation(w, ws):
    import unicodedata

    b = bench_copy(w, ws)
    forget, retain = jsonl(b / "forget10.json"), jsonl(b / "retain90.json")
    forget[3]["question"] = "Where was Zo\u00eb Brontë born?"  # composed (NFC)
    retain[7]["question"] = unicodedata.normalize("NFD", forget[3]["question"])
    assert retain[7]["question"] != forget[3]["question"]
    write_jsonl(b / "forget10.json", forget)
    write_jsonl(b / "retain90.json", retain)
    return unlearn(w, ws, bench=b), ("overlap", "'question'", "forget10 record 4",
                                     "retain90 record 8")


def _id(name: str):
    marks = [pytest.mark.xfail(strict=True, reason=XFAIL[name])] if name in XFAIL else []
    return pytest.param(name, id=name, marks=marks)


def _run_case(w: World, name: str) -> tuple[subprocess.CompletedProcess, tuple, set, set]:
    ws = w.root / "cases" / name
    ws.mkdir(parents=True)
    argv, expect = CASES[name](w, ws)
    before = tree(ws)
    if name in SUBPROCESS:
        result = run_cli(argv, cwd=ws)
    else:
        with contextlib.chdir(ws):  # relative outputs land in the case's directory
            result = run_main(argv)
    return result, expect, before, tree(ws)


@pytest.fixture(scope="module")
def outcomes(world, request) -> dict:
    """Runs the selected cases here, one after another, while the subprocess cases and the
    valid-command control run beside them."""
    wanted = {item.callspec.params["name"] for item in request.session.items
              if getattr(item, "originalname", "") == "test_bad_input"
              and hasattr(item, "callspec")}
    shared_before = {p: tree(p) for p in (world.bench, world.model, world.model_small_vocab,
                                          world.model_short_context)}
    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = {n: pool.submit(_run_case, world, n) for n in CASES
                   if n in wanted and n in SUBPROCESS}
        control = pool.submit(_run_control, world)
        # In this (main) thread meanwhile: cli.main installs signal handlers and
        # redirects sys.stdout/sys.stderr, both of which only one thread may do.
        done = {n: _run_case(world, n) for n in CASES if n in wanted and n not in SUBPROCESS}
        done.update({n: f.result() for n, f in futures.items()})
        done["__control__"] = control.result()
    done["__shared__"] = {p: (b, tree(p)) for p, b in shared_before.items()}
    return done


def _run_control(w: World) -> tuple[subprocess.CompletedProcess, Path]:
    ws = w.root / "control"
    ws.mkdir()
    # The same command line the cases start from, with truncation on: a valid run. An
    # earlier run of it left a checkpoint, which this one (no --resume) must say it drops.
    argv = unlearn(w, ws, "data.max_len=40", "data.truncate=true")
    from jaxunlearn.config import load_config

    fp = load_config(None, argv[1:]).fingerprint("model", "data", "train", "method", "seed")
    (ws / "out" / "checkpoints" / f"unlearn-npo-{fp}" / "step_00000001" / "state").mkdir(
        parents=True)
    return run_cli(argv, cwd=ws), ws


@pytest.mark.parametrize("name", [_id(n) for n in CASES])
def test_bad_input(outcomes, name):
    result, expect, before, after = outcomes[name]
    stderr = result.stderr
    assert "Traceback" not in stderr, stderr[-3000:]
    assert result.returncode == 2, f"exit {result.returncode}\n{stderr[-3000:]}"
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if ": error: " in line]
    assert len(errors) == 1 and errors[0] == lines[-1], stderr[-3000:]
    for fragment in expect:
        assert fragment in errors[0], f"{fragment!r} not in {errors[0]!r}"
    assert after == before, f"left behind: {sorted(after - before)}"


def test_bad_inputs_cover_thirty_distinct_cases():
    assert len(CASES) >= 30


def test_shared_fixtures_untouched(outcomes):
    for path, (before, after) in outcomes["__shared__"].items():
        assert after == before, f"{path}: {sorted(after ^ before)}"


def test_valid_command_runs(outcomes):
    """The cases' command line is valid but for the one thing each case breaks: with
    ``data.max_len`` below the longest answer and ``data.truncate=true`` it succeeds."""
    result, ws = outcomes["__control__"]
    assert result.returncode == 0, result.stderr[-3000:]
    out = ws / "out" / "npo"
    assert (out / "model.safetensors").is_file() and (out / "unlearn.json").is_file()
    record = json.loads((out / "unlearn.json").read_text())
    assert record["updates"] == 1
    assert record["reference_cache"]["distribution"] in ("none", "full", "top_k")
    assert not (ws / "out" / "checkpoints").exists() or not any(
        (ws / "out" / "checkpoints").rglob("*")), "checkpoints left after a finished run"
    # It used to drop the earlier run's checkpoint without a word (issue 21).
    assert "starting over: removed the checkpoints of an earlier run" in result.stderr

