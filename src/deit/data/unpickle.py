"""A restricted unpickler that reads plain data (the CIFAR python batches) and runs no code."""

from __future__ import annotations

import os
import pickle
from typing import Any

import numpy as np

__all__ = ["UnsafePickleError", "safe_unpickle"]


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for something other than plain data (code, objects, object arrays)."""


_NDARRAY = object()  # stands for numpy.ndarray; only _reconstruct accepts it
_SAFE_DTYPES = frozenset(
    ["b1", "i1", "u1", "i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8"]
    + [p + c for p in "<>=|" for c in ("i2", "u2", "i4", "u4", "i8", "u8", "f2", "f4", "f8")]
)


def _str(x: Any) -> Any:
    return x.decode("latin1") if isinstance(x, bytes) else x


def _safe_dtype(obj: Any, align: Any = False, copy: Any = False) -> np.dtype:
    name = _str(obj)
    if not isinstance(name, str) or name not in _SAFE_DTYPES:
        raise UnsafePickleError(f"refusing numpy dtype {obj!r}: only plain numeric types are read")
    return np.dtype(name)


def _safe_reconstruct(subtype: Any, shape: Any, typecode: Any) -> np.ndarray:
    if subtype is not _NDARRAY or tuple(shape) != (0,) or _str(typecode) != "b":
        raise UnsafePickleError("refusing an unusual numpy array reconstruction")
    return np.ndarray((0,), np.uint8)


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    if (
        not isinstance(dtype, np.dtype)
        or dtype.hasobject
        or dtype.str.lstrip("<>=|") not in {d.lstrip("<>=|") for d in _SAFE_DTYPES}
    ):
        raise UnsafePickleError(f"refusing numpy dtype {dtype!r}")
    if not isinstance(buf, (bytes, bytearray)) or _str(order) not in ("C", "F"):
        raise UnsafePickleError("refusing an unusual numpy buffer")
    shape = tuple(int(s) for s in shape)
    return np.frombuffer(bytes(buf), dtype=dtype).reshape(shape, order=_str(order)).copy()


def _safe_codecs_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    if not isinstance(obj, str) or str(encoding).lower() not in ("latin1", "latin-1"):
        raise UnsafePickleError("refusing _codecs.encode other than str -> latin1 bytes")
    return obj.encode("latin1")


_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _safe_dtype,
    ("numpy.core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _safe_reconstruct,
    ("numpy.core.numeric", "_frombuffer"): _safe_frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _safe_frombuffer,
    ("_codecs", "encode"): _safe_codecs_encode,
}


class _RestrictedUnpickler(pickle._Unpickler):  # pure-Python unpickler: its opcodes can be vetted
    """Unpickler that builds only dicts, lists, tuples, str/bytes, numbers and numeric arrays.

    ``find_class`` refuses every global except the few numpy array constructors above, each
    wrapped to accept numeric dtypes only; ``BUILD`` (``__setstate__``) is allowed only on a
    numpy dtype in its standard state and on a numeric array.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name}: the file holds more than plain data"
            ) from None

    def _load_build(self) -> None:
        state = self.stack[-1]
        inst = self.stack[-2]
        if isinstance(inst, np.dtype):
            ok = (
                isinstance(state, tuple)
                and len(state) == 8
                and state[0] == 3
                and _str(state[1]) in ("<", ">", "|", "=")
                and state[2:5] == (None, None, None)
                and state[5:8] == (-1, -1, 0)
            )
        elif isinstance(inst, np.ndarray):
            ok = (
                isinstance(state, tuple)
                and len(state) == 5
                and state[0] == 1
                and isinstance(state[1], tuple)
                and all(isinstance(s, int) and s >= 0 for s in state[1])
                and isinstance(state[2], np.dtype)
                and not state[2].hasobject
                and isinstance(state[3], bool)
                and isinstance(state[4], (bytes, str))
            )
        else:
            ok = False
        if not ok:
            raise UnsafePickleError(f"refusing to set the state of a {type(inst).__name__}")
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = _load_build


def safe_unpickle(path: str | os.PathLike) -> Any:
    """Read a pickle file holding only plain data, without running any code from it.

    Accepts what the CIFAR python batches hold — dicts, lists, bytes/str, ints and numeric
    numpy arrays (uint8 etc., any pickle protocol, Python 2 files included, read with
    ``encoding='bytes'`` like the official instructions). Anything else — a class, a function,
    an object array — is refused before it is built.

    Raises:
        UnsafePickleError: the file asks for anything beyond plain data (names what).
        pickle.UnpicklingError / EOFError: the file is not a valid pickle.
    """
    with open(path, "rb") as f:
        return _RestrictedUnpickler(f, encoding="bytes").load()
