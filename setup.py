"""Only what pyproject.toml cannot say: the cffi extension module (native/build_native.py) and
the compiled per-start programs ``trusthook-hook`` (native/trusthook_hook.c) and
``trusthook-runtime`` (native/trusthook_runtime.c), each with the socket client they share
(native/trusthook_client.c), installed beside the ``trusthook`` command."""

from __future__ import annotations

import os
import shlex
import subprocess
from distutils.command.build_scripts import build_scripts
from pathlib import Path

from setuptools import setup

CLIENT_SOURCE = "native/trusthook_client.c"
PROGRAMS = {  # name: its own source, compiled with CLIENT_SOURCE
    "trusthook-hook": "native/trusthook_hook.c",
    "trusthook-runtime": "native/trusthook_runtime.c",
}
HARDENING = ["-O2", "-std=gnu11", "-Wall", "-Wextra", "-Werror", "-D_FORTIFY_SOURCE=2"]
HARDENING += ["-fstack-protector-strong", "-fPIE", "-pie", "-Wl,-z,relro,-z,now"]


class BuildScripts(build_scripts):
    """The scripts are C programs: compile each (with ``$CC`` and ``$CFLAGS``) into the
    scripts build directory instead of copying it."""

    def run(self) -> None:
        self.mkpath(self.build_dir)
        cc = shlex.split(os.environ.get("CC", "cc"))
        extra = shlex.split(os.environ.get("CFLAGS", ""))
        for name, source in PROGRAMS.items():
            program = Path(self.build_dir) / name
            command = [*cc, *HARDENING, *extra, "-o", str(program), source, CLIENT_SOURCE]
            subprocess.run(command, check=True)


setup(
    cffi_modules=["native/build_native.py:ffibuilder"],
    scripts=list(PROGRAMS.values()),  # built by BuildScripts
    cmdclass={"build_scripts": BuildScripts},
)
