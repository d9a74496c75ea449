"""setuptools entry: the cffi module and the libmsquic build live in build_msquic.py."""

import os
import sys

from setuptools import setup

# PEP 517 backends do not promise the project root on sys.path.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from build_msquic import BuildExtWithMsquic  # noqa: E402

setup(
    cffi_modules=["build_msquic.py:ffibuilder"],
    cmdclass={"build_ext": BuildExtWithMsquic},
    # cffi builds the module against the limited API (_msquic.abi3.so): one wheel for 3.10+.
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
