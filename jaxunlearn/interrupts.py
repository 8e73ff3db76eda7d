"""Ctrl-C and SIGTERM at safe points: a flag set by the handler, checked between units of work.

Raising ``KeyboardInterrupt`` from a signal handler interrupts whatever Python bytecode
runs next, which may be the middle of a JAX dispatch, a tensorstore write or a
half-renamed output set: the result was a segfault (exit 139) after "interrupted", a
swallowed interrupt, or outputs without their report. Here the handler only records
the signal; the code calls :func:`check` where stopping is safe (between training
steps, evaluation batches, models, and before committing an output), so an interrupted
command leaves its outputs complete or absent, and the CLI exits with code 130.

A second signal while the first is pending means "stop now": one line on stderr and
``os._exit(130)``. Outputs are staged under hidden temporary names (``.<name>.tmp-*``)
and renamed into place whole, so even then nothing half-written is visible; at most
such a hidden temporary remains.

:func:`deferred` nests: the outermost context installs the handlers (main thread
only) and restores the previous ones on exit; inner ones share its flag.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

__all__ = ["Interrupted", "deferred", "received", "check", "signal_name"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A SIGINT/SIGTERM was honoured at a safe point; ``signum`` says which.

    A ``KeyboardInterrupt`` so that anything catching Ctrl-C (the CLI: exit 130) does.
    """

    def __init__(self, message: str, *, signum: int | None = None):
        super().__init__(message)
        self.signum = signum


class _State:
    depth = 0
    received: int | None = None
    previous: dict[int, object] = {}


def signal_name(signum: int | None) -> str:
    try:
        return signal.Signals(signum).name
    except (TypeError, ValueError):
        return "interrupt"


def _handler(signum, frame) -> None:
    if _State.received is not None:
        os.write(2, f"jaxunlearn: {signal_name(signum)} again: stopping now\n".encode())
        os._exit(130)
    _State.received = signum


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block, SIGINT/SIGTERM set a flag (see :func:`received`) instead of raising."""
    outermost = _State.depth == 0
    installed = False
    if outermost and threading.current_thread() is threading.main_thread():
        _State.received = None
        _State.previous = {sig: signal.signal(sig, _handler) for sig in SIGNALS}
        installed = True
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if installed:
            for sig, old in _State.previous.items():
                signal.signal(sig, old)
            _State.previous = {}
            _State.received = None


def received() -> int | None:
    """The pending signal's number, or None."""
    return _State.received


def check(where: str = "") -> None:
    """Raises :class:`Interrupted` when a signal is pending; call it where stopping is safe.

    Args:
      where: what was about to happen, for the message (e.g. ``"before writing eval.json"``).
    """
    signum = _State.received
    if signum is not None:
        at = f" {where}" if where else ""
        raise Interrupted(f"{signal_name(signum)} received; stopped{at}", signum=signum)
