"""What this machine has: memory (host and accelerators) and free disk space.

Sizes that cannot fit are refused from metadata, before anything is allocated or
written: a ``config.json`` declaring a billion layers, a batch of 10^11 rows, a run
whose checkpoints would fill the disk. The checks compare an *estimate* (a lower
bound on what the work needs, stated in the message) with what is here, and raise
:class:`ResourceError` (a :class:`~jaxunlearn.errors.UserError`: one line, exit 2)
naming the setting or field and the number that was too large.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from jaxunlearn.errors import ResourceError

__all__ = ["ResourceError", "physical_memory", "available_memory", "device_memory",
           "free_disk", "gb", "check_fits"]



def physical_memory() -> int:
    """Bytes of RAM of this machine (``os.sysconf``); a large number where unknown."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 1 << 50


def available_memory() -> int:
    """Bytes of RAM available to a new allocation now (Linux ``MemAvailable``: free memory
    plus reclaimable caches); ``physical_memory()`` where the kernel does not say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return physical_memory()


def device_memory() -> tuple[int, str]:
    """``(bytes, what)``: the summed memory of the local accelerators, or the host RAM on CPU.

    Imports jax: call it only where jax is in use anyway.
    """
    import jax

    devices = jax.local_devices()
    limits = []
    for d in devices:
        try:
            stats = d.memory_stats() or {}
        except Exception:  # noqa: BLE001 (backends without memory statistics)
            stats = {}
        if "bytes_limit" in stats:
            limits.append(int(stats["bytes_limit"]))
    if devices and len(limits) == len(devices) and devices[0].platform != "cpu":
        return sum(limits), f"the {len(devices)} {devices[0].platform} devices' memory"
    return physical_memory(), "this machine's memory"


def free_disk(path: str | os.PathLike) -> int:
    """Bytes free for this user on the file system that holds ``path`` (or would hold it)."""
    p = Path(path).absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return shutil.disk_usage(p).free


def gb(n: float) -> str:
    """``n`` bytes as a short decimal GB figure: ``'3.2 GB'``, ``'0.004 GB'``."""
    v = n / 1e9
    return f"{v:.3g} GB" if v < 1000 else f"{v:,.0f} GB"


def check_fits(need: int, have: int, *, subject: str, estimate: str, where: str) -> None:
    """Raises :class:`ResourceError` when ``need > have``.

    The message reads ``"{subject} would need ~{need} of {estimate}, more than {where}'s
    {have}"``, e.g. ``config.json: num_hidden_layers=1000000000 would need ~4.1e+03 GB of
    parameters (float32), more than this machine's memory's 25 GB``.
    """
    if need > have:
        raise ResourceError(f"{subject} would need ~{gb(need)} of {estimate}, more than "
                            f"{where} ({gb(have)})")
