"""cffi build script (API mode, out-of-line) for trusthook's native hasher.

``pip install`` builds ``trusthook._native`` through ``cffi_modules`` in setup.py. Run directly
(``python native/build_native.py --sanitize DIR``) it builds a copy instrumented with
AddressSanitizer and UndefinedBehaviorSanitizer into DIR, for the test command.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from pathlib import Path

from cffi import FFI

HERE = Path(__file__).resolve().parent
SOURCE = "native/trusthook_hash.c"
CFLAGS = ["-O2", "-std=gnu11", "-pthread", "-Wall", "-Wextra", "-Werror"]
SANITIZE = [
    "-fsanitize=address,undefined",
    "-fno-omit-frame-pointer",
    "-fno-sanitize-recover=all",
    "-g",
]


def make_builder(extra_cflags: Sequence[str] = (), source: str = SOURCE) -> FFI:
    header = (HERE / "trusthook_hash.h").read_text()
    ffi = FFI()
    # The header is the cdef: strip comments, which cdef ignores anyway, for clearer errors.
    ffi.cdef(re.sub(r"/\*.*?\*/", "", header, flags=re.S))
    ffi.set_source(
        "trusthook._native",
        '#include <stddef.h>\n#include "trusthook_hash.h"\n',
        sources=[source],
        include_dirs=[str(HERE)],
        libraries=["crypto"],
        extra_compile_args=[*CFLAGS, *extra_cflags],
        extra_link_args=["-pthread", *extra_cflags],
    )
    return ffi


ffibuilder = make_builder()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sanitize", metavar="DIR", required=True, type=Path)
    args = parser.parse_args()
    builder = make_builder(SANITIZE, source=str(HERE / "trusthook_hash.c"))
    print(builder.compile(tmpdir=str(args.sanitize), verbose=False))


if __name__ == "__main__":
    main()
