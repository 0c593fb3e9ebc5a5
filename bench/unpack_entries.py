"""Unpack a layer of many tiny files, side by side: ``trusthook image unpack`` against
``umoci unpack`` of the same image, wall time and peak RSS, for each entry count asked.

The image: one gzip layer of N one-byte files, ``--per-dir`` to a directory (written here as
ustar headers, the way a layer of a big node_modules or a package cache looks to the extractor),
in an OCI layout. Each tool runs as its own process under GNU ``/usr/bin/time -f %M`` (peak
RSS), warm page cache, into a tmpfs this script mounts under the work directory and remounts
fresh for every run (unmounted at the end). umoci's figure includes the mtree manifest of the
rootfs it writes next to the bundle (it always does; there is no option to skip it).

Usage (root): .venv/bin/python bench/unpack_entries.py [--entries 200000 1000000]
    [--per-dir 1000] [--runs 1] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import statistics
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path

from bench.timing import run_timed
from trusthook.image.layout import Layout
from trusthook.image.model import CONFIG_TYPE, MANIFEST_TYPE

BIN = Path(sys.executable).parent
MTIME = 1_700_000_000


def _header(name: bytes, kind: bytes, mode: int, size: int) -> bytes:
    """One ustar header block."""
    fields = b"".join(
        [
            name.ljust(100, b"\0"),
            b"%07o\0" % mode,
            b"%07o\0" % 0,
            b"%07o\0" % 0,
            b"%011o\0" % size,
            b"%011o\0" % MTIME,
            b" " * 8,
            kind,
            bytes(100),
            b"ustar\x0000",
            bytes(32 + 32 + 8 + 8 + 155 + 12),
        ]
    )
    checksum = b"%06o\0 " % sum(fields)
    return fields[:148] + checksum + fields[156:]


def build(layout_dir: Path, entries: int, per_dir: int) -> str:
    """Write the image with ``entries`` files into ``layout_dir``; its reference."""
    ref = f"n{entries}"
    if (layout_dir / f".complete-{ref}").exists():
        return ref
    layout = Layout.open_or_create(layout_dir)
    tar_hash = hashlib.sha256()
    gz = zlib.compressobj(1, wbits=31)
    with layout.blob_writer() as blob:

        def emit(data: bytes) -> None:
            tar_hash.update(data)
            blob.write(gz.compress(data))

        data_block = b"x" + bytes(511)
        batch = []
        for i in range(entries):
            if i % per_dir == 0:
                batch.append(_header(b"d%05d/" % (i // per_dir), b"5", 0o755, 0))
            batch.append(_header(b"d%05d/f%07d" % (i // per_dir, i), b"0", 0o644, 1))
            batch.append(data_block)
            if len(batch) >= 4096:
                emit(b"".join(batch))
                batch = []
        emit(b"".join(batch) + bytes(1024))
        blob.write(gz.flush())
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:" + tar_hash.hexdigest()]},
        }
    ).encode()
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": CONFIG_TYPE,
            "digest": layout.write_blob(config),
            "size": len(config),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": blob.digest,
                "size": blob.size,
            }
        ],
    }
    layout.add_manifest(manifest, ref)
    (layout_dir / f".complete-{ref}").write_text("")
    return ref


def _check(rootfs: Path, entries: int, per_dir: int) -> None:
    """The last directory holds all its files, the last of them with its byte."""
    last = entries - 1
    directory = rootfs / f"d{last // per_dir:05d}"
    expected = last % per_dir + 1
    if len(list(directory.iterdir())) != expected or (
        (directory / f"f{last:07d}").read_bytes() != b"x"
    ):
        raise SystemExit(f"{rootfs} is not the image's rootfs")


def _fresh_tmpfs(mount: Path) -> None:
    subprocess.run(["umount", str(mount)], check=False, stderr=subprocess.DEVNULL)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16g,nr_inodes=0", "tmpfs", str(mount)], check=True
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, nargs="+", default=[200_000, 1_000_000])
    parser.add_argument("--per-dir", type=int, default=1000)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--workdir", default="/var/lib/trusthook-bench/unpack-entries")
    args = parser.parse_args()
    work = Path(args.workdir)
    mount = work / "tmpfs"
    mount.mkdir(parents=True, exist_ok=True)
    layout = work / "layout"
    tools: dict[str, Callable[[str], list[str]]] = {
        "trusthook": lambda ref: [
            str(BIN / "trusthook"),
            "image",
            "unpack",
            f"{layout}:{ref}",
            str(mount / "rootfs"),
        ],
        "umoci": lambda ref: ["umoci", "unpack", "--image", f"{layout}:{ref}", str(mount / "b")],
    }
    unpacked = {"trusthook": mount / "rootfs", "umoci": mount / "b" / "rootfs"}
    rows = []
    try:
        for entries in args.entries:
            ref = build(layout, entries, args.per_dir)
            results: dict[str, list[tuple[float, int]]] = {name: [] for name in tools}
            for _ in range(args.runs):
                for name, argv in tools.items():
                    _fresh_tmpfs(mount)
                    results[name].append(run_timed(argv(ref)))
                    _check(unpacked[name], entries, args.per_dir)
            medians = {
                name: (statistics.median(t for t, _ in runs), max(r for _, r in runs))
                for name, runs in results.items()
            }
            rows.append((entries, medians))
    finally:
        subprocess.run(["umount", str(mount)], check=False, stderr=subprocess.DEVNULL)
    print(f"{'entries':>9} {'tool':<10} {'wall s':>8} {'peak RSS MiB':>13}")
    for entries, medians in rows:
        for name, (seconds, rss) in medians.items():
            print(f"{entries:>9} {name:<10} {seconds:>8.2f} {rss:>13}")
        ours, theirs = medians["trusthook"], medians["umoci"]
        print(
            f"{entries:>9} {'ratio':<10} {ours[0] / theirs[0]:>8.2f} {ours[1] / theirs[1]:>13.2f}"
            "   (trusthook / umoci; below 1 is better)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
