"""Build hook: compiles native/ through cffi (API mode); everything else is in pyproject.toml."""

from setuptools import setup

setup(cffi_modules=["native/build_bitmap.py:ffibuilder"])
