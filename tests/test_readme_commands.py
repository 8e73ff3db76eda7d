"""Every shell command shown in README.md and experiments/README.md is run by a test.

``COVERED`` maps each command (a line of a fenced ``sh`` block, comment dropped) to the
test that runs it; a README command without an entry, or an entry naming a test that
does not exist, fails here. ``test_using_it_commands_run_as_written`` runs the "Using
it" commands themselves, read from the README, in a scratch directory (``<hash>``
resolved to the model the previous command made; small sizes appended).
"""

import re
import subprocess
from pathlib import Path

import pytest

from jaxunlearn import cli

ROOT = Path(__file__).resolve().parents[1]
READMES = (ROOT / "README.md", ROOT / "experiments" / "README.md")
CHAIN = "tests/test_readme_commands.py::test_using_it_commands_run_as_written"
COVERED = {
    "make demo": "tests/test_readme_commands.py::test_make_targets_run_what_the_readme_says",
    "make test": "tests/test_readme_commands.py::test_make_targets_run_what_the_readme_says",
    "jaxunlearn generate-data --out runs/benchmark": CHAIN,
    "jaxunlearn train --config experiments/train_small.yaml": CHAIN,
    "jaxunlearn train --config experiments/train_small.yaml --which retain": CHAIN,
    "jaxunlearn unlearn --config experiments/unlearn_npo.yaml "
    "model.path=runs/train_small/models/target-<hash> method.beta=0.2": CHAIN,
    "jaxunlearn unlearn --config experiments/unlearn_npo.yaml "
    "model.path=runs/train_small/models/target-<hash> train.eval_every=4 "
    "train.keep_best=forget_quality train.tracker=tensorboard "
    "eval.retain_model=runs/train_small/models/retain-<hash>": CHAIN,
    "jaxunlearn eval --config experiments/train_small.yaml --model npo=runs/unlearn_npo/npo "
    "--retain-model runs/train_small/models/retain-<hash>": CHAIN,
    "jaxunlearn run experiments/unlearn_npo.yaml "
    "model.path=runs/train_small/models/target-<hash>": CHAIN,
    "jaxunlearn methods": CHAIN,
    "jaxunlearn unlearn --config experiments/unlearn_npo.yaml --print-config": CHAIN,
    "jaxunlearn --version": CHAIN,
    "jaxunlearn run experiments/smollm2_synthetic_npo.yaml":
        "tests/test_experiment.py::test_smollm2_synthetic_npo_smoke",
    "jaxunlearn run experiments/smollm2_synthetic.yaml":
        "tests/test_experiment.py::test_smollm2_synthetic_runs_every_stage_and_method_at_toy_sizes",
    **{f".venv/bin/python benchmarks/{name}.py{args}":
       "tests/test_benchmarks.py::test_benchmark_runs_and_prints_its_headline_last"
       for name, args in (("step_vs_torch", ""), ("gemm_floor", ""), ("hvp_vs_grad", ""),
                          ("mfu", " --tiny"), ("memory", ""))},
    ".venv/bin/python benchmarks/memory.py --search 8,64 --remat full":
        "tests/test_benchmarks.py::test_memory_mesh_search_compiles_each_mesh_and_reports_the_lowest",
    "benchmarks/gpu_check.sh":
        "tests/test_benchmarks.py::test_gpu_check_reduced_mode_prints_one_block_of_finite_figures",
    # Hub ids and published logs, run on files we write in the same layouts.
    "jaxunlearn run experiments/tofu_llama32_1b_npo.yaml "
    "model.path=open-unlearning/tofu_Llama-3.2-1B-Instruct_full data.benchmark=locuslab/TOFU "
    "retain_logs=saves/eval/tofu_Llama-3.2-1B-Instruct_retain90/TOFU_EVAL.json":
        "tests/test_experiment.py::test_tofu_experiment_prints_ours_beside_expected",
    "jaxunlearn eval --logs full=full/eval_log_aggregated.json "
    "--retain-logs retain90/eval_log_aggregated.json output_dir=runs/tofu_logs":
        "tests/test_tofu_logs.py::test_cli_eval_from_logs_writes_eval_json",
}
# Sizes that keep the chain to a couple of minutes; the commands are the README's.
SMALL = {"train": ["train.steps=2", "eval.max_new_tokens=4", "eval.max_records=4"],
         "unlearn": ["train.steps=4", "eval.batch_size=8", "eval.max_new_tokens=4",
                     "eval.max_records=4"],
         "eval": ["eval.max_records=4", "eval.max_new_tokens=4", "eval.attacks=false",
                  "eval.fast=true"],
         "run": ["train.steps=2", "eval.max_records=4", "eval.max_new_tokens=4",
                 "eval.attacks=false"]}


