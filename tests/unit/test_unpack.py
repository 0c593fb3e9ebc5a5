"""The safe layer extractor: OCI layer rules, and every escape trick refused or applied safely.

Layers are built in memory and fed through a non-seekable reader, as a decompressor would.
Each hostile test checks that nothing outside the root (a sibling "outside" directory holding
a sentinel file) was created or changed.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile
import tempfile
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trusthook.errors import ImageError, UnsafeLayerError
from trusthook.image.choices import Devices, Setuid
from trusthook.image.rootfs import empty_directory, existing_entries
from trusthook.image.unpack import ExtractPolicy, apply_layer

MTIME = 1_600_000_000


@dataclass(frozen=True)
class Ent:
    """One tar entry to build: its header and, for a regular file, its data."""

    info: tarfile.TarInfo
    data: bytes = b""


class Pipe:
    """A reader that can only read, like a pipe: proves the tar is streamed, never sought."""

    def __init__(self, data: bytes) -> None:
        self._buf = io.BytesIO(data)

    def read(self, size: int = -1, /) -> bytes:
        return self._buf.read(size)


def _info(name: str, kind: bytes, mode: int, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = MTIME
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def reg(name: str, data: bytes = b"x", mode: int = 0o644, **fields: object) -> Ent:
    return Ent(_info(name, tarfile.REGTYPE, mode, size=len(data), **fields), data)


def dir_(name: str, mode: int = 0o755, **fields: object) -> Ent:
    return Ent(_info(name, tarfile.DIRTYPE, mode, **fields))


def sym(name: str, target: str) -> Ent:
    return Ent(_info(name, tarfile.SYMTYPE, 0o777, linkname=target))


def hard(name: str, target: str) -> Ent:
    return Ent(_info(name, tarfile.LNKTYPE, 0o644, linkname=target))


def dev(name: str, kind: bytes = tarfile.CHRTYPE) -> Ent:
    return Ent(_info(name, kind, 0o666, devmajor=1, devminor=3))


def layer(*entries: Ent) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for e in entries:
            tf.addfile(e.info, io.BytesIO(e.data) if e.info.isreg() else None)
    return buf.getvalue()


def apply(root: Path, *entries: Ent, policy: ExtractPolicy | None = None) -> None:
    apply_layer(root, Pipe(layer(*entries)), policy or ExtractPolicy())


def snapshot(top: Path) -> dict[str, tuple[int, int, int, bytes]]:
    """Everything under ``top`` (itself included): mode, size, mtime and file contents."""
    found = {}
    for path in [top, *top.rglob("*")]:
        st_ = path.lstat()
        data = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
        found[str(path)] = (st_.st_mode, st_.st_size, st_.st_mtime_ns, data)
    return found


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "root"
    path.mkdir()
    return path


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    (path / "sentinel").write_bytes(b"untouched")
    return path


@pytest.fixture
def untouched(outside: Path) -> Iterator[None]:
    """Fails the test if anything under ``outside`` changed."""
    before = snapshot(outside)
    yield
    assert snapshot(outside) == before


# --- the ordinary layer rules ---------------------------------------------------------------


def test_applies_files_dirs_links_and_metadata(root: Path) -> None:
    apply(
        root,
        dir_("./"),
        dir_("./bin", mode=0o711, uid=5, gid=6),
        reg("./bin/tool", b"#!/bin/sh\n", mode=0o755, uid=7, gid=8),
        sym("bin/alias", "tool"),
        hard("bin/again", "bin/tool"),
        Ent(_info("run/fifo", tarfile.FIFOTYPE, 0o620)),
    )
    tool = (root / "bin" / "tool").stat()
    assert (root / "bin" / "tool").read_bytes() == b"#!/bin/sh\n"
    assert (stat.S_IMODE(tool.st_mode), tool.st_uid, tool.st_gid) == (0o755, 7, 8)
    assert tool.st_mtime == MTIME
    assert os.readlink(root / "bin" / "alias") == "tool"
    assert (root / "bin" / "again").stat().st_ino == tool.st_ino
    bindir = (root / "bin").stat()
    assert (stat.S_IMODE(bindir.st_mode), bindir.st_uid, bindir.st_gid) == (0o711, 5, 6)
    assert bindir.st_mtime == MTIME
    fifo = (root / "run" / "fifo").lstat()
    assert stat.S_ISFIFO(fifo.st_mode)
    assert stat.S_IMODE(fifo.st_mode) == 0o620
    assert stat.S_IMODE((root / "run").stat().st_mode) == 0o755  # made as a missing parent


def test_large_file_is_copied_whole(root: Path) -> None:
    data = os.urandom(3 << 20)
    apply(root, reg("big", data))
    assert (root / "big").read_bytes() == data


def test_read_only_directory_still_receives_later_entries(root: Path) -> None:
    apply(root, dir_("ro", mode=0o555), reg("ro/f"), dir_("ro/sub", mode=0o500), reg("ro/sub/g"))
    assert (root / "ro" / "sub" / "g").exists()
    assert stat.S_IMODE((root / "ro").stat().st_mode) == 0o555
    assert stat.S_IMODE((root / "ro" / "sub").stat().st_mode) == 0o500
    assert (root / "ro").stat().st_mtime == MTIME  # set after its entries were written


def test_owner_not_preserved_on_request(root: Path) -> None:
    apply(root, reg("f", uid=1234, gid=1234), policy=ExtractPolicy(preserve_owner=False))
    assert (root / "f").stat().st_uid == os.getuid()


def test_existing_directory_is_kept_and_updated(root: Path) -> None:
    apply(root, dir_("d"), reg("d/lower"))
    apply(root, dir_("d", mode=0o700), reg("d/upper"))
    assert sorted(p.name for p in (root / "d").iterdir()) == ["lower", "upper"]
    assert stat.S_IMODE((root / "d").stat().st_mode) == 0o700


def test_file_replaces_directory_tree(root: Path) -> None:
    apply(root, dir_("d"), dir_("d/sub"), reg("d/sub/f"))
    apply(root, reg("d", b"now a file"))
    assert (root / "d").read_bytes() == b"now a file"


def test_directory_replaces_file(root: Path) -> None:
    apply(root, reg("d"))
    apply(root, dir_("d"), reg("d/f"))
    assert (root / "d").is_dir()
    assert (root / "d" / "f").is_file()


def test_directory_then_file_in_same_layer(root: Path) -> None:
    apply(root, dir_("d", mode=0o700), reg("d/f"), reg("d", b"file"))
    assert (root / "d").read_bytes() == b"file"


def test_root_entry_must_be_a_directory(root: Path, outside: Path, untouched: object) -> None:
    with pytest.raises(UnsafeLayerError, match="root entry"):
        apply(root, sym("./", str(outside)))


def test_hardlink_to_symlink_links_the_symlink(root: Path, outside: Path) -> None:
    apply(root, sym("s", str(outside / "sentinel")), hard("h", "s"))
    assert (root / "h").is_symlink()
    assert (root / "h").lstat().st_ino == (root / "s").lstat().st_ino
    assert (outside / "sentinel").stat().st_nlink == 1


def test_hardlink_to_directory_or_missing_target_refused(root: Path) -> None:
    with pytest.raises(UnsafeLayerError, match="is a directory"):
        apply(root, dir_("d"), hard("h", "d"))
    with pytest.raises(ImageError, match="does not exist"):
        apply(root, hard("h2", "nothing/here"))
    with pytest.raises(ImageError, match="does not exist"):
        apply(root, hard("h3", "nothere"))


def test_malformed_tar_is_an_image_error(root: Path) -> None:
    data = layer(reg("f", b"y" * 5000))
    with pytest.raises(ImageError, match="malformed") as err:
        apply_layer(root, Pipe(data[:1024]), ExtractPolicy())
    assert not isinstance(err.value, UnsafeLayerError)


def test_unsupported_entry_type_refused(root: Path) -> None:
    with pytest.raises(UnsafeLayerError, match="unsupported entry type"):
        apply(root, Ent(_info("v", b"V", 0o644)))


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/etc/passwd", "/", "//x"])
def test_absolute_path_refused(root: Path, untouched: object, name: str) -> None:
    with pytest.raises(UnsafeLayerError):
        apply(root, reg(name))
    assert list(root.iterdir()) == []


def test_absolute_path_message(root: Path) -> None:
    with pytest.raises(UnsafeLayerError, match=r"^layer entry '/etc/passwd': absolute path$"):
        apply(root, reg("/etc/passwd"))


@pytest.mark.parametrize("name", ["a/../../etc/passwd", "..", "a/..", "../outside/sentinel"])
def test_dotdot_refused(root: Path, untouched: object, name: str) -> None:
    with pytest.raises(UnsafeLayerError, match="path escapes the root"):
        apply(root, reg(name))
    assert list(root.iterdir()) == []


def test_dotdot_message_names_the_entry(root: Path) -> None:
    expected = r"^layer entry 'a/\.\./\.\./etc/passwd': path escapes the root$"
    with pytest.raises(UnsafeLayerError, match=expected):
        apply(root, reg("a/../../etc/passwd"))


def test_nul_in_name_refused(root: Path) -> None:
    info = _info("f", tarfile.REGTYPE, 0o644)
    info.pax_headers = {"path": "a\0b"}
    with pytest.raises(UnsafeLayerError, match="NUL"):
        apply(root, Ent(info))


def test_empty_name_refused(root: Path) -> None:
    with pytest.raises(UnsafeLayerError, match="empty name"):
        apply(root, reg(""))


@pytest.mark.parametrize("target", ["../outside/sentinel", "a/../../x", ".."])
def test_dotdot_hardlink_target_refused(root: Path, untouched: object, target: str) -> None:
    with pytest.raises(UnsafeLayerError, match="hardlink target .*path escapes the root"):
        apply(root, hard("h", target))
    assert list(root.iterdir()) == []


def test_absolute_hardlink_target_refused(root: Path, outside: Path, untouched: object) -> None:
    with pytest.raises(UnsafeLayerError, match="hardlink target .*absolute path"):
        apply(root, hard("h", str(outside / "sentinel")))
    assert (outside / "sentinel").stat().st_nlink == 1


# --- symlink tricks -------------------------------------------------------------------------


def test_write_through_symlink_in_same_layer_refused(
    root: Path, outside: Path, untouched: object
) -> None:
    with pytest.raises(UnsafeLayerError, match=r"^layer entry 'a/evil': parent 'a' is a symlink"):
        apply(root, sym("a", str(outside)), reg("a/evil"))
    assert not (outside / "evil").exists()


def test_write_through_relative_symlink_refused(root: Path, untouched: object) -> None:
    with pytest.raises(UnsafeLayerError, match="is a symlink"):
        apply(root, sym("a", "../outside"), reg("a/evil"))


def test_write_through_lower_layer_symlink_refused(
    root: Path, outside: Path, untouched: object
) -> None:
    apply(root, dir_("etc"), sym("etc/conf", str(outside)))
    with pytest.raises(UnsafeLayerError, match="parent 'etc/conf' is a symlink"):
        apply(root, reg("etc/conf/sentinel", b"overwritten"))


def test_directory_swapped_for_symlink_refused(
    root: Path, outside: Path, untouched: object
) -> None:
    apply(root, dir_("d"), reg("d/f"))
    with pytest.raises(UnsafeLayerError, match="parent 'd' is a symlink"):
        apply(root, sym("d", str(outside)), reg("d/f", b"evil"))
    assert os.readlink(root / "d") == str(outside)


def test_hardlink_through_symlinked_parent_refused(
    root: Path, outside: Path, untouched: object
) -> None:
    with pytest.raises(UnsafeLayerError, match="parent 'l' is a symlink"):
        apply(root, sym("l", str(outside)), hard("h", "l/sentinel"))
    assert (outside / "sentinel").stat().st_nlink == 1
    assert not (root / "h").exists()


def test_directory_entry_over_symlink_replaces_it(
    root: Path, outside: Path, untouched: object
) -> None:
    apply(root, sym("d", str(outside)))
    apply(root, dir_("d", mode=0o700), reg("d/f"))
    assert not (root / "d").is_symlink()
    assert (root / "d" / "f").is_file()


def test_absolute_symlink_kept_verbatim_then_replaced_not_written_through(
    root: Path, outside: Path, untouched: object
) -> None:
    target = str(outside / "sentinel")
    apply(root, sym("s", target), sym("rel", "../../outside/sentinel"))
    assert os.readlink(root / "s") == target
    assert os.readlink(root / "rel") == "../../outside/sentinel"
    apply(root, reg("s", b"mine"))  # a later layer
    apply(root, sym("t", target), reg("t", b"mine too"))  # the same layer
    for name in ("s", "t"):
        assert not (root / name).is_symlink()
        assert (root / name).read_bytes().startswith(b"mine")


def test_whiteout_through_symlinked_parent_refused(
    root: Path, outside: Path, untouched: object
) -> None:
    apply(root, sym("l", str(outside)))
    with pytest.raises(UnsafeLayerError, match="parent 'l' is a symlink"):
        apply(root, reg("l/.wh.sentinel"))


# --- devices and setuid ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", [tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_device_refused_by_default(root: Path, kind: bytes) -> None:
    with pytest.raises(UnsafeLayerError, match="device nodes are refused"):
        apply(root, dev("dev/null", kind))
    assert not (root / "dev" / "null").exists()


def test_device_skipped(root: Path) -> None:
    apply(root, dev("dev/null"), reg("after"), policy=ExtractPolicy(devices=Devices.SKIP))
    assert not (root / "dev").exists()
    assert (root / "after").exists()


@pytest.mark.parametrize(
    ("kind", "check"), [(tarfile.CHRTYPE, stat.S_ISCHR), (tarfile.BLKTYPE, stat.S_ISBLK)]
)
def test_device_allowed(root: Path, kind: bytes, check: Callable[[int], bool]) -> None:
    apply(root, dev("dev/null", kind), policy=ExtractPolicy(devices=Devices.ALLOW))
    st_ = (root / "dev" / "null").lstat()
    assert check(st_.st_mode)
    assert st_.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(st_.st_mode) == 0o666


@pytest.mark.parametrize("bits", [stat.S_ISUID, stat.S_ISGID])
def test_setuid_refused(root: Path, bits: int) -> None:
    with pytest.raises(UnsafeLayerError, match="setuid"):
        apply(root, reg("su", mode=0o755 | bits), policy=ExtractPolicy(setuid=Setuid.REFUSE))
    assert not (root / "su").exists()


def test_setuid_stripped_by_default(root: Path) -> None:
    apply(root, reg("su", mode=0o6755, uid=0))
    assert stat.S_IMODE((root / "su").stat().st_mode) == 0o755


def test_setuid_kept(root: Path) -> None:
    apply(
        root, reg("su", mode=0o6755, uid=1000, gid=1000), policy=ExtractPolicy(setuid=Setuid.KEEP)
    )
    st_ = (root / "su").stat()
    assert stat.S_IMODE(st_.st_mode) == 0o6755  # chown before chmod: the bits survive
    assert (st_.st_uid, st_.st_gid) == (1000, 1000)


def test_setgid_directory_is_not_a_setuid_file(root: Path) -> None:
    apply(root, dir_("shared", mode=0o2775), policy=ExtractPolicy(setuid=Setuid.REFUSE))
    assert stat.S_IMODE((root / "shared").stat().st_mode) == 0o2775


# --- xattrs ---------------------------------------------------------------------------------

CAP = bytes.fromhex("0100000200200000000000000000000000000000")  # cap_net_bind_service+ep


def _with_xattrs(ent: Ent, **xattrs: bytes) -> Ent:
    ent.info.pax_headers = {
        f"SCHILY.xattr.{k.replace('_', '.')}": v.decode("utf-8", "surrogateescape")
        for k, v in xattrs.items()
    }
    return ent


def test_user_xattrs_applied_others_dropped(root: Path) -> None:
    apply(
        root,
        _with_xattrs(dir_("d"), user_d=b"dir"),
        _with_xattrs(reg("d/f"), user_mime=b"text/plain", trusted_overlay_opaque=b"y"),
    )
    assert os.getxattr(root / "d", "user.d") == b"dir"
    assert os.listxattr(root / "d" / "f") == ["user.mime"]


@pytest.mark.parametrize(
    ("policy", "kept"),
    [(ExtractPolicy(setuid=Setuid.STRIP), False), (ExtractPolicy(setuid=Setuid.KEEP), True)],
)
def test_capability_follows_setuid_policy(root: Path, policy: ExtractPolicy, kept: bool) -> None:
    apply(root, _with_xattrs(reg("ping"), security_capability=CAP), policy=policy)
    assert ("security.capability" in os.listxattr(root / "ping")) is kept


def test_capability_refused(root: Path) -> None:
    with pytest.raises(UnsafeLayerError, match="capabilities"):
        apply(
            root,
            _with_xattrs(reg("ping"), security_capability=CAP),
            policy=ExtractPolicy(setuid=Setuid.REFUSE),
        )


# --- whiteouts ------------------------------------------------------------------------------


def test_whiteout_removes_lower_file_and_tree(root: Path) -> None:
    apply(root, reg("f"), dir_("d"), dir_("d/sub"), reg("d/sub/g"), reg("keep"), sym("s", "/x"))
    apply(root, reg(".wh.f"), reg(".wh.d"), reg(".wh.s"), reg(".wh.absent"), reg("no/.wh.x"))
    assert sorted(p.name for p in root.iterdir()) == ["keep"]


def test_whiteout_of_entry_from_same_layer_keeps_it(root: Path) -> None:
    apply(root, reg("f", b"lower"), dir_("d"), reg("d/lower"))
    apply(root, reg("f", b"upper"), reg("d/upper"), reg(".wh.f"), reg(".wh.d"))
    assert (root / "f").read_bytes() == b"upper"  # the spec: same-layer entries stay
    assert [p.name for p in (root / "d").iterdir()] == ["upper"]  # lower entries hidden


def test_opaque_whiteout_keeps_same_layer_entries(root: Path) -> None:
    apply(root, dir_("d"), reg("d/old"), dir_("d/x"), reg("d/x/old"), reg("other"))
    apply(
        root,
        dir_("d"),
        reg("d/before"),
        reg("d/x/new"),
        reg("d/.wh..wh..opq"),
        reg("d/after"),
    )
    assert sorted(p.name for p in (root / "d").iterdir()) == ["after", "before", "x"]
    assert [p.name for p in (root / "d" / "x").iterdir()] == ["new"]
    assert (root / "other").exists()
    assert not (root / "d" / ".wh..wh..opq").exists()


def test_aufs_metadata_ignored(root: Path) -> None:
    apply(root, dir_(".wh..wh.plnk"), reg(".wh..wh.aufs"), reg("f"))
    assert [p.name for p in root.iterdir()] == ["f"]


@pytest.mark.parametrize("name", [".wh...", ".wh..", ".wh.", "a/.wh...", "a/b/.wh.."])
def test_escaping_whiteout_refused(root: Path, untouched: object, name: str) -> None:
    apply(root, dir_("a"), dir_("a/b"), reg("a/b/f"))
    with pytest.raises(UnsafeLayerError, match="whiteout target"):
        apply(root, reg(name))
    assert (root / "a" / "b" / "f").exists()


# --- runtime entries (``keep``) -------------------------------------------------------------


def test_runtime_entries_are_never_touched(root: Path) -> None:
    (root / "etc").mkdir()
    (root / "etc" / "hosts").write_bytes(b"runtime")
    keep = frozenset({"etc/hosts"})
    data = layer(reg("etc/hosts", b"image"), reg("etc/.wh.hosts"), reg("etc/.wh..wh..opq"))
    apply_layer(root, Pipe(data), ExtractPolicy(), keep=keep)
    apply_layer(root, Pipe(layer(reg("etc", b"file"), reg(".wh.etc"))), ExtractPolicy(), keep=keep)
    assert (root / "etc" / "hosts").read_bytes() == b"runtime"


def test_a_runtime_mount_point_directory_survives_a_whiteout_and_replacement(root: Path) -> None:
    """The review's bypass: runc made /data for a read-only bind mount; `.wh.data` plus
    `data/token` removed that mount point and the container saw the image's file instead."""
    (root / "data").mkdir()
    inode = (root / "data").stat().st_ino
    keep = existing_entries(root)
    assert keep == frozenset({"data"})
    attacks = [
        layer(reg(".wh.data"), dir_("data"), reg("data/token", b"image")),
        layer(reg(".wh..wh..opq")),
        layer(reg("data", b"a file instead")),
        layer(sym("data", "elsewhere")),
    ]
    for data in attacks:
        apply_layer(root, Pipe(data), ExtractPolicy(), keep=keep)
        st_ = (root / "data").lstat()
        assert stat.S_ISDIR(st_.st_mode) and st_.st_ino == inode


