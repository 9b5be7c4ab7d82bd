"""Safe tensor codec: flat float32 vectors and named tensors ↔ bytes. Never unpickles anything.

Every encoded tensor carries its encoding, dtype and shape explicitly; the decoder checks the
declared sizes against hard caps and the actual byte counts *before* allocating anything, and
rejects NaN/Inf. Encodings for deltas: ``fp32``, ``fp16``, ``int8`` (symmetric, one scale per
block) and ``topk`` (indices + fp16 values of the k largest-magnitude coordinates); any of them
may additionally be zstd-compressed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, TypeGuard

import numpy as np
import numpy.typing as npt
import zstandard

Encoding = Literal["fp32", "fp16", "int8", "topk"]
ENCODINGS: tuple[Encoding, ...] = ("fp32", "fp16", "int8", "topk")
FloatVec = npt.NDArray[np.float32]

#: Hard caps on what a decoder will accept (a peer cannot make us allocate more than this).
MAX_ELEMENTS = 16_000_000
MAX_NDIM = 8
MAX_TENSORS = 1024
INT8_BLOCK = 256


class TensorCodecError(ValueError):
    """Encoded tensor bytes are malformed, oversized or non-finite."""


def encode_vector(
    vec: npt.ArrayLike,
    encoding: Encoding = "fp32",
    *,
    topk_fraction: float = 0.1,
    compress: bool = False,
) -> dict[str, Any]:
    """Encode a 1-D float vector into a msgpack-ready dict."""
    v = np.ascontiguousarray(np.asarray(vec, dtype=np.float32).reshape(-1))
    if not np.all(np.isfinite(v)):
        raise TensorCodecError("refusing to encode a vector with NaN or Inf")
    n = int(v.size)
    out: dict[str, Any] = {"enc": encoding, "n": n}
    if encoding == "fp32":
        payload = v.astype("<f4").tobytes()
    elif encoding == "fp16":
        payload = np.clip(v, -65504, 65504).astype("<f2").tobytes()
    elif encoding == "int8":
        n_blocks = -(-n // INT8_BLOCK)
        padded = np.zeros(n_blocks * INT8_BLOCK, dtype=np.float32)
        padded[:n] = v
        blocks = padded.reshape(n_blocks, INT8_BLOCK)
        scale = np.abs(blocks).max(axis=1) / 127.0
        safe = np.where(scale > 0, scale, 1.0)
        q = np.clip(np.rint(blocks / safe[:, None]), -127, 127).astype(np.int8)
        out["scales"] = scale.astype("<f4").tobytes()
        payload = q.reshape(-1)[:n].tobytes()
    elif encoding == "topk":
        k = max(1, min(n, round(topk_fraction * n))) if n else 0
        idx = np.sort(np.argpartition(np.abs(v), n - k)[n - k :]) if k else np.zeros(0, np.int64)
        out["k"] = k
        out["idx"] = idx.astype("<u4").tobytes()
        payload = np.clip(v[idx], -65504, 65504).astype("<f2").tobytes()
    else:
        raise TensorCodecError(f"unknown encoding {encoding!r}; use one of {ENCODINGS}")
    if compress:
        out["zstd"] = True
        payload = zstandard.ZstdCompressor(level=3).compress(payload)
    out["data"] = payload
    return out


def decode_vector(obj: Any, *, max_elements: int = MAX_ELEMENTS) -> FloatVec:
    """Decode :func:`encode_vector` output; raises :class:`TensorCodecError` on anything odd."""
    if not isinstance(obj, Mapping):
        raise TensorCodecError("encoded vector must be a map")
    enc, n, data = obj.get("enc"), obj.get("n"), obj.get("data")
    if enc not in ENCODINGS:
        raise TensorCodecError(f"unknown encoding {enc!r}")
    if not _is_count(n, max_elements):
        raise TensorCodecError(f"element count {n!r} outside [0, {max_elements}]")
    if not isinstance(data, bytes):
        raise TensorCodecError("tensor data must be bytes")
    if enc == "topk":
        k = obj.get("k")
        if not _is_count(k, n):
            raise TensorCodecError(f"top-k count {k!r} outside [0, {n}]")
        expected = 2 * k
    else:
        expected = {"fp32": 4, "fp16": 2, "int8": 1}[enc] * n
    if obj.get("zstd"):
        data = _decompress(data, expected)
    if len(data) != expected:
        raise TensorCodecError(f"{enc} payload is {len(data)} bytes, header implies {expected}")
    out = _DECODERS[enc](obj, n, data)
    if not np.all(np.isfinite(out)):
        raise TensorCodecError("tensor contains NaN or Inf")
    return out


def _is_count(x: Any, upper: int) -> TypeGuard[int]:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x <= upper


def _dec_fp32(obj: Mapping[str, Any], n: int, data: bytes) -> FloatVec:
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def _dec_fp16(obj: Mapping[str, Any], n: int, data: bytes) -> FloatVec:
    return np.frombuffer(data, dtype="<f2").astype(np.float32)


def _dec_int8(obj: Mapping[str, Any], n: int, data: bytes) -> FloatVec:
    scales_raw = obj.get("scales")
    n_blocks = -(-n // INT8_BLOCK)
    if not isinstance(scales_raw, bytes) or len(scales_raw) != 4 * n_blocks:
        raise TensorCodecError("int8 scales missing or of the wrong length")
    scales = np.frombuffer(scales_raw, dtype="<f4")
    if not np.all(np.isfinite(scales)) or np.any(scales < 0):
        raise TensorCodecError("int8 scales must be finite and non-negative")
    q = np.frombuffer(data, dtype=np.int8).astype(np.float32)
    out: FloatVec = q * np.repeat(scales, INT8_BLOCK)[:n]
    return out


def _dec_topk(obj: Mapping[str, Any], n: int, data: bytes) -> FloatVec:
    idx_raw = obj.get("idx")
    if not isinstance(idx_raw, bytes) or len(idx_raw) != 4 * int(obj["k"]):
        raise TensorCodecError("top-k indices missing or of the wrong length")
    idx = np.frombuffer(idx_raw, dtype="<u4").astype(np.int64)
    if idx.size and (idx.max() >= n or np.any(np.diff(idx) <= 0)):
        raise TensorCodecError("top-k indices must be strictly increasing and < n")
    out = np.zeros(n, dtype=np.float32)
    out[idx] = np.frombuffer(data, dtype="<f2").astype(np.float32)
    return out


_DECODERS = {"fp32": _dec_fp32, "fp16": _dec_fp16, "int8": _dec_int8, "topk": _dec_topk}


def _decompress(data: bytes, expected: int) -> bytes:
    """zstd with an output cap: a decompression bomb fails before it allocates."""
    try:
        return zstandard.ZstdDecompressor().decompress(data, max_output_size=expected)
    except zstandard.ZstdError as exc:
        raise TensorCodecError(f"zstd payload invalid or larger than declared: {exc}") from None


_DTYPES = {"float32": "<f4", "float16": "<f2", "int64": "<i8", "int32": "<i4", "uint8": "u1"}


def encode_named(tensors: Mapping[str, npt.NDArray[Any]]) -> list[list[Any]]:
    """Named tensors → ``[[name, dtype, shape, bytes], ...]`` in the given order."""
    out: list[list[Any]] = []
    for name, arr in tensors.items():
        a = np.asarray(arr)
        dtype = a.dtype.name
        if dtype not in _DTYPES:
            raise TensorCodecError(f"{name}: dtype {dtype} not supported by the codec")
        out.append([name, dtype, list(a.shape), np.ascontiguousarray(a, _DTYPES[dtype]).tobytes()])
    return out


def decode_named(obj: Any, *, max_elements: int = MAX_ELEMENTS) -> dict[str, npt.NDArray[Any]]:
    """Inverse of :func:`encode_named`, validating every dtype, shape and byte count."""
    if not isinstance(obj, list) or len(obj) > MAX_TENSORS:
        raise TensorCodecError("named tensors must be a list of at most {MAX_TENSORS} entries")
    out: dict[str, npt.NDArray[Any]] = {}
    total = 0
    for entry in obj:
        if not (isinstance(entry, list) and len(entry) == 4):
            raise TensorCodecError("each named tensor must be [name, dtype, shape, bytes]")
        name, dtype, shape, data = entry
        if not isinstance(name, str) or name in out:
            raise TensorCodecError(f"tensor name {name!r} invalid or repeated")
        if dtype not in _DTYPES:
            raise TensorCodecError(f"{name}: dtype {dtype!r} not allowed")
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_NDIM
            or not all(
                isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= max_elements
                for d in shape
            )
        ):
            raise TensorCodecError(f"{name}: shape {shape!r} invalid")
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        total += count
        if total > max_elements:
            raise TensorCodecError(f"tensors exceed {max_elements} elements in total")
        itemsize = np.dtype(_DTYPES[dtype]).itemsize
        if not isinstance(data, bytes) or len(data) != count * itemsize:
            raise TensorCodecError(
                f"{name}: {len(data) if isinstance(data, bytes) else '?'} "
                f"bytes, shape implies {count * itemsize}"
            )
        arr = np.frombuffer(data, dtype=_DTYPES[dtype]).reshape(shape).astype(dtype)
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise TensorCodecError(f"{name}: contains NaN or Inf")
        out[name] = arr
    return out
