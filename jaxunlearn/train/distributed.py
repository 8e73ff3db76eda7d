"""Multi-process runs: one JAX job of several processes, each running the same command.

JAX's multi-controller runtime, no launcher of our own: every process runs the same
``jaxunlearn`` command with ``distributed`` set, and :func:`initialize` joins them
(``jax.distributed.initialize``; the ``distributed.coordinator_address``,
``num_processes`` and ``process_id`` keys, or JAX's auto-detection on TPU pods, SLURM,
Open MPI and the other cluster environments it knows). ``jax.devices()`` then lists the
devices of every process and one mesh spans them all. Each process feeds the rows of a
batch that its own devices hold (``mesh.shard_batch``); arrays come to the host with
:func:`to_host` (a gather every process takes part in); process 0 alone writes files
(:func:`is_primary`).

Ending together: a process whose command fails publishes its one-line error in the job's
key-value store (:func:`leave`); a watcher thread in every other process reads it, prints
``stopped: process N failed: ...`` and leaves with the same exit code instead of waiting
in a collective that will never complete. A process that dies without a word (killed,
out of memory) stops sending heartbeats; JAX ends the others after
``distributed.heartbeat_timeout`` seconds. Joining is bounded by
``distributed.initialization_timeout``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from typing import Any

import jax
import numpy as np
from jax._src import distributed as _jax_distributed  # the job's key-value store
from jax.experimental import multihost_utils

from jaxunlearn.errors import ConfigError, MeshError

__all__ = ["DistributedConfig", "initialize", "joined", "is_primary", "barrier", "to_host",
           "leave"]

# The keys to set where JAX detects no cluster environment, for error messages.
EXPLICIT_KEYS = ("distributed.coordinator_address", "distributed.num_processes",
                 "distributed.process_id")
_FAILED_KEY = "jaxunlearn/failed"  # "<process> <exit code> <message>" of the first failure
_POLL_MS = 2000  # the watcher's wait per poll of the key-value store


@dataclasses.dataclass(frozen=True, kw_only=True)
class DistributedConfig:
    """How this process joins a multi-process job (``distributed`` in a run config).

    ``distributed=true`` is this config with every field at its default: JAX detects the
    coordinator, the process count and this process's id from the cluster environment.
    Fields given here are passed to ``jax.distributed.initialize`` instead.

    Attributes:
      coordinator_address: ``host:port`` of process 0's coordination service.
      num_processes: processes in the job.
      process_id: this process's index, ``0 <= process_id < num_processes``.
      initialization_timeout: seconds to wait for every process to join.
      heartbeat_timeout: seconds of silence after which a process counts as dead and
        the job ends.
    """

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    initialization_timeout: int = 300
    heartbeat_timeout: int = 100

    def __post_init__(self):
        if self.coordinator_address is not None:
            host, sep, port = self.coordinator_address.rpartition(":")
            if not (sep and host and port.isdigit() and 1 <= int(port) <= 65535):
                raise ConfigError(f"distributed.coordinator_address must be host:port (port "
                                  f"1-65535), got {self.coordinator_address!r}")
        if self.num_processes is not None and self.num_processes < 1:
            raise ConfigError(f"distributed.num_processes must be >= 1, got {self.num_processes}")
        if self.process_id is not None:
            if self.process_id < 0:
                raise ConfigError(f"distributed.process_id must be >= 0, got {self.process_id}")
            if self.num_processes is not None and self.process_id >= self.num_processes:
                raise ConfigError(f"distributed.process_id={self.process_id} must be below "
                                  f"distributed.num_processes={self.num_processes}")
        for name in ("initialization_timeout", "heartbeat_timeout"):
            if getattr(self, name) < 1:
                raise ConfigError(f"distributed.{name} must be >= 1 (seconds), got "
                                  f"{getattr(self, name)}")


class _Job:
    """This process's membership: the failure watcher, and what it prints."""

    def __init__(self, prefix: str):
        self.prefix = prefix
        self.left = False
        self.watcher = threading.Thread(target=self._watch, name="jaxunlearn-job-watcher",
                                        daemon=True)

    def _watch(self) -> None:
        client = _jax_distributed.global_state.client
        while not self.left:
            try:
                value = client.blocking_key_value_get(_FAILED_KEY, _POLL_MS)
            except Exception as e:  # noqa: BLE001 (the store's errors have no finer type)
                if "DEADLINE_EXCEEDED" in str(e):
                    continue
                return  # the job is shutting down
            process, code, message = value.split(" ", 2)
            if self.left or int(process) == jax.process_index():
                return  # this process is leaving on its own: its main thread shuts down
            print(f"{self.prefix}: error: stopped: process {process} of the job failed: "
                  f"{message}", file=sys.stderr, flush=True)
            sys.stdout.flush()
            _shutdown()
            os._exit(int(code))


