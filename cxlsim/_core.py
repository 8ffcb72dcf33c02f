"""Thin layer over the compiled C core: status codes become exceptions, handles are freed by the
garbage collector (ffi.gc), numpy arrays are passed without copies.

Nothing here decides anything; the Pythonic objects live in fabric.py, coherence.py and kv.py.
"""
from __future__ import annotations

import numpy as np

from . import errors

try:
    from ._cxlsim_core import ffi, lib
except ImportError as exc:  # pragma: no cover - only without a build
    raise ImportError(
        "cxlsim's C core is not built: install the package with `pip install -e .` "
        "(or run `make test`), which compiles csrc/ with cffi"
    ) from exc

_STATUS_TO_ERROR = {
    lib.CXL_EINVAL: errors.InvalidArgument,
    lib.CXL_ENOMEM: errors.CoreError,
    lib.CXL_ENOTFOUND: errors.BlockNotFound,
    lib.CXL_EFULL: errors.TierFull,
    lib.CXL_EPINNED: errors.BlockPinned,
    lib.CXL_EEXIST: errors.BlockExists,
}


def check(status: int) -> None:
    """Raise the exception matching a core status (no-op for CXL_OK)."""
    if status:
        message = ffi.string(lib.cxl_last_error()).decode("utf-8", "replace")
        raise _STATUS_TO_ERROR.get(status, errors.CoreError)(message, status)


def new_handle(ctor, destructor, *args):
    """Call a `int ctor(..., T **out)` constructor and return a gc-managed T*."""
    out = ffi.new(f"{ffi.typeof(ctor).args[-1].item.cname} *")
    check(ctor(*args, out))
    return ffi.gc(out[0], destructor)


def ptr(array: np.ndarray, ctype: str):
    """A C pointer into a contiguous numpy array (the caller keeps the array alive)."""
    if not array.flags["C_CONTIGUOUS"]:
        raise ValueError("array must be C-contiguous")
    return ffi.from_buffer(f"{ctype}[]", array)


def as_array(values, dtype) -> np.ndarray:
    """Contiguous array of dtype, copying only when needed."""
    return np.ascontiguousarray(values, dtype=dtype)
