"""cffi build script for the C core: `setup.py` names it in cffi_modules.

The cdef is read from cxlsim_api.h, which holds only declarations cffi understands, so the
compiled module and the Python view of it come from one header.
"""
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCES = ["errors.c", "keytab.c", "fabric.c", "coherence.c", "blockindex.c", "mailbox.c"]

ffibuilder = FFI()
ffibuilder.cdef((HERE / "cxlsim_api.h").read_text())
ffibuilder.set_source(
    "cxlsim._cxlsim_core",
    '#include "cxlsim.h"',
    sources=[str((HERE / s).relative_to(HERE.parent)) for s in SOURCES],
    include_dirs=[str(HERE.relative_to(HERE.parent))],
    # no -ffast-math: results must be bit-for-bit reproducible
    extra_compile_args=["-O3", "-std=gnu11", "-Wall", "-Wextra", "-fno-fast-math"],
    libraries=["m"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
