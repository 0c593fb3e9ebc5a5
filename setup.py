"""Only what pyproject.toml cannot say: the cffi extension module (native/build_native.py)."""

from setuptools import setup

setup(cffi_modules=["native/build_native.py:ffibuilder"])