# --- property: arbitrary names never escape -------------------------------------------------

PARTS = st.sampled_from(["a", "b", ".", "..", "", ".wh.a", ".wh..wh..opq", ".wh...", "l"])
NAMES = st.lists(PARTS, min_size=1, max_size=4).map("/".join)
KINDS = st.sampled_from(["file", "dir", "sym", "hard"])


@settings(max_examples=150)
@given(st.lists(st.tuples(KINDS, NAMES, NAMES), min_size=1, max_size=8))
def test_arbitrary_layers_stay_inside(entries: list[tuple[str, str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        root, outside = base / "root", base / "outside"
        root.mkdir()
        outside.mkdir()
        (outside / "sentinel").write_bytes(b"untouched")
        (root / "l").symlink_to(outside)  # a lower layer's symlink to outside
        before = snapshot(outside)
        made = {
            "file": lambda name, _: reg(name, b"evil"),
            "dir": lambda name, _: dir_(name),
            # Absolute targets point into ``outside``, never at the real "/": a regression
            # must not be able to damage the machine running the tests.
            "sym": lambda name, target: sym(name, f"{outside}/{target}"),
            "hard": hard,
        }
        with contextlib.suppress(ImageError):
            apply(root, *(made[kind](name, other) for kind, name, other in entries))
        assert snapshot(outside) == before
        assert sorted(p.name for p in base.iterdir()) == ["outside", "root"]


# --- deep trees: no recursion anywhere ------------------------------------------------------

DEPTH = 1500


@pytest.fixture
def deep_root(root: Path) -> Iterator[Path]:
    """``root``, emptied after the test: pytest's own clean-up of old temporary directories
    uses shutil.rmtree, which recursion stops about 1,000 levels down."""
    yield root
    empty_directory(root)


def chain(depth: int = DEPTH) -> list[str]:
    """``d``, ``d/d``, ... ``depth`` directories deep."""
    return ["/".join(["d"] * k) for k in range(1, depth + 1)]


def walk(top: Path) -> list[str]:
    """Every path under ``top`` (relative), iteratively: pathlib's rglob recurses."""
    found, stack = [], [""]
    while stack:
        rel = stack.pop()
        with os.scandir(top / rel if rel else top) as entries:
            for entry in entries:
                path = f"{rel}/{entry.name}" if rel else entry.name
                found.append(path)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(path)
    return sorted(found)


def test_a_refusal_after_a_deep_tree_is_the_refusal(deep_root: Path, untouched: object) -> None:
    paths = chain()
    with pytest.raises(
        UnsafeLayerError, match=r"^layer entry '\.\./escape': path escapes the root$"
    ):
        apply(deep_root, *(dir_(p) for p in paths), reg(f"{paths[-1]}/f"), reg("../escape"))


def test_whiteout_over_a_deep_tree(deep_root: Path, outside: Path, untouched: object) -> None:
    paths = chain()
    apply(
        deep_root,
        *(dir_(p) for p in paths),
        reg(f"{paths[-1]}/f"),
        sym(f"{paths[-1]}/out", str(outside)),
        reg("keep"),
    )
    apply(deep_root, reg(".wh.d"))
    assert walk(deep_root) == ["keep"]


def test_opaque_whiteout_over_a_deep_tree_keeps_this_layers_entries(deep_root: Path) -> None:
    paths = chain()
    apply(deep_root, *(dir_(p, mode=0o750) for p in paths), *(reg(f"{p}/old") for p in paths))
    apply(deep_root, reg(f"{paths[-1]}/new"), reg("d/.wh..wh..opq"), reg("d/d/also"))
    assert walk(deep_root) == sorted([*paths, f"{paths[-1]}/new", "d/d/also"])
    assert stat.S_IMODE((deep_root / paths[-1]).stat().st_mode) == 0o750  # a lower directory, kept


def test_directories_of_a_deep_tree_are_finished(deep_root: Path) -> None:
    paths = chain()
    apply(deep_root, *(dir_(p, mode=0o701) for p in paths), reg(f"{paths[-1]}/f"))
    for p in (paths[0], paths[700], paths[-1]):
        st_ = (deep_root / p).stat()
        assert (stat.S_IMODE(st_.st_mode), st_.st_mtime) == (0o701, MTIME)


# --- what a layer remembers -----------------------------------------------------------------


def test_a_directory_replaced_in_its_layer_takes_its_metadata_along(root: Path) -> None:
    apply(
        root,
        dir_("a", mode=0o700),
        dir_("a/b", mode=0o700, uid=5),
        reg("a"),  # replaces a with its tree
        dir_("a", mode=0o750),
        reg("a/b/f"),  # a/b: a missing parent again
    )
    b = (root / "a" / "b").stat()
    assert (stat.S_IMODE(b.st_mode), b.st_uid) == (0o755, 0)
    assert stat.S_IMODE((root / "a").stat().st_mode) == 0o750


def test_hardlink_into_the_entry_it_replaces_refused(root: Path) -> None:
    with pytest.raises(ImageError, match="hardlink to itself or to an entry below it"):
        apply(root, dir_("a"), reg("a/f"), hard("a", "a/f"))
    with pytest.raises(ImageError, match="hardlink to itself"):
        apply(root, reg("g"), hard("g", "g"))


def test_memory_does_not_grow_with_entries(root: Path) -> None:
    """30,000 entries: the old extractor kept ~0.85 KB each (25 MB); now the path set (12 to
    24 bytes each) and the reader's buffer remain."""
    data = layer(*(reg(f"d{i // 1000}/f{i}") for i in range(30_000)))
    source = Pipe(data)
    tracemalloc.start()
    try:
        apply_layer(root, source, ExtractPolicy())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(list((root / "d29").iterdir())) == 1000
    assert peak < 4 << 20, f"peak {peak} bytes"
