"""jaxunlearn.interrupts: SIGINT/SIGTERM honoured at safe points, one line, exit 130.

The end-to-end tests interrupt real commands at a chosen moment: the child runs a patch
that waits, at that moment, until the signal has arrived (``_cliworld.interrupt_cli``),
so each test hits the same point every time. Outputs must then be complete or absent.
"""

from __future__ import annotations

import os
import signal

import pytest

from _cliworld import interrupt_cli, make_world, stderr_lines, tree
from jaxunlearn import interrupts


def test_a_signal_sets_the_flag_and_check_raises_at_the_safe_point():
    before = signal.getsignal(signal.SIGINT)
    with interrupts.deferred():
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt here
        assert interrupts.received() == signal.SIGINT
        with interrupts.deferred():  # nested: same flag
            with pytest.raises(interrupts.Interrupted, match="SIGINT received; stopped "
                                                           "between batches") as info:
                interrupts.check("between batches")
        assert isinstance(info.value, KeyboardInterrupt)
        assert info.value.signum == signal.SIGINT
    assert interrupts.received() is None
    assert signal.getsignal(signal.SIGINT) is before  # restored
    interrupts.check()  # nothing pending: no-op


def test_a_second_signal_stops_at_once_with_one_line(tmp_path):
    code = ("import os, signal, time\n"
            "from jaxunlearn import interrupts\n"
            "with interrupts.deferred():\n"
            "    os.kill(os.getpid(), signal.SIGTERM)\n"
            "    os.kill(os.getpid(), signal.SIGINT)\n"
            "    time.sleep(30)\n")
    import subprocess
    import sys

    from _cliworld import REPO

    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 130
    assert result.stderr.strip().splitlines() == ["jaxunlearn: SIGINT again: stopping now"]


# ----------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("interrupts"))


def eval_args(world, out):
    # The retain model is evaluated first, then `a`: two models, no attacks, few records.
    return ["eval", "--retain-model", world.model, "--model", f"a={world.model}",
            f"data.benchmark={world.bench}", f"output_dir={out}", "eval.attacks=false",
            "eval.fast=true", "eval.max_records=4", "eval.max_new_tokens=8",
            "eval.batch_size=8", "eval.metrics=[tofu]"]


EVAL_OUTPUTS = {"eval.json", "report.md"}

# moment -> (patch, signal, what the output directory must hold afterwards)
MOMENTS = {
    # Between the two models: the second one's first batch is the safe point.
    "between_models": ("""
from jaxunlearn.eval import suite
_evaluate = suite.evaluate_data
def evaluate_then_wait(*a, **k):
    out = _evaluate(*a, **k)
    wait_for_signal()
    return out
suite.evaluate_data = evaluate_then_wait
""", signal.SIGINT, "absent"),
    # The report is rendered but not yet moved into place (it used to leave eval.json
    # and the figures without report.md).
    "while_writing_the_report": ("""
from jaxunlearn import report
_write_report = report.write_report
def write_report_then_wait(*a, **k):
    path = _write_report(*a, **k)
    wait_for_signal()
    return path
report.write_report = write_report_then_wait
""", signal.SIGTERM, "absent"),
    # Everything is written: the command says so and still exits 130 (never swallowed).
    "after_the_outputs": ("""
from jaxunlearn import report
_write_outputs = report.write_outputs
def write_outputs_then_wait(*a, **k):
    path = _write_outputs(*a, **k)
    wait_for_signal()
    return path
report.write_outputs = write_outputs_then_wait
""", signal.SIGINT, "complete"),
}


@pytest.mark.parametrize("moment", list(MOMENTS))
def test_interrupted_eval_exits_130_with_one_line_and_complete_or_absent_outputs(
        world, tmp_path, moment):
    patch, sig, expect = MOMENTS[moment]
    out = tmp_path / "out"
    result = interrupt_cli(eval_args(world, out), tmp_path, patch=patch, sig=sig)
    assert result.returncode == 130, result.stderr[-3000:]
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr[-3000:]
    assert lines[0].startswith("jaxunlearn eval: interrupted") and sig.name in lines[0]
    files = tree(out)
    if expect == "absent":
        assert not files & (EVAL_OUTPUTS | {"fq_vs_mu.png", "methods.png"}), files
    else:
        assert EVAL_OUTPUTS <= files and "after the outputs were complete" in lines[0]
    assert not [f for f in files if f.startswith(".")], files  # no staging, no lock


def test_interrupted_unlearn_keeps_a_checkpoint_and_no_model(world, tmp_path):
    """SIGINT after update 1 of 3: one line naming the checkpoint, no output model."""
    out = tmp_path / "out"
    args = ["unlearn", f"data.benchmark={world.bench}", f"model.path={world.model}",
            f"output_dir={out}", "method=npo", "train.steps=3", "train.batch_size=2",
            "data.max_len=128"]
    patch = """
from jaxunlearn.train import loop
_host_metrics = loop._host_metrics
def host_metrics_then_wait(metrics):
    m = _host_metrics(metrics)
    wait_for_signal()
    return m
loop._host_metrics = host_metrics_then_wait
"""
    result = interrupt_cli(args, tmp_path, patch=patch)
    assert result.returncode == 130, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    lines = stderr_lines(result)
    said = [line for line in lines if "interrupted" in line or "SIGINT" in line]
    assert said == [lines[-1]], result.stderr[-3000:]
    assert "SIGINT after update 1" in lines[-1] and "step_00000001" in lines[-1]
    assert not (out / "npo").exists()
    assert [p for p in tree(out) if p.endswith("step_00000001")]
