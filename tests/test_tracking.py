"""train.tracking: metrics.jsonl always, TensorBoard event files read back, W&B calls, the
one-line refusal of a missing extra; train.loop's ``log`` / ``log_every`` schedule."""

import importlib.machinery
import json
import struct
import sys
import types

import numpy as np
import pytest

from _loop_runs import make_run, make_source
from jaxunlearn.errors import ConfigError
from jaxunlearn.train import loop, tracking


def _read_events(run_dir) -> list:
    """Every scalar ``(tag, step, value)`` of the TensorBoard event files in ``run_dir``,
    parsed from the TFRecord framing (u64 length, u32 crc, data, u32 crc) with the
    ``Event`` protobuf that tensorboardX ships."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(run_dir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12:pos + 12 + length])
            pos += 12 + length + 4
            for v in event.summary.value:
                out.append((v.tag, event.step, v.simple_value))
    return out


def test_jsonl_and_tensorboard_hold_what_was_logged(tmp_path):
    records = [{"step": 1, "epoch": 0, "index": 0, "loss": 2.5, "eval/forget_prob": 0.25},
               {"step": 2, "epoch": 0, "index": 1, "loss": float("nan")}]
    with tracking.Tracker(tmp_path / "run", kind="tensorboard") as tracker:
        for r in records:
            tracker.log(r)
    lines = (tmp_path / "run" / tracking.METRICS_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == [records[0], {**records[1], "loss": None}]
    events = _read_events(tmp_path / "run")
    assert ("loss", 1, 2.5) in events and ("eval/forget_prob", 1, 0.25) in events
    assert {t for t, _, _ in events} == {"loss", "eval/forget_prob"}  # no step/epoch/index
    (nan,) = [v for t, s, v in events if s == 2]
    assert np.isnan(nan)


def test_resumed_run_replaces_the_steps_it_logs_again(tmp_path):
    with tracking.Tracker(tmp_path, kind="none") as tracker:
        for s in (1, 2, 3, 4):
            tracker.log({"step": s, "loss": float(s)})
    with tracking.Tracker(tmp_path, kind="none", fresh=False) as tracker:
        for s in (3, 4, 5):
            tracker.log({"step": s, "loss": 10.0 * s})
    rows = [json.loads(x) for x in (tmp_path / tracking.METRICS_FILE).read_text().splitlines()]
    assert [(r["step"], r["loss"]) for r in rows] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0),
                                                      (5, 50.0)]
    with tracking.Tracker(tmp_path, kind="none") as tracker:  # a fresh run starts empty
        tracker.log({"step": 1, "loss": 0.5})
    assert len((tmp_path / tracking.METRICS_FILE).read_text().splitlines()) == 1


def test_wandb_gets_scalars_offline(tmp_path, monkeypatch):
    calls = []

    class Run:
        def log(self, scalars, step):
            calls.append(("log", dict(scalars), step))

        def finish(self):
            calls.append(("finish",))

    fake = types.ModuleType("wandb")
    fake.__spec__ = importlib.machinery.ModuleSpec("wandb", None)
    fake.init = lambda **kw: calls.append(("init", kw)) or Run()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    with tracking.Tracker(tmp_path, kind="wandb", name="unlearn-npo", config={"seed": 0}) as t:
        t.log({"step": 3, "epoch": 0, "index": 2, "loss": 1.5})
    assert calls[0][0] == "init" and calls[0][1]["name"] == "unlearn-npo"
    assert calls[0][1]["config"] == {"seed": 0} and calls[0][1]["dir"] == str(tmp_path)
    import os
    assert os.environ["WANDB_MODE"] == "offline"
    assert calls[1:] == [("log", {"loss": 1.5}, 3), ("finish",)]


def test_missing_extra_is_one_line_naming_pip_install(monkeypatch):
    monkeypatch.setattr(tracking.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install jaxunlearn\[tensorboard\]"):
        tracking.require("tensorboard")
    with pytest.raises(ConfigError, match="train.tracker must be one of"):
        tracking.require("mlflow")


def test_loop_logs_every_k_updates_after_hooks_and_at_the_end():
    state, step = make_run()
    logged = []
    hook = loop.Hook(every=4, fn=lambda s, st: {"x": float(s)}, name="eval")
    result = loop.run_loop(step, state, make_source(), total_steps=7, progress=False,
                           hooks=(hook,), log=logged.append, log_every=3)
    assert [r["step"] for r in logged] == [3, 4, 6, 7]
    assert logged == [h for h in result.history if h["step"] in (3, 4, 6, 7)]
    assert logged[1]["eval/x"] == 4.0 and logged[3]["eval/x"] == 7.0
    with pytest.raises(ValueError, match="log_every"):
        loop.run_loop(step, state, make_source(), total_steps=1, progress=False, log_every=-1)
