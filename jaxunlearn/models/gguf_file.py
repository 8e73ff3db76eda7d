"""The GGUF container: its header (metadata and tensor table) read with every length
bounds-checked, and its tensors dequantised to float32.

The header is parsed here (`read_header`) with every length and every tensor's byte range checked
against the file size, so a truncated or hostile file fails with a `GGUFError` naming the file and
the key or tensor -- not an IndexError, a hang or a huge allocation. (`gguf.GGUFReader` neither
bound-checks nor is quick: seconds per 50k-token vocabulary.) Nothing is ever unpickled.

Dimension order: GGUF lists `ne[0]` (the contiguous, input axis) first, so a tensor with dims
`[in, out]` is the row-major array `[out, in]` -- numpy's order, which is HF's; `TensorInfo.shape`
is that numpy order. Types F32/F16/BF16/Q8_0/Q4_0/Q4_1/Q4_K/Q5_K/Q6_K (`SUPPORTED_TYPES`) are
dequantised with `gguf.quants`. What the names and metadata mean is `models.gguf`'s business.
"""

from __future__ import annotations

import math
import mmap
import struct
from pathlib import Path
from typing import Any, NamedTuple

import gguf
import numpy as np

from jaxunlearn.errors import GGUFError

Q = gguf.GGMLQuantizationType
SUPPORTED_TYPES = frozenset({Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q4_K, Q.Q5_K, Q.Q6_K})


class TensorInfo(NamedTuple):
    """One entry of the tensor table; its bytes are `[start, start + nbytes)` of the file."""

    name: str
    shape: tuple[int, ...]  # numpy (= HF) order: GGUF's dims reversed
    ggml_type: gguf.GGMLQuantizationType
    start: int  # absolute byte offset in the file
    nbytes: int


_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY, _FLOAT32 = 8, 9, 6


def _short_float(x: float) -> float:
    """float32 metadata as the shortest decimal that round-trips it: 1e-05, as config.json wrote it."""
    return float(str(np.float32(x)))


class _Cursor:
    """Little-endian reads over the mapped file that refuse to run past its end."""

    def __init__(self, buf: mmap.mmap, path: Path):
        self.buf, self.path, self.pos = buf, path, 0

    def need(self, n: int, what: str) -> None:
        if self.pos + n > len(self.buf):
            raise GGUFError(f"{self.path}: {what} needs {n} bytes at offset {self.pos}, past the end of the "
                            f"{len(self.buf)}-byte file (truncated or corrupted)")

    def take(self, fmt: str, what: str) -> tuple:
        fmt = "<" + fmt  # explicit byte order also means no native alignment padding
        self.need(struct.calcsize(fmt), what)
        values = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += struct.calcsize(fmt)
        return values

    def string(self, what: str) -> str:
        (n,) = self.take("Q", what)
        self.need(n, what)
        raw = self.buf[self.pos:self.pos + n]
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise GGUFError(f"{self.path}: {what} is not valid UTF-8 ({err})") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            (v,) = self.take(_SCALARS[vtype], what)
            return _short_float(v) if vtype == _FLOAT32 else v
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY and depth < 2:
            itype, count = self.take("IQ", what)
            if itype in _SCALARS:
                dtype = np.dtype("<" + _SCALARS[itype])
                self.need(count * dtype.itemsize, what)
                items = np.frombuffer(self.buf, dtype, count, self.pos)
                self.pos += count * dtype.itemsize
                return items.tolist()
            self.need(count * 8, what)  # a string or array item takes >= 8 bytes: bounds the loop
            return [self.value(itype, f"{what}[{i}]", depth + 1) for i in range(count)]
        raise GGUFError(f"{self.path}: {what} has unknown value type {vtype}")


