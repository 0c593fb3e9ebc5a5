"""The pure-Python rootfs walker and the canonical encoding."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from trusthook.errors import MeasurementError
from trusthook.measure.encoding import MAGIC, Entry, Kind, encode_entry, xattr_is_measured
from trusthook.measure.walk import measure_rootfs, open_rootfs, read_entries


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    (root / "bin" / "tool").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "bin" / "tool").chmod(0o755)
    (root / "etc" / "conf").write_bytes(b"a=1\n")
    (root / "bin" / "alias").symlink_to("tool")
    return root


def _digest(root: Path) -> bytes:
    return measure_rootfs(root).digest


def _entries(root: Path) -> list[Entry]:
    fd = open_rootfs(root)
    try:
        return read_entries(fd)[0]
    finally:
        os.close(fd)


def test_same_tree_same_digest_and_mtime_is_not_measured(tree: Path) -> None:
    before = _digest(tree)
    os.utime(tree / "etc" / "conf", (1, 1))
    assert _digest(tree) == before


def test_one_byte_changes_the_digest(tree: Path) -> None:
    before = _digest(tree)
    (tree / "etc" / "conf").write_bytes(b"a=2\n")
    assert _digest(tree) != before


def test_one_mode_bit_changes_the_digest(tree: Path) -> None:
    before = _digest(tree)
    (tree / "bin" / "tool").chmod(0o4755)
    assert _digest(tree) != before


def test_owner_changes_the_digest(tree: Path) -> None:
    before = _digest(tree)
    os.chown(tree / "etc" / "conf", 1000, 1000)
    assert _digest(tree) != before


def test_one_xattr_changes_the_digest(tree: Path) -> None:
    before = _digest(tree)
    os.setxattr(tree / "etc" / "conf", "user.trusthook", b"1")
    assert _digest(tree) != before
    os.setxattr(tree / "etc" / "conf", "user.trusthook", b"2")
    assert _digest(tree) != before


def test_file_capability_is_measured(tree: Path) -> None:
    before = _digest(tree)
    # security.capability v2 for cap_net_raw+ep
    cap = bytes.fromhex("0100000200200000000000000000000000000000")
    os.setxattr(tree / "bin" / "tool", "security.capability", cap)
    assert _digest(tree) != before


def test_xattr_namespaces() -> None:
    assert xattr_is_measured(b"user.x")
    assert xattr_is_measured(b"security.capability")
    assert xattr_is_measured(b"system.posix_acl_access")
    assert xattr_is_measured(b"trusted.x")
    assert not xattr_is_measured(b"trusted.overlay.opaque")
    assert not xattr_is_measured(b"security.selinux")
    assert not xattr_is_measured(b"security.ima")


def test_symlink_target_is_recorded_not_followed(tree: Path) -> None:
    (tree / "hostetc").symlink_to("/etc")
    entries = {e.path: e for e in _entries(tree)}
    assert entries[b"hostetc"].kind is Kind.SYMLINK
    assert entries[b"hostetc"].target == b"/etc"
    assert not any(p.startswith(b"hostetc/") for p in entries)
    before = _digest(tree)
    (tree / "hostetc").unlink()
    (tree / "hostetc").symlink_to("/etc/")
    assert _digest(tree) != before


def test_hard_links_point_at_the_first_path(tree: Path) -> None:
    os.link(tree / "bin" / "tool", tree / "bin" / "a-link")
    entries = {e.path: e for e in _entries(tree)}
    assert entries[b"bin/a-link"].kind is Kind.REGULAR
    assert entries[b"bin/tool"].kind is Kind.HARDLINK
    assert entries[b"bin/tool"].target == b"bin/a-link"
    linked = _digest(tree)
    (tree / "bin" / "a-link").unlink()
    (tree / "bin" / "a-link").write_bytes((tree / "bin" / "tool").read_bytes())
    (tree / "bin" / "a-link").chmod(0o755)
    assert _digest(tree) != linked


def test_non_utf8_names_and_sort_by_raw_bytes(tree: Path) -> None:
    raw = os.fsencode(str(tree)) + b"/caf\xe9"
    with open(raw, "wb") as f:
        f.write(b"x")
    (tree / "a-b").write_bytes(b"")
    (tree / "a").mkdir()
    (tree / "a" / "b").write_bytes(b"")
    paths = [e.path for e in _entries(tree)]
    assert b"caf\xe9" in paths
    assert paths == sorted(paths)
    assert paths.index(b"a-b") < paths.index(b"a/b")  # '-' (0x2d) sorts before '/' (0x2f)
    assert paths[0] == b""


def test_special_files(tree: Path) -> None:
    os.mkfifo(tree / "fifo")
    os.mknod(tree / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    entries = {e.path: e for e in _entries(tree)}
    assert entries[b"fifo"].kind is Kind.FIFO
    assert (entries[b"null"].kind, entries[b"null"].rdev_major, entries[b"null"].rdev_minor) == (
        Kind.CHAR_DEVICE,
        1,
        3,
    )
    before = _digest(tree)
    os.unlink(tree / "null")
    os.mknod(tree / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 5))
    assert _digest(tree) != before


def test_rootfs_that_is_a_symlink_is_refused(tmp_path: Path) -> None:
    (tmp_path / "rootfs").symlink_to("/etc")
    with pytest.raises(MeasurementError, match="is a symlink; refusing to follow it"):
        measure_rootfs(tmp_path / "rootfs")


def test_missing_rootfs_is_named(tmp_path: Path) -> None:
    with pytest.raises(MeasurementError, match=f"cannot open rootfs {tmp_path}/nope"):
        measure_rootfs(tmp_path / "nope")


def test_fifo_is_recorded_and_never_opened(tree: Path) -> None:
    (tree / "etc" / "conf").unlink()
    os.mkfifo(tree / "etc" / "conf")  # opening it for reading would block forever
    entries = {e.path: e for e in _entries(tree)}
    assert entries[b"etc/conf"].kind is Kind.FIFO
    assert len(entries) == 6


def test_encoding_of_one_regular_file() -> None:
    entry = Entry(
        path=b"a", kind=Kind.REGULAR, mode=0o644, uid=0, gid=0, size=0, content_sha256=bytes(32)
    )
    assert encode_entry(entry) == (
        b"\x00\x00\x00\x01a"
        + b"f"
        + bytes.fromhex("000001a4 00000000 00000000 00000000")
        + bytes(8)
        + bytes(32)
    )
    assert MAGIC == b"trusthook-rootfs-v1\n"
