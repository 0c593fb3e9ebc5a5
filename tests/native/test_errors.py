"""A tree that cannot be measured faithfully is an error naming the path, under both backends."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from trusthook.errors import BlobError, MeasurementError
from trusthook.measure.backend import Hasher, PythonHasher
from trusthook.measure.native import NativeHasher

BACKENDS = ["native", "python"]


@pytest.fixture(params=BACKENDS)
def hasher(request: pytest.FixtureRequest) -> Hasher:
    return NativeHasher(threads=2) if request.param == "native" else PythonHasher()


def _keep_doing(action: object, stop: threading.Event) -> threading.Thread:
    def run() -> None:
        while not stop.is_set():
            action()  # type: ignore[operator]

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_file_changing_while_hashed(hasher: Hasher, tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    big = root / "big"
    big.write_bytes(os.urandom(1 << 20) * 192)  # long enough to be caught mid-read
    stop = threading.Event()
    thread = _keep_doing(lambda: os.utime(big, ns=(time.time_ns(), time.time_ns())), stop)
    try:
        with pytest.raises(MeasurementError, match="^/big changed while it was being hashed$"):
            for _ in range(5):
                hasher.measure_rootfs(root)
    finally:
        stop.set()
        thread.join()


def test_files_vanishing_mid_walk(hasher: Hasher, tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    (root / "d").mkdir(parents=True)
    names = [f"f{i:05d}" for i in range(20000)]
    for name in names:
        (root / "d" / name).write_bytes(b"x")
    victims = iter(reversed(names))
    stop = threading.Event()

    def delete_one() -> None:
        name = next(victims, None)
        if name is None:
            stop.set()
        else:
            (root / "d" / name).unlink()

    thread = _keep_doing(delete_one, stop)
    try:
        with pytest.raises(MeasurementError, match=r"^/d/f\d{5} vanished while measuring$"):
            for _ in range(20):
                hasher.measure_rootfs(root)
    finally:
        stop.set()
        thread.join()


@pytest.fixture
def unreadable_file(tmp_path: Path) -> Iterator[Path]:
    """A rootfs holding a file that cannot be opened for reading, even by root: a write-only
    sysfs attribute bind-mounted over a regular file."""
    candidates = [
        p for p in Path("/sys/bus").glob("*/*") if p.is_file() and p.stat().st_mode & 0o777 == 0o200
    ]
    assert candidates, "no write-only sysfs attribute on this machine"
    root = tmp_path / "rootfs"
    root.mkdir()
    (root / "ok").write_bytes(b"fine")
    target = root / "secret"
    target.write_bytes(b"")
    subprocess.run(["mount", "--bind", str(candidates[0]), str(target)], check=True)
    yield root
    subprocess.run(["umount", str(target)], check=True)


def test_unreadable_file_is_named(hasher: Hasher, unreadable_file: Path) -> None:
    with pytest.raises(MeasurementError, match="/secret.*Permission denied"):
        hasher.measure_rootfs(unreadable_file)


def test_rootfs_symlink_and_missing_rootfs(hasher: Hasher, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to("/etc")
    with pytest.raises(MeasurementError, match="is a symlink; refusing to follow it"):
        hasher.measure_rootfs(tmp_path / "link")
    with pytest.raises(MeasurementError, match=f"cannot open rootfs {tmp_path}/missing"):
        hasher.measure_rootfs(tmp_path / "missing")


def test_unreadable_blob_is_named(hasher: Hasher, tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(b"a")
    with pytest.raises(BlobError, match=f"cannot read blob {tmp_path}/missing"):
        hasher.blob_digests([tmp_path / "a", tmp_path / "missing"])


MISSING_NATIVE = """
import sys
sys.modules["trusthook._native"] = None  # what an install without the compiled module looks like
from trusthook.measure.backend import select_hasher
print(select_hasher("auto").backend)
select_hasher("native")
"""


def test_native_required_but_missing_fails_loudly() -> None:
    result = subprocess.run(
        [sys.executable, "-c", MISSING_NATIVE], capture_output=True, text=True, check=False
    )
    assert result.stdout == "python\n"
    assert result.returncode == 1
    assert (
        "NativeUnavailableError: hasher 'native' is required ([agent] hasher or TRUSTHOOK_HASHER),"
        " but trusthook._native is not built" in result.stderr
    )


STALE_BUILD = """
import sys, types
# A compiled module from another trusthook version. Building a second real variant inside a
# test is not practical, so this one fault is simulated with a stand-in module object.
sys.modules["trusthook._native"] = types.SimpleNamespace(
    ffi=None, lib=types.SimpleNamespace(th_version=lambda: 99)
)
from trusthook.measure.backend import select_hasher
select_hasher("native")
"""


def test_native_module_of_another_version_is_refused() -> None:
    result = subprocess.run(
        [sys.executable, "-c", STALE_BUILD], capture_output=True, text=True, check=False
    )
    assert result.returncode == 1
    assert "trusthook._native has version 99, expected 2" in result.stderr


def test_measure_cli_reports_the_backend(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"x")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "trusthook.cli",
            "measure",
            str(tmp_path),
            "--json",
            "--threads",
            "3",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "TRUSTHOOK_HASHER": "native"},
    )
    assert '"hasher": "native"' in out.stdout
    assert NativeHasher().measure_rootfs(tmp_path).digest.hex() in out.stdout


def test_native_arguments_are_checked_before_c_sees_them(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="threads must be 1..1024"):
        NativeHasher(threads=0)
    with pytest.raises(MeasurementError, match="contains a NUL byte"):
        NativeHasher().measure_rootfs("bad\0path")
    with pytest.raises(BlobError, match="contains a NUL byte"):
        NativeHasher().blob_digests([tmp_path, "bad\0path"])
    with pytest.raises(ValueError, match="fd must be >= 0"):
        NativeHasher().blob_digest_fd(-1)
