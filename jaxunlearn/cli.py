"""The ``jaxunlearn`` command line: argument parsing and dispatch to ``jaxunlearn.pipeline``.

Exit codes: 0 success, 2 user error (one clear line on stderr, no traceback), 1 bug
(traceback), 130 interrupted. Every command validates its inputs before any work.

Around every command: SIGINT/SIGTERM are deferred to safe points
(``jaxunlearn.interrupts``: one line, exit 130, outputs complete or absent); commands
with an ``output_dir`` hold its lock (``jaxunlearn.storage.output_lock``); a full disk
and an exhausted accelerator or host memory are one line and exit 2, not a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import sys
from pathlib import Path


def _use_compilation_cache() -> None:
    """Keep XLA's compiled programs across runs.

    A second ``make demo`` or ``jaxunlearn unlearn`` then skips most compilation, the
    largest fixed cost of a small-model run on a CPU. The compiled code is the same with
    or without the cache. ``JAX_COMPILATION_CACHE_DIR`` chooses another directory.
    """
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(root, "jaxunlearn", "xla"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


# Before jax is imported (below): it reads these once, at import. HF_HUB_OFFLINE and the
# Hugging Face cache are the user's: hub ids (data.benchmark=locuslab/TOFU, model.path=
# owner/name) are fetched when the hub is reachable and fail in one line when not.
_use_compilation_cache()

from jaxunlearn import interrupts, report, storage  # noqa: E402
from jaxunlearn.config import load_config  # noqa: E402
from jaxunlearn.errors import MeshError, UserError  # noqa: E402
from jaxunlearn.pipeline import (demo, evaluate, experiment, tools, training,  # noqa: E402
                                 unlearning)
from jaxunlearn.train import distributed  # noqa: E402


def _user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the user can fix this" (exit 2, no traceback).

    Every user-facing error class (``jaxunlearn.errors``: ConfigError, DataError,
    CheckpointError, MeshError, GGUFError, MethodError, ...) subclasses UserError. A
    missing bundled model file, and a path the user may not write, are the user's to fix
    too.
    """
    return (UserError, FileNotFoundError, PermissionError)


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _out_of_memory(exc: BaseException) -> bool:
    """XLA's RESOURCE_EXHAUSTED (device or host allocation failed) or Python's MemoryError."""
    return isinstance(exc, MemoryError) or (
        "RuntimeError" in type(exc).__name__ and "RESOURCE_EXHAUSTED" in str(exc))


def _add_print_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved configuration as YAML and exit")


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=None, help="YAML run configuration")
    _add_print_config(p)
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. method=npo method.beta=0.1 mesh.fsdp=4")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jaxunlearn",
        description="Make a language model forget, and prove that it did.",
        epilog="`jaxunlearn methods` lists the methods and their hyper-parameters; "
               "`--print-config` on train/unlearn/eval/demo/run shows every config key.")
    parser.add_argument("--version", action="version",
                        version=f"jaxunlearn {importlib.metadata.version('jaxunlearn')}")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("methods", help="list the unlearning methods, their hyper-parameters "
                   "and defaults (one line each)")

    p = sub.add_parser("demo", help="the main job: benchmark, train, unlearn with every "
                       "method, evaluate, report")
    p.add_argument("--methods", default=None,
                   help="comma-separated subset of methods (default: all registered)")
    _add_config_args(p)

    p = sub.add_parser("generate-data", help="write the embedded synthetic benchmark")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--people", type=int, default=None, help="default: data.people")
    p.add_argument("--qa-per-person", type=int, default=None, help="default: data.qa_per_person")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")

    p = sub.add_parser("train", help="train the target (or the retain/gold) model")
    p.add_argument("--which", choices=("target", "retain"), default="target")
    p.add_argument("--resume", action="store_true")
    _add_config_args(p)

    p = sub.add_parser("unlearn", help="unlearn the forget split with one method")
    p.add_argument("--resume", action="store_true")
    _add_config_args(p)

    p = sub.add_parser("eval", help="evaluate one or more models on the benchmark")
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]PATH",
                   help="model to evaluate (repeatable); NAME defaults to the directory name")
    p.add_argument("--retain-model", type=Path, default=None,
                   help="the gold retain model (forget quality is measured against it)")
    p.add_argument("--logs", action="append", default=[], metavar="NAME=PATH",
                   help="a model's per-question TOFU logs (open-unlearning's TOFU_EVAL.json "
                   "or TOFU's eval_log_aggregated.json), scored without the model (repeatable)")
    p.add_argument("--retain-logs", type=Path, default=None, metavar="PATH",
                   help="the retain model's logs, in place of --retain-model")
    _add_config_args(p)

    p = sub.add_parser("report", help="render report.md and figures from an eval.json")
    p.add_argument("eval_json", type=Path)

    p = sub.add_parser("run", help="run an experiment YAML (experiments/*.yaml)")
    p.add_argument("experiment", type=Path)
    p.add_argument("overrides", nargs="*", metavar="key=value")
    _add_print_config(p)

    p = sub.add_parser("convert", help="convert a GGUF file or HF directory to a safetensors directory")
    p.add_argument("source", type=Path)
    p.add_argument("--out", type=Path, required=True)

    p = sub.add_parser("generate", help="greedy answer from a model (smoke test)")
    p.add_argument("--model", default="smollm2-135m", help="preset name with weights, HF dir or .gguf")
    p.add_argument("--prompt", default="What is the capital of France?")
    p.add_argument("--max-new-tokens", type=int, default=40)
    return parser