def read_header(path: str | Path) -> tuple[Path, dict[str, Any], list[TensorInfo]]:
    """`(path, metadata, tensor table)` of a GGUF file, every length checked against the file size.

    Metadata values come back as Python scalars, strings and lists; each tensor's bytes lie inside
    the file, aligned, disjoint from the others, in a type `gguf.GGML_QUANT_SIZES` knows.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    if path.stat().st_size == 0:  # mmap refuses an empty file
        raise GGUFError(f"{path}: empty file (0 bytes), not a GGUF file")
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf, path)
        cur.need(4, "magic")
        if buf[:4] != b"GGUF":
            raise GGUFError(f"{path}: not a GGUF file (magic {bytes(buf[:4])!r}, expected b'GGUF')")
        cur.pos = 4
        (version,) = cur.take("I", "version")
        if version & 0xFFFF == 0 and version != 0:
            raise GGUFError(f"{path}: big-endian GGUF files are not supported")
        if version not in (2, 3):
            raise GGUFError(f"{path}: unsupported GGUF version {version} (supported: 2, 3)")
        n_tensors, n_kv = cur.take("QQ", "tensor/key-value counts")
        if n_kv * 13 > len(buf) or n_tensors * 28 > len(buf):  # smallest possible entries
            raise GGUFError(f"{path}: header claims {n_tensors} tensors and {n_kv} keys, too many for the file")
        meta: dict[str, Any] = {}
        for i in range(n_kv):
            key = cur.string(f"key #{i}")
            if key in meta:
                raise GGUFError(f"{path}: metadata key {key!r} appears twice")
            (vtype,) = cur.take("I", f"type of {key!r}")
            meta[key] = cur.value(vtype, f"metadata {key!r}")
        alignment = meta.get("general.alignment", gguf.GGUF_DEFAULT_ALIGNMENT)
        if not isinstance(alignment, int) or alignment < 1 or alignment & (alignment - 1):
            raise GGUFError(f"{path}: general.alignment={alignment!r} is not a power of two")
        raw = []
        for i in range(n_tensors):
            name = cur.string(f"name of tensor #{i}")
            (n_dims,) = cur.take("I", f"tensor {name!r} rank")
            if not 1 <= n_dims <= 4:
                raise GGUFError(f"{path}: tensor {name!r} has {n_dims} dimensions (GGUF allows 1 to 4)")
            dims = cur.take(f"{n_dims}QIQ", f"tensor {name!r} info")
            raw.append((name, dims[:n_dims], dims[n_dims], dims[n_dims + 1]))
        data_start = -(-cur.pos // alignment) * alignment
        size = len(buf)
    infos, names = [], set()
    for name, dims, type_id, offset in raw:
        if name in names:
            raise GGUFError(f"{path}: tensor {name!r} appears twice")
        names.add(name)
        try:
            ggml_type = Q(type_id)
            block, type_size = gguf.GGML_QUANT_SIZES[ggml_type]
        except (ValueError, KeyError):
            raise GGUFError(f"{path}: tensor {name!r} has unknown ggml type {type_id}") from None
        if min(dims) < 1 or dims[0] % block:
            raise GGUFError(f"{path}: tensor {name!r} dims {list(dims)} invalid for {ggml_type.name} "
                            f"(positive, the first a multiple of {block})")
        if offset % alignment:
            raise GGUFError(f"{path}: tensor {name!r} data offset {offset} is not {alignment}-byte aligned")
        start, nbytes = data_start + offset, math.prod(dims) // block * type_size
        if start + nbytes > size:
            raise GGUFError(f"{path}: tensor {name!r} data [{start}, {start + nbytes}) lies outside the "
                            f"{size}-byte file (truncated or bad offset)")
        infos.append(TensorInfo(name, tuple(reversed(dims)), ggml_type, start, nbytes))
    spans = sorted(infos, key=lambda t: t.start)
    for a, b in zip(spans, spans[1:]):
        if a.start + a.nbytes > b.start:
            raise GGUFError(f"{path}: tensors {a.name!r} and {b.name!r} overlap in the file")
    return path, meta, infos


def meta_value(meta: dict, key: str, path: Path, default: Any = ...) -> Any:
    """`meta[key]`, else `default`; without a default a missing key is a `GGUFError` naming it."""
    if key in meta:
        return meta[key]
    if default is ...:
        raise GGUFError(f"{path}: metadata key {key!r} is missing")
    return default


def dequantize(data: np.memmap, t: TensorInfo) -> np.ndarray:
    """float32 values of one tensor, `t.shape`, in memory of their own (not a view of the file)."""
    block, type_size = gguf.GGML_QUANT_SIZES[t.ggml_type]
    raw = data[t.start:t.start + t.nbytes].reshape(*t.shape[:-1], t.shape[-1] // block * type_size)
    w = gguf.quants.dequantize(raw, t.ggml_type)  # F32 comes back as a view of the memory map
    w = np.array(w, dtype=np.float32, copy=True) if np.may_share_memory(w, data) else w.astype(np.float32, copy=False)
    if w.shape != t.shape:
        raise GGUFError(f"tensor {t.name!r} dequantised to shape {list(w.shape)}, expected {list(t.shape)}")
    return w
