"""The layer tar reader: every malformed, sparse or out-of-range header refused in one line, with
nothing written; the formats real layers use read as tar and Go read them.

Headers are built by hand here (``header``) where ``tarfile`` cannot write what a test needs.
No archive here holds a symlink or hardlink: the targets could only point outside the test.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trusthook.errors import ImageError, UnsafeLayerError
from trusthook.image.choices import Devices
from trusthook.image.tarreader import MAX_META, Kind, TarEntry, TarReader
from trusthook.image.unpack import ExtractPolicy, apply_layer

BLOCK = 512
END = bytes(2 * BLOCK)


def field(value: int, width: int) -> bytes:
    """An octal numeric field."""
    return b"%0*o\0" % (width - 1, value)


def base256(value: int, width: int) -> bytes:
    """A GNU base-256 numeric field (two's complement, marker bit set)."""
    return (0x80 << (8 * width - 8) | (value & ((1 << (8 * width - 1)) - 1))).to_bytes(width, "big")


def header(
    name: bytes = b"f",
    *,
    kind: bytes = b"0",
    size: bytes | int = 0,
    mode: bytes = field(0o644, 8),
    uid: bytes = field(0, 8),
    mtime: bytes = field(1_600_000_000, 12),
    devmajor: bytes = field(0, 8),
    magic: bytes = b"ustar\x0000",
    prefix: bytes = b"",
) -> bytes:
    """One header block with a correct checksum."""
    size_field = field(size, 12) if isinstance(size, int) else size
    block = b"".join(
        [
            name.ljust(100, b"\0"),
            mode,
            uid,
            field(0, 8),
            size_field,
            mtime,
            b" " * 8,
            kind,
            bytes(100),
            magic,
            bytes(64),
            devmajor,
            field(3, 8),
            prefix.ljust(155, b"\0"),
            bytes(12),
        ]
    )
    assert len(block) == BLOCK
    return block[:148] + b"%06o\0 " % sum(block) + block[156:]


def data(content: bytes) -> bytes:
    return content + bytes(-len(content) % BLOCK)


def pax(records: dict[str, str], kind: bytes = b"x") -> bytes:
    """A pax header block and its records."""
    body = b""
    for key, value in records.items():
        line = f" {key}={value}\n".encode()
        length = len(line) + len(str(len(line)))
        length = len(line) + len(str(length))  # the length counts its own digits
        body += str(length).encode() + line
    return header(b"PaxHeaders/f", kind=kind, size=len(body)) + data(body)


def entries(tar: bytes) -> list[TarEntry]:
    reader = TarReader(io.BytesIO(tar))
    found = []
    while (entry := reader.next()) is not None:
        found.append(entry)
    return found


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "root"
    path.mkdir()
    yield path


def refused(
    root: Path,
    tar: bytes,
    message: str,
    *,
    policy: ExtractPolicy | None = None,
    left: tuple[str, ...] = (),
) -> str:
    """Apply ``tar``: it must be refused with ``message`` in one line, having made only
    ``left`` (what came before the bad part; unpack_image empties the root after it)."""
    with pytest.raises(ImageError, match=message) as err:
        apply_layer(root, io.BytesIO(tar), policy or ExtractPolicy())
    assert "\n" not in str(err.value)
    assert sorted(p.name for p in root.iterdir()) == list(left)
    return str(err.value)


# --- malformed streams ----------------------------------------------------------------------


@pytest.mark.parametrize("cut", [1, 100, 511])
def test_a_header_cut_short_at_the_end_is_refused(root: Path, cut: int) -> None:
    tar = header(b"a", size=1) + data(b"a") + header(b"b", size=1)[:cut]
    message = refused(root, tar, r"header at byte 1024 is cut short", left=("a",))
    assert message.startswith("layer tar is malformed")


def test_a_negative_size_is_refused(root: Path) -> None:
    tar = header(b"f", size=base256(-1, 12)) + header(b"g", size=1) + data(b"g") + END
    refused(root, tar, r"header at byte 0 has size -1")


def test_file_data_cut_short_is_refused(root: Path) -> None:
    tar = header(b"f", size=5000) + data(b"y" * 5000)
    refused(root, tar[:2048], r"file data at byte 2048 is cut short", left=("f",))
    refused(root, tar[:-1], r"cut short", left=("f",))  # the padding too


def test_garbage_between_entries_is_refused_not_taken_for_the_end(root: Path) -> None:
    tar = header(b"a", size=1) + data(b"a") + b"\x01" * BLOCK + header(b"b") + END
    refused(root, tar, r"header at byte 1024 fails its checksum", left=("a",))


def test_a_header_after_one_zero_block_is_refused(root: Path) -> None:
    refused(root, bytes(BLOCK) + header(b"late") + END, r"follows a zero block")


@pytest.mark.parametrize(
    ("mode", "message"),
    [(b"0006449\0", r"mode b'0006449', expected octal"), (b"+0000644", r"expected octal")],
)
def test_numbers_must_be_octal(root: Path, mode: bytes, message: str) -> None:
    refused(root, header(mode=mode) + END, message)


def test_meta_headers_are_bounded_and_must_be_followed_by_an_entry(root: Path) -> None:
    huge = header(b"PaxHeaders/f", kind=b"x", size=MAX_META + 1)
    refused(root, huge + END, rf"pax header at byte 0 is {MAX_META + 1} bytes, more than")
    refused(root, pax({"path": "x"}) + END, r"a pax or GNU long-name header ends the tar")
    long_name = header(b"././@LongLink", kind=b"L", size=3) + data(b"ab\0")
    refused(root, long_name + long_name + header() + END, r"GNU long name .* follows another")
    both = pax({"path": "p"}) + long_name + header() + END
    refused(root, both, r"a pax and a GNU long name for one field")


@pytest.mark.parametrize(
    "body",
    [b"5 a=b", b"3 a=b\n", b"99 a=b\n", b"x a=b\n", b"6 =ab\n", b"6 abc\n", b"0 \n"],
)
def test_malformed_pax_records_are_refused(root: Path, body: bytes) -> None:
    tar = header(b"PaxHeaders/f", kind=b"x", size=len(body)) + data(body) + header() + END
    refused(root, tar, r"pax header at byte 0: malformed record")


# --- sparse files ---------------------------------------------------------------------------

SPARSE_PAX = {
    "0.0": {"GNU.sparse.size": "67108867", "GNU.sparse.numblocks": "1"},
    "0.1": {"GNU.sparse.size": "17592186044416", "GNU.sparse.map": "17592186044415,1"},
    "1.0": {"GNU.sparse.major": "1", "GNU.sparse.minor": "0", "GNU.sparse.realsize": "268435456"},
}


@pytest.mark.parametrize("version", sorted(SPARSE_PAX))
def test_pax_sparse_files_are_refused(root: Path, version: str) -> None:
    tar = pax(SPARSE_PAX[version]) + header(b"big", size=512) + data(bytes(512)) + END
    refused(root, tar, r"^layer entry 'big': sparse files are not supported$")


def test_old_gnu_sparse_files_are_refused(root: Path) -> None:
    tar = header(b"big", kind=b"S", size=512, magic=b"ustar  \0") + data(bytes(512)) + END
    refused(root, tar, r"^layer entry 'big': sparse files are not supported$")


# --- numbers Linux cannot hold ---------------------------------------------------------------


def test_a_uid_beyond_32_bits_is_refused(root: Path) -> None:
    refused(root, pax({"uid": str(1 << 40)}) + header() + END, r"uid 1099511627776 .*out of range")
    gnu_uid = header(uid=base256(1 << 40, 8), magic=b"ustar  \0") + END
    refused(root, gnu_uid, r"uid 1099511627776 or gid 0 is out of range")


def test_a_mode_beyond_its_octal_field_is_refused(root: Path) -> None:
    """Found by the layer_blob fuzzer: a base-256 mode past a C long raised OverflowError."""
    tar = header(mode=base256(1 << 40, 8), magic=b"ustar  \0") + END
    refused(root, tar, r"layer entry 'f': mode 20000000000000 is out of range \(0 to 7777777\)")


@pytest.mark.parametrize(
    ("mtime", "message"),
    [
        ("nan", r"pax mtime is b'nan', expected decimal seconds"),
        ("1e400", r"pax mtime is b'1e400', expected decimal seconds"),
        ("inf", r"expected decimal seconds"),
        ("99999999999999999999", r"mtime 99999999999999999999 s is out of range"),
        ("1.5.5", r"expected decimal seconds"),
    ],
)
def test_an_mtime_that_is_not_a_finite_64_bit_time_is_refused(
    root: Path, mtime: str, message: str
) -> None:
    refused(root, pax({"mtime": mtime}) + header() + END, message)


def test_a_device_major_beyond_the_kernels_range_is_refused(root: Path) -> None:
    tar = header(b"dev/x", kind=b"3", devmajor=base256(1 << 40, 8), magic=b"ustar  \0") + END
    refused(
        root,
        tar,
        r"device number 1099511627776:3 is out of range \(major 0 to 4095",
        policy=ExtractPolicy(devices=Devices.ALLOW),
    )


@pytest.mark.parametrize("kind", [b"V", b"M", b"D", b"N", b"X"])
def test_unknown_entry_types_are_refused(root: Path, kind: bytes) -> None:
    refused(root, header(b"v", kind=kind) + END, r"unsupported entry type")


# --- what is read ---------------------------------------------------------------------------


def test_ends_of_archive() -> None:
    one = header(b"a", size=1) + data(b"a")
    for tail in (b"", bytes(BLOCK), END, END + bytes(8192)):
        assert [e.name for e in entries(one + tail)] == ["a"]
    assert entries(b"") == []


def test_gnu_long_names_base_256_and_pax_records_are_read() -> None:
    long = "d/" * 80 + "file"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo(long)
        info.uid, info.gid, info.mtime, info.size = 3_000_000, 7, 1_600_000_000, 2
        tf.addfile(info, io.BytesIO(b"hi"))
    buf2 = io.BytesIO()
    with tarfile.open(fileobj=buf2, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("p" * 150)
        info.mtime = 1_600_000_000.25
        info.pax_headers = {"SCHILY.xattr.user.k": "v", "uname": "ignored"}
        tf.addfile(info)
    (gnu,) = entries(buf.getvalue())
    assert (gnu.name, gnu.uid, gnu.gid, gnu.size) == (long, 3_000_000, 7, 2)
    (paxed,) = entries(buf2.getvalue())
    assert paxed.name == "p" * 150
    assert paxed.mtime_ns == 1_600_000_000_250_000_000
    assert paxed.xattrs == {"user.k": b"v"}


def test_ustar_prefix_v7_directories_and_contiguous_files() -> None:
    tar = (
        header(b"name", prefix=b"some/prefix")
        + header(b"olddir/", kind=b"\0", magic=bytes(8))
        + header(b"cont", kind=b"7", size=1)
        + data(b"c")
        + END
    )
    found = entries(tar)
    assert [(e.name, e.kind) for e in found] == [
        ("some/prefix/name", Kind.FILE),
        ("olddir/", Kind.DIR),
        ("cont", Kind.FILE),
    ]


def test_global_pax_headers_are_ignored_and_negative_mtimes_read() -> None:
    tar = pax({"path": "global-name", "mtime": "5"}, kind=b"g") + pax({"mtime": "-1.5"})
    (entry,) = entries(tar + header(b"f") + END)
    assert (entry.name, entry.mtime_ns) == ("f", -1_500_000_000)


def test_header_only_types_carry_no_data() -> None:
    dir_with_size = header(b"d", kind=b"5", size=0o777)
    found = entries(dir_with_size + header(b"after") + END)
    assert [(e.name, e.size) for e in found] == [("d", 0), ("after", 0)]


def test_unread_file_data_is_skipped() -> None:
    big = os.urandom(3 << 20)
    tar = header(b"big", size=len(big)) + data(big) + header(b"next", size=2) + data(b"ok") + END
    reader = TarReader(io.BytesIO(tar))
    first = reader.next()
    assert first is not None and reader.read(10) == big[:10]
    second = reader.next()
    assert second is not None and second.name == "next"
    assert reader.read(1 << 20) == b"ok"
    assert reader.read(1 << 20) == b""
    assert reader.next() is None
    assert reader.next() is None


# --- property: arbitrary bytes and mutated headers raise only our errors ---------------------


def _seed() -> tuple[bytes, list[int]]:
    """A tar with every kind of header, and where its header blocks start."""
    parts = [
        pax({"path": "pax/name", "mtime": "1.5", "uid": "5", "SCHILY.xattr.user.a": "b"}),
        header(b"pax/name", size=3),
        data(b"abc"),
        header(b"././@LongLink", kind=b"L", size=4),
        data(b"lng\0"),
        header(b"x"),
        header(b"dir/", kind=b"5"),
        header(b"fifo", kind=b"6"),
        header(b"dev", kind=b"3", magic=b"ustar  \0"),
        header(b"big", size=base256(600, 12)),
        data(bytes(600)),
        END,
    ]
    tar = b"".join(parts)
    starts, offset = [], 0
    for part in parts:
        if len(part) >= BLOCK:
            starts.append(offset)
        offset += len(part)
    return tar, starts


SEED, HEADERS = _seed()


def _reseal(tar: bytearray, start: int) -> None:
    """Give the header at ``start`` a correct checksum again (so parsing goes past it)."""
    tar[start + 148 : start + 156] = b" " * 8
    tar[start + 148 : start + 156] = b"%06o\0 " % sum(tar[start : start + BLOCK])


@settings(max_examples=400)
@given(
    st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), max_size=8),
    st.integers(0, len(SEED)),
    st.booleans(),
)
def test_mutated_tars_raise_only_image_errors(
    flips: list[tuple[int, int]], cut: int, reseal: bool
) -> None:
    tar = bytearray(SEED)
    for pos, value in flips:
        tar[pos] = value
    if reseal:
        for start in HEADERS:
            _reseal(tar, start)
    with contextlib.suppress(ImageError):
        entries(bytes(tar[:cut]))


@settings(max_examples=200)
@given(st.binary(max_size=3 * BLOCK))
def test_arbitrary_bytes_raise_only_image_errors(raw: bytes) -> None:
    with contextlib.suppress(ImageError):
        entries(raw)


def test_sparse_refusal_is_an_unsafe_layer_error() -> None:
    with pytest.raises(UnsafeLayerError):
        entries(pax(SPARSE_PAX["0.1"]) + header(b"big") + END)
