"""The pieces under the extractor: removing trees at any depth, the directory cursor, and what
a layer remembers (the path set, the directory records).

Every symlink made here points into the test's own ``outside`` directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trusthook.errors import ImageError, UnsafeLayerError
from trusthook.image.layerstate import DirRecords, Meta, PathSet
from trusthook.image.resolve import DirCursor
from trusthook.image.rootfs import empty_directory
from trusthook.image.tree import listing, prune

DEPTH = 1500


@pytest.fixture
def outside(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "sentinel").write_bytes(b"untouched")
    (path / "sub").mkdir()
    yield path
    assert sorted(p.name for p in path.iterdir()) == ["sentinel", "sub"]
    assert (path / "sentinel").read_bytes() == b"untouched"


@pytest.fixture
def top(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "top"
    path.mkdir()
    yield path
    empty_directory(path)  # pytest's own clean-up recurses: never leave a deep tree to it


def deep(top: Path, outside: Path, depth: int = DEPTH) -> Path:
    """A chain ``depth`` directories deep with a file, a symlink to ``outside`` and a FIFO at
    every level; the deepest directory."""
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
            with open(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
                f.write(b"x")
            os.symlink(str(outside), "out", dir_fd=fd)
            os.mkfifo("fifo", dir_fd=fd)
    finally:
        os.close(fd)
    return top.joinpath(*["d"] * depth)


def opened(path: Path) -> int:
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


# --- removing trees -------------------------------------------------------------------------


def test_empty_directory_removes_a_deep_tree_without_following_symlinks(
    top: Path, outside: Path
) -> None:
    deep(top, outside)
    (top / "link-to-outside").symlink_to(outside)
    empty_directory(top)
    assert list(top.iterdir()) == []


def test_empty_directory_names_the_root_it_could_not_empty(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=rf"^cannot empty {tmp_path}/missing: No such file"):
        empty_directory(tmp_path / "missing")


def test_prune_spares_what_it_is_told_at_any_depth(top: Path, outside: Path) -> None:
    deep(top, outside, depth=1200)
    kept_dir = "/".join(["d"] * 1200)
    spared = {"/".join(["d"] * k) for k in range(1, 1201)} | {f"{kept_dir}/f"}
    fd = opened(top)
    try:
        prune(fd, listing(fd), "", spared.__contains__)
    finally:
        os.close(fd)
    deepest = top.joinpath(*["d"] * 1200)
    assert sorted(p.name for p in deepest.iterdir()) == ["f"]
    assert sorted(p.name for p in deepest.parent.iterdir()) == ["d"]


def test_prune_notices_a_directory_moved_under_it(top: Path, tmp_path: Path) -> None:
    (top / "a" / "b" / "c").mkdir(parents=True)
    (top / "a" / "b" / "c" / "f").write_bytes(b"")

    def spare(key: str) -> bool:
        if key == "a/b/c/f":  # while the walk is inside a/b/c, a/b goes elsewhere
            (top / "a" / "b").rename(tmp_path / "moved")
        return key != "a/b/c/f"

    fd = opened(top)
    try:
        with pytest.raises(ImageError, match=r"^'a/b' was moved while its tree was being removed$"):
            prune(fd, listing(fd), "", spare)
    finally:
        os.close(fd)
    empty_directory(tmp_path / "moved")


# --- the cursor -----------------------------------------------------------------------------


def test_cursor_refuses_symlinks_and_files_on_the_way(top: Path, outside: Path) -> None:
    (top / "a").mkdir()
    (top / "a" / "l").symlink_to(outside)
    (top / "a" / "file").write_bytes(b"")
    fd = opened(top)
    cursor = DirCursor(fd)
    try:
        with pytest.raises(UnsafeLayerError, match=r"^e: parent 'a/l' is a symlink$"):
            cursor.at(("a", "l", "x"), "e", create=True)
        with pytest.raises(ImageError, match=r"^e: parent 'a/file' is not a directory$"):
            cursor.at(("a", "file"), "e", create=False)
        assert cursor.at(("a", "missing", "x"), "e", create=False) is None
        made = cursor.at(("a", "new", "x"), "e", create=True)
        assert os.fstat(made).st_ino == (top / "a" / "new" / "x").stat().st_ino
        assert oct((top / "a" / "new").stat().st_mode & 0o777) == oct(0o755)
    finally:
        cursor.close()
        os.close(fd)


def test_cursor_climbs_and_notices_a_directory_moved_away(top: Path, tmp_path: Path) -> None:
    (top / "a" / "b" / "c" / "d").mkdir(parents=True)
    (top / "a" / "b" / "y").mkdir()
    fd = opened(top)
    cursor = DirCursor(fd)
    try:
        deepest = cursor.at(("a", "b", "c", "d"), "e", create=False)
        assert deepest is not None
        sibling = cursor.at(("a", "b", "y"), "e", create=False)  # two up, one down
        assert sibling is not None
        assert os.fstat(sibling).st_ino == (top / "a" / "b" / "y").stat().st_ino
        cursor.at(("a", "b", "c", "d"), "e", create=False)
        (tmp_path / "x").mkdir()
        (top / "a" / "b" / "c").rename(tmp_path / "x" / "c")
        with pytest.raises(ImageError, match=r"^e: directory 'a/b/c' was moved during unpacking"):
            cursor.at(("a", "b", "y"), "e", create=False)
    finally:
        cursor.close()
        os.close(fd)


# --- what a layer remembers -----------------------------------------------------------------


@settings(max_examples=50)
@given(st.sets(st.text(max_size=12), max_size=3000), st.sets(st.text(max_size=12), max_size=50))
def test_path_set_is_a_set(added: set[str], others: set[str]) -> None:
    paths = PathSet()
    for key in added:
        paths.add(key)
        paths.add(key)
    assert all(key in paths for key in added)
    assert not any(key in paths for key in others - added)


def test_directory_records_come_deepest_first_and_removals_void_what_they_held() -> None:
    records = DirRecords()

    def meta(mode: int) -> Meta:
        return Meta(mode=mode, uid=0, gid=0, mtime_ns=-5, xattrs={})

    records.add(("a",), meta(0o700))
    records.add(("a", "b"), meta(0o701))
    records.add(("a", "bc"), meta(0o702))
    records.removed(("a", "b"))  # a/b went with its tree
    records.add(("a", "b", "c"), meta(0o703))  # made again afterwards: it counts
    records.add(("a",), Meta(mode=0o704, uid=1, gid=2, mtime_ns=3, xattrs={"user.k": b"v"}))
    assert [(path, m.mode) for path, m in records.deepest_first()] == [
        (("a", "b", "c"), 0o703),
        (("a", "bc"), 0o702),
        (("a",), 0o700),
        (("a",), 0o704),
    ]
    last = list(records.deepest_first())[-1][1]
    assert (last.uid, last.gid, last.mtime_ns, last.xattrs) == (1, 2, 3, {"user.k": b"v"})