_job: _Job | None = None


def initialize(config: DistributedConfig, *, prefix: str = "jaxunlearn") -> None:
    """Joins the job (before any device is touched) and starts the failure watcher.

    ``prefix`` starts the line printed when another process fails (``jaxunlearn unlearn``).
    Without a cluster to join (``distributed=true`` on one host), or with a coordinator
    that does not answer within ``initialization_timeout``, a ``MeshError``: one line
    naming the keys to set, exit 2.
    """
    global _job
    # Cross-process collectives of the CPU backend (tests, CPU clusters); no effect on
    # accelerators' own collectives.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(
            coordinator_address=config.coordinator_address,
            num_processes=config.num_processes, process_id=config.process_id,
            initialization_timeout=config.initialization_timeout,
            heartbeat_timeout_seconds=config.heartbeat_timeout)
    except (ValueError, RuntimeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise MeshError(f"distributed: cannot join a multi-process job ({first}); where no "
                        f"cluster environment is detected set {', '.join(EXPLICIT_KEYS)} "
                        "(the same address and count on every process), or on a single "
                        "host leave distributed=false") from None
    _job = _Job(prefix)
    _job.watcher.start()


def joined() -> bool:
    """Whether this process is part of a multi-process job that it has not left."""
    return _job is not None and not _job.left


def is_primary() -> bool:
    """Process 0, the one that writes files (every process on a single-process run)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Waits until every process of the job reaches ``barrier(name)``; no-op on one process."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def to_host(tree: Any) -> Any:
    """Host (numpy) copies of the arrays in ``tree``, whole on every process.

    An array spread over several processes is gathered (a collective: every process
    must call this at the same point); one this process holds entirely is copied.
    """
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable \
                and not x.is_fully_replicated:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)


_shutdown_lock = threading.Lock()
_shut_down = False


def _shutdown() -> None:
    """``jax.distributed.shutdown`` once per process: the main thread and the failure
    watcher may both get here, and a second, concurrent shutdown crashes the runtime."""
    global _shut_down
    with _shutdown_lock:
        if _shut_down:
            return
        _shut_down = True
        try:
            jax.distributed.shutdown()
        except Exception:  # noqa: BLE001 (leaving anyway; the other processes time out)
            pass


def leave(code: int, message: str = "") -> None:
    """Leaves the job at the end of a command; no-op unless :func:`initialize` joined one.

    A failure (``code != 0``) is first published with ``message`` so that the other
    processes stop with it (see the module docstring); then the job is shut down (a
    barrier every process reaches: the others from their watcher).
    """
    if not joined():
        return
    _job.left = True  # first: the watcher no longer acts on the other processes' failures
    if code != 0:
        try:
            _jax_distributed.global_state.client.key_value_set(
                _FAILED_KEY, f"{jax.process_index()} {code} {message or f'exit code {code}'}")
        except Exception:  # noqa: BLE001 (another process failed first: its key stays)
            pass
    _shutdown()
    _job.watcher.join(timeout=2 * _POLL_MS / 1000)
