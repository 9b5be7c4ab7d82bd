"""msgpack for what partitions of one simulation send each other: datagrams, measurements, costs.

The ``processes`` engine's workers are this program's own child processes, but what crosses
between them includes datagram bytes that simulated (possibly Byzantine) peers composed, so
it travels as data, never as pickle. The encoding keeps every Python type a metrics record
depends on, because the partitioned run must write the same bytes as one process:

- tuples stay tuples (datagram records, addresses), as extension type 1;
- numpy arrays and numpy scalars keep dtype and shape (extension type 2: dtype, shape, raw
  little-endian bytes); a float32 accuracy must not come back as a Python float;
- dicts keep integer keys (node numbers); ``Counter`` arrives as a plain dict, which is all
  :func:`~flava_p2p.sim.runner.combine_measures` needs of it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import msgpack
import numpy as np

_TUPLE = 1
_NUMPY = 2
_MAX_DIMS = 8


class CodecError(ValueError):
    """A frame between partitions could not be decoded (a worker bug or a broken pipe)."""


def _default(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return msgpack.ExtType(_TUPLE, _pack(list(obj)))
    if isinstance(obj, np.ndarray | np.generic):
        arr = np.asarray(obj)
        if arr.dtype.hasobject:
            raise TypeError("object arrays do not cross partitions")
        le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        body = [arr.dtype.str.lstrip("<>=|"), list(arr.shape), isinstance(obj, np.generic)]
        return msgpack.ExtType(_NUMPY, _pack([*body, np.ascontiguousarray(le).tobytes()]))
    if isinstance(obj, Counter):
        return dict(obj)
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    if isinstance(obj, float):  # a float subclass other than numpy's (already handled)
        return float(obj)
    if isinstance(obj, int):
        return int(obj)
    raise TypeError(f"{type(obj).__name__} cannot cross a partition boundary")


def _ext(code: int, data: bytes) -> Any:
    if code == _TUPLE:
        return tuple(_unpack(data))
    if code == _NUMPY:
        fields = _unpack(data)
        if not (isinstance(fields, list) and len(fields) == 4):
            raise CodecError("numpy field list malformed")
        dtype_s, shape, scalar, raw = fields
        if not isinstance(shape, tuple | list) or len(shape) > _MAX_DIMS:
            raise CodecError("numpy shape malformed")
        dtype = np.dtype("<" + dtype_s) if dtype_s[0] in "fiuc" else np.dtype(dtype_s)
        if dtype.hasobject:
            raise CodecError("object dtype refused")
        n = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if n * dtype.itemsize != len(raw):
            raise CodecError(f"numpy payload is {len(raw)} bytes, shape {shape} needs more/less")
        arr = np.frombuffer(raw, dtype=dtype).astype(dtype.newbyteorder("="))
        arr = arr.reshape(tuple(shape))
        return arr[()] if scalar else arr
    raise CodecError(f"unknown extension type {code}")


def _pack(obj: Any) -> bytes:
    out: bytes = msgpack.packb(obj, default=_default, strict_types=True, use_bin_type=True)
    return out


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext, raw=False, strict_map_key=False)


def encode(obj: Any) -> bytes:
    """``obj`` as one msgpack frame (tuples, numpy values and integer keys kept)."""
    return _pack(obj)


def decode(data: bytes) -> Any:
    """The value :func:`encode` framed; :class:`CodecError` if the frame is not one."""
    try:
        return _unpack(data)
    except CodecError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CodecError(f"undecodable partition frame: {exc}") from exc
