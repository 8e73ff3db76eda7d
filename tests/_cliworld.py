"""A tiny benchmark and model on disk, and the CLI run in a subprocess with optional patches.

Shared by the tests that drive ``jaxunlearn`` end to end through faults (interrupts at a
chosen moment, a full disk, a held lock). A *patch* is Python source run in the child
before ``jaxunlearn.cli.main``: it replaces one function to raise a fault or to wait,
so the moment a fault hits is fixed by the code path, not by timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

from conftest import TEST_XLA_FLAGS

REPO = Path(__file__).resolve().parents[1]

# Child side of an interrupt test: announce the moment, then wait until the parent's
# signal has been received (the handler only sets a flag), so the signal always lands
# at exactly this point of the command.
WAIT_FOR_SIGNAL = """
import os, time
from pathlib import Path
from jaxunlearn import interrupts

def wait_for_signal():
    Path(os.environ["JAXUNLEARN_TEST_READY"]).touch()
    deadline = time.monotonic() + 120
    while interrupts.received() is None and time.monotonic() < deadline:
        time.sleep(0.01)
"""


class World(NamedTuple):
    root: Path
    bench: Path
    model: Path  # tiny Llama with the benchmark tokenizer (512 tokens)


def make_world(root: Path) -> World:
    """Writes a 12-person synthetic benchmark and an untrained tiny model under ``root``."""
    from flax import nnx

    from jaxunlearn.data import synthetic, tofu
    from jaxunlearn.data import tokenizer as tok_lib
    from jaxunlearn.models import Llama, save_pretrained
    from jaxunlearn.models.presets import get_preset

    bench = synthetic.write_benchmark(
        synthetic.generate(synthetic.SyntheticConfig(num_people=12)), root / "bench")
    tok = tok_lib.train_tokenizer(tok_lib.corpus_texts(tofu.load_benchmark(bench)),
                                  vocab_size=512)
    config = get_preset("tiny", vocab_size=len(tok), bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = save_pretrained(Llama(config, rngs=nnx.Rngs(0)), config, root / "model",
                            tokenizer=tok)
    return World(root=root, bench=Path(bench), model=model)


def tree(root: Path) -> set[str]:
    """Every file and directory under ``root``, relative (hidden temporaries included)."""
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def _env(ready: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count=8 {TEST_XLA_FLAGS}",
               TQDM_DISABLE="1")
    if ready is not None:
        env["JAXUNLEARN_TEST_READY"] = str(ready)
    return env


def _argv(args: list, patch: str) -> list[str]:
    code = (f"{patch}\nimport sys\nfrom jaxunlearn import cli\n"
            f"sys.exit(cli.main({[str(a) for a in args]!r}))\n")
    return [sys.executable, "-c", code]


def run_cli(args: list, cwd: Path, *, patch: str = "",
            timeout: float = 300) -> subprocess.CompletedProcess:
    """``jaxunlearn *args`` in a subprocess (8 CPU devices, offline) after ``patch``."""
    return subprocess.run(_argv(args, patch), cwd=cwd, env=_env(None), capture_output=True,
                          text=True, timeout=timeout)


def interrupt_cli(args: list, cwd: Path, *, patch: str, sig: int = signal.SIGINT,
                  timeout: float = 300) -> subprocess.CompletedProcess:
    """Runs ``jaxunlearn *args`` with ``patch`` (which calls ``wait_for_signal()`` at the
    chosen moment) and sends ``sig`` once the child reports that moment."""
    ready = cwd / ".ready"
    ready.unlink(missing_ok=True)
    proc = subprocess.Popen(_argv(args, WAIT_FOR_SIGNAL + patch), cwd=cwd, env=_env(ready),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while not ready.exists() and proc.poll() is None:
        assert time.monotonic() < deadline, "the child never reached the moment"
        time.sleep(0.02)
    if proc.poll() is None:
        proc.send_signal(sig)
    out, err = proc.communicate(timeout=timeout)
    ready.unlink(missing_ok=True)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def stderr_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]
