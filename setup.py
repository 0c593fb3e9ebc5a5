"""Only what pyproject.toml cannot say: the cffi extension module (native/build_native.py) and
the compiled per-start program ``trusthook-hook`` (native/trusthook_hook.c), installed beside
the ``trusthook`` command."""

from __future__ import annotations

import os
import shlex
import subprocess
from distutils.command.build_scripts import build_scripts
from pathlib import Path

from setuptools import setup

HOOK_SOURCE = "native/trusthook_hook.c"
HARDENING = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-D_FORTIFY_SOURCE=2"]
HARDENING += ["-fstack-protector-strong", "-fPIE", "-pie", "-Wl,-z,relro,-z,now"]


class BuildScripts(build_scripts):
    """The one script is a C program: compile it (with ``$CC`` and ``$CFLAGS``) into the
    scripts build directory instead of copying it."""

    def run(self) -> None:
        self.mkpath(self.build_dir)
        program = Path(self.build_dir) / "trusthook-hook"
        cc = shlex.split(os.environ.get("CC", "cc"))
        extra = shlex.split(os.environ.get("CFLAGS", ""))
        subprocess.run([*cc, *HARDENING, *extra, "-o", str(program), HOOK_SOURCE], check=True)


setup(
    cffi_modules=["native/build_native.py:ffibuilder"],
    scripts=[HOOK_SOURCE],  # built by BuildScripts as trusthook-hook
    cmdclass={"build_scripts": BuildScripts},
)