# Commands that run as one job of several processes (each process's shards, process 0
# writing); the others would write their benchmark, tokenizer and reports from every process.
_DISTRIBUTED_COMMANDS = ("unlearn",)


def _start_distributed(cfg, command: str) -> None:
    """Multi-process runs (``distributed``) join the job before any device is touched."""
    if not cfg.distributed:
        return
    if command not in _DISTRIBUTED_COMMANDS:
        raise MeshError(f"distributed: `jaxunlearn {command}` runs in one process; "
                        f"multi-process jobs run `jaxunlearn {' / '.join(_DISTRIBUTED_COMMANDS)}`"
                        " (leave distributed unset here)")
    distributed.initialize(cfg.distributed, prefix=f"jaxunlearn {command}")


def _output_lock(cfg, command: str):
    """The lock of ``cfg.output_dir`` for this command; on a multi-process job only process
    0 takes it (the processes of one job may share the directory)."""
    if cfg.distributed and not distributed.is_primary():
        return contextlib.nullcontext()
    return storage.output_lock(cfg.output_dir, field="output_dir",
                               command=f"jaxunlearn {command}")


def _print_config(cfg) -> int:
    print(tools.config_yaml(cfg), end="")
    return 0


def _dispatch(args) -> int:
    if args.command == "methods":
        print("\n".join(tools.method_lines()))
        return 0
    if args.command == "generate-data":
        tools.generate_data(args.out, people=args.people, qa_per_person=args.qa_per_person,
                            seed=args.seed, overwrite=args.overwrite)
        return 0
    if args.command == "generate":
        tools.generate_answer(args.model, args.prompt, max_new_tokens=args.max_new_tokens)
        return 0
    if args.command == "convert":
        tools.convert(args.source, args.out)
        return 0
    if args.command == "report":
        return report.main_report(args.eval_json)
    if args.command == "run":
        cfg, _ = experiment.read_experiment(args.experiment, args.overrides)
        if args.print_config:
            return _print_config(cfg)
        _start_distributed(cfg, args.command)
        with _output_lock(cfg, args.command):
            return experiment.run_experiment(args.experiment, args.overrides)
    if args.command == "demo":
        cfg = load_config(args.config, args.overrides, base=demo.DEFAULTS)
        if args.print_config:
            return _print_config(cfg)
        _start_distributed(cfg, args.command)
        subset = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
        with _output_lock(cfg, args.command):
            return demo.run_demo(cfg, subset)
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        return _print_config(cfg)
    _start_distributed(cfg, args.command)
    with _output_lock(cfg, args.command):
        return _dispatch_run(args, cfg)


def _dispatch_run(args, cfg) -> int:
    if args.command == "train":
        training.train_model(cfg, which=args.which, resume=args.resume)
        return 0
    if args.command == "unlearn":
        unlearning.run_unlearning(cfg, resume=args.resume)
        return 0
    if args.command == "eval":
        return evaluate.main_eval(cfg, args.model, args.retain_model, log_args=args.logs,
                                  retain_logs_path=args.retain_logs)
    raise AssertionError(f"unhandled command {args.command}")


def main(argv: list[str] | None = None) -> int:
    with interrupts.deferred():
        args = build_parser().parse_args(argv)
        try:
            code, message = _run(args)
        except BaseException:  # a bug: the other processes of a job stop too
            distributed.leave(1, "a crash (traceback on its stderr)")
            raise
        distributed.leave(code, message)  # no-op outside a multi-process job
        return code


def _run(args) -> tuple[int, str]:
    """``_dispatch`` with every expected failure as one line on stderr: (exit code, line)."""
    prefix = f"jaxunlearn {args.command}"

    def fail(code: int, line: str) -> tuple[int, str]:
        print(f"{prefix}: {line}", file=sys.stderr)
        return code, line

    try:
        code = _dispatch(args)
    except _user_errors() as e:
        return fail(2, f"error: {_one_line(e)}")
    except KeyboardInterrupt as e:
        return fail(130, "interrupted" + (f": {_one_line(e)}" if str(e) else ""))
    except Exception as e:  # noqa: BLE001 (the two faults below are the user's to fix)
        if storage.is_disk_full(e):
            return fail(2, f"error: no space left on device ({_one_line(e)[:300]}); free "
                        "some space or choose another output_dir (nothing was half-written)")
        if _out_of_memory(e):
            return fail(2, f"error: out of memory ({_one_line(e)[:300]}); lower "
                        "train.batch_size (raise train.grad_accum), eval.batch_size or "
                        "data.max_len")
        raise
    if (signum := interrupts.received()) is not None:
        return fail(130, f"interrupted: {interrupts.signal_name(signum)} arrived after the "
                    "outputs were complete")
    return code, ""


if __name__ == "__main__":
    sys.exit(main())
