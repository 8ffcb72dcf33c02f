"""Build glue: compiles the C core (csrc/) into cxlsim._cxlsim_core with cffi.

All metadata lives in pyproject.toml; this file only exists because cffi_modules is a setup()
argument.
"""
from setuptools import setup

setup(cffi_modules=["csrc/build_core.py:ffibuilder"])