def readme_commands() -> list[str]:
    """Each command of every fenced ``sh`` block of the READMEs (``\\``-continued lines
    joined), its ``# comment`` dropped."""
    out = []
    for path in READMES:
        for block in re.findall(r"```sh\n(.*?)```", path.read_text(), re.S):
            block = re.sub(r"\\\n", " ", block)  # continued lines are one command
            for line in block.splitlines():
                command = re.sub(r"(^|\s+)#.*$", "", line).strip()
                if command:
                    out.append(" ".join(command.split()))
    return out


def test_every_readme_command_is_run_by_a_test():
    commands = readme_commands()
    missing = [c for c in commands if c not in COVERED]
    assert not missing, f"README commands no test runs (add them to COVERED): {missing}"
    stale = sorted(set(COVERED) - set(commands))
    assert not stale, f"COVERED lists commands the READMEs no longer show: {stale}"
    for test in set(COVERED.values()):
        file, name = test.split("::")
        assert re.search(rf"^def {name}\(", (ROOT / file).read_text(), re.M), test


def test_make_targets_run_what_the_readme_says():
    """``make demo`` is ``jaxunlearn demo`` (run small in tests/test_demo.py) and ``make
    test`` is pytest over tests/ (this suite); a dry run shows each target's recipe."""
    demo = subprocess.run(["make", "-n", "-W", "pyproject.toml", "demo"], cwd=ROOT,
                          capture_output=True, text=True, check=True).stdout
    assert ".venv/bin/jaxunlearn demo" in demo
    test = subprocess.run(["make", "-n", "test"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
    assert "-m pytest" in test and "tests" in test.split()


def _argv(command: str, root: Path) -> list[str]:
    words = command.split()
    assert words[0] == "jaxunlearn"
    out = []
    for w in words[1:]:
        for which in ("target", "retain"):
            token = f"runs/train_small/models/{which}-<hash>"
            if token in w:
                (path,) = (root / "runs" / "train_small" / "models").glob(f"{which}-*")
                w = w.replace(token, str(path.relative_to(root)))
        out.append(w)
    return out


def test_using_it_commands_run_as_written(tmp_path, monkeypatch, capsys):
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    monkeypatch.chdir(tmp_path)
    commands = [c for c, test in COVERED.items() if test == CHAIN]
    order = [c for c in readme_commands() if c in commands]
    assert sorted(order) == sorted(commands)
    for command in order:
        argv = _argv(command, tmp_path)
        if "--version" in argv:
            with pytest.raises(SystemExit) as stop:
                cli.main(argv)
            assert stop.value.code == 0
            assert re.fullmatch(r"jaxunlearn \d+\.\d+\.\d+\S*\n", capsys.readouterr().out)
            continue
        extra = [] if "--print-config" in argv else SMALL.get(argv[0], [])
        code = cli.main(argv + extra)
        captured = capsys.readouterr()
        assert code == 0, f"{command}: {captured.err[-2000:]}"
        if argv[0] == "methods":
            lines = captured.out.splitlines()
            assert len(lines) >= 15 and any(line.startswith("npo (gradient): ") and "beta=0.1"
                                            in line for line in lines)
        if "--print-config" in argv:
            from jaxunlearn.config import load_config

            (tmp_path / "printed.yaml").write_text(captured.out)
            want = load_config(ROOT / "experiments" / "unlearn_npo.yaml")
            assert load_config(tmp_path / "printed.yaml") == want
    runs = tmp_path / "runs"
    assert (runs / "unlearn_npo" / "npo" / "unlearn.json").is_file()
    assert (runs / "unlearn_npo" / "logs" / "npo" / "metrics.jsonl").is_file()
    assert (runs / "train_small" / "eval.json").is_file()
    assert (runs / "unlearn_npo" / "eval.json").is_file()


def test_methods_output_shown_in_the_readme_is_what_the_command_prints(capsys):
    """The README's sample of ``jaxunlearn methods`` (its ``text`` block) is printed as is."""
    shown = re.search(r"`jaxunlearn methods` prints one line per\s+method, e\.g\.\s+```text\n(.*?)```",
                      (ROOT / "README.md").read_text(), re.S)
    assert shown, "the README's `jaxunlearn methods` sample is gone"
    assert cli.main(["methods"]) == 0
    printed = capsys.readouterr().out.splitlines()
    for line in shown.group(1).strip().splitlines():
        assert line in printed, line
