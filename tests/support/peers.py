"""A unix-socket listener run by uid 65534 (nobody), for the tests that a compiled client
(trusthook-hook, trusthook-runtime) refuses a peer that is not root: SO_PEERCRED reports who
called listen(), so the child binds as root (in the test's root-only directory) and listens
after dropping to nobody. Stopped by its PID when the block ends."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

NOBODY = 65534
_LISTENER = (
    "import os, socket, sys\n"
    "s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)\n"
    "s.bind(sys.argv[1])\n"
    f"os.setgid({NOBODY}); os.setuid({NOBODY}); s.listen(1)\n"
    "print('ready', flush=True)\n"
    "while True: s.accept()[0].close()\n"
)


@contextmanager
def nobody_listening(path: Path) -> Iterator[None]:
    """A listener on ``path`` whose peer credentials are uid 65534, until the block ends."""
    listener = subprocess.Popen(
        [sys.executable, "-c", _LISTENER, str(path)], stdout=subprocess.PIPE
    )
    try:
        assert listener.stdout is not None and listener.stdout.readline() == b"ready\n"
        yield
    finally:
        listener.kill()
        listener.wait()
