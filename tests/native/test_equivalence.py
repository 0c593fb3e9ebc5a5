"""The native hasher gives bit-identical results to the Python reference on random trees."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trusthook.measure.backend import PythonHasher, select_hasher
from trusthook.measure.native import NativeHasher

NAMES = st.one_of(
    st.text(alphabet="abcxyz-_.", min_size=1, max_size=6).filter(lambda s: s not in (".", "..")),
    st.binary(min_size=1, max_size=4).filter(
        lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")
    ),
)
MODES = st.sampled_from([0o644, 0o600, 0o755, 0o4755, 0o2755, 0o1777, 0o000, 0o444])
XATTRS = st.dictionaries(
    st.sampled_from(["user.a", "user.b", "trusted.t", "trusted.overlay.opaque", "user.overlay.x"]),
    st.binary(max_size=8),
    max_size=2,
)

FILE = st.tuples(
    st.just("file"),
    st.one_of(
        st.just(b""), st.binary(max_size=300), st.integers(70_000, 200_000).map(lambda n: b"z" * n)
    ),
    MODES,
    XATTRS,
)
SPARSE = st.tuples(st.just("sparse"), st.integers(1, 3 << 20), MODES, XATTRS)
SYMLINK = st.tuples(
    st.just("symlink"), st.sampled_from([b"target", b"/etc/passwd", b"../../x", b"dangling/\xff"])
)
SPECIAL = st.tuples(st.just("special"), st.sampled_from(["fifo", "chr", "blk", "sock"]))
LEAF = st.one_of(FILE, SPARSE, SYMLINK, SPECIAL, st.tuples(st.just("hardlink")))
TREE = st.recursive(
    st.dictionaries(NAMES, LEAF, max_size=5),
    lambda children: st.dictionaries(NAMES, st.one_of(LEAF, children), max_size=4),
    max_leaves=25,
)


def _name(n: str | bytes) -> bytes:
    return n if isinstance(n, bytes) else n.encode()


def _leaf(path: bytes, node: tuple[object, ...], files: list[bytes]) -> None:
    kind = node[0]
    if kind in ("file", "sparse"):
        with open(path, "wb") as f:
            if kind == "file":
                f.write(node[1])  # type: ignore[arg-type]
            else:
                size = int(node[1])  # type: ignore[call-overload]
                f.truncate(size)
                f.seek(size // 2)
                f.write(b"data in the middle")
        for key, value in node[3].items():  # type: ignore[attr-defined]
            os.setxattr(path, key, value)
        os.chmod(path, node[2])  # type: ignore[arg-type]
        files.append(path)
    elif kind == "symlink":
        os.symlink(node[1], path)  # type: ignore[arg-type]
    elif kind == "special":
        modes = {
            "fifo": stat.S_IFIFO,
            "sock": stat.S_IFSOCK,
            "chr": stat.S_IFCHR,
            "blk": stat.S_IFBLK,
        }
        os.mknod(path, 0o640 | modes[str(node[1])], os.makedev(8, 1))
    elif kind == "hardlink" and files:
        os.link(files[len(path) % len(files)], path)


def _build(root: bytes, spec: dict[str | bytes, object], files: list[bytes]) -> None:
    for raw_name, node in spec.items():
        path = root + b"/" + _name(raw_name)
        if os.path.lexists(path):
            continue
        if isinstance(node, dict):
            os.mkdir(path)
            _build(path, node, files)
        else:
            assert isinstance(node, tuple)
            _leaf(path, node, files)


@pytest.fixture(scope="module")
def native() -> NativeHasher:
    return NativeHasher(threads=2)


@pytest.fixture
def scratch() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="th-equiv-"))
    yield d
    shutil.rmtree(d)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(spec=TREE, root_mode=MODES)
def test_random_trees_digest_identically(
    native: NativeHasher, scratch: Path, spec: dict[str | bytes, object], root_mode: int
) -> None:
    root = scratch / "t"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
    _build(os.fsencode(root), spec, [])
    os.chmod(root, root_mode)
    assert native.measure_rootfs(root) == PythonHasher().measure_rootfs(root)
    assert NativeHasher(threads=7).measure_rootfs(root) == native.measure_rootfs(root)


def test_deep_nesting(native: NativeHasher, scratch: Path) -> None:
    os.mkdir(scratch / "deep")
    fd = os.open(scratch / "deep", os.O_RDONLY | os.O_DIRECTORY)
    for i in range(300):  # 6300 bytes of path: more than PATH_MAX allows in one string
        os.mkdir("d" * 20, dir_fd=fd)
        child = os.open("d" * 20, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = child
        leaf = os.open(f"f{i}", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"%d" % i)
        os.close(leaf)
    os.close(fd)
    assert native.measure_rootfs(scratch / "deep") == PythonHasher().measure_rootfs(
        scratch / "deep"
    )


def test_blob_digests_match_hashlib(native: NativeHasher, scratch: Path) -> None:
    blobs = []
    for i, size in enumerate([0, 1, 65535, 65536, 65537, 3 << 20]):
        p = scratch / f"blob{i}"
        p.write_bytes(os.urandom(size))
        blobs.append(p)
    expected = [hashlib.sha256(p.read_bytes()).digest() for p in blobs]
    assert native.blob_digests(blobs) == expected
    assert PythonHasher().blob_digests(blobs) == expected
    with open(blobs[-1], "rb") as f:
        assert native.blob_digest_fd(f.fileno()) == expected[-1]


def test_backend_selection() -> None:
    assert select_hasher("native").backend == "native"
    assert select_hasher("auto").backend == "native"
    assert select_hasher("python").backend == "python"


def test_xattrs_on_objects_that_are_never_opened(native: NativeHasher, scratch: Path) -> None:
    root = scratch / "special"
    root.mkdir()
    (root / "link").symlink_to("/nowhere")
    os.mkfifo(root / "fifo")
    before = native.measure_rootfs(root)
    os.setxattr(root / "link", "trusted.mark", b"1", follow_symlinks=False)
    os.setxattr(root / "fifo", "trusted.mark", b"2", follow_symlinks=False)
    after = native.measure_rootfs(root)
    assert after != before
    assert after == PythonHasher().measure_rootfs(root)


def test_xattr_list_longer_than_the_first_buffer(native: NativeHasher, scratch: Path) -> None:
    root = scratch / "many"
    root.mkdir()
    (root / "f").write_bytes(b"x")
    before = native.measure_rootfs(root)
    for i in range(40):  # 40 names of ~30 bytes: past the C side's 256-byte first try
        os.setxattr(root / "f", f"user.trusthook-attribute-{i:03d}", b"v" * i)
    after = native.measure_rootfs(root)
    assert after != before
    assert after == PythonHasher().measure_rootfs(root)
