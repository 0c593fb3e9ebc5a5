"""Decrypt and unpack an encrypted image side by side, in one run: ``trusthook image unpack``
against what a user would otherwise run, ``skopeo copy --decryption-key`` then ``umoci unpack``.

The image: five gzip layers made from parts of this machine's /usr (about 500 MB uncompressed,
real files: headers, compilers, binaries, man pages, Python), encrypted with ``trusthook image
encrypt`` to an EC P-256 key (the JWE format skopeo reads; tests/integration prove that both tools
read each other's images). Each tool runs as its own process under ``/usr/bin/time`` (wall time,
peak RSS); warm page cache; both write into one tmpfs this script mounts (the trusthook hook
decrypts into a tmpfs; on this VM's virtual disk, writeback made disk runs vary 4x), emptied
between runs.

Usage (root): .venv/bin/python bench/decrypt.py [--workdir DIR] [--runs N]
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bench.timing import run_timed
from trusthook.image.layout import Layout
from trusthook.image.model import CONFIG_TYPE, MANIFEST_TYPE

SOURCES = ["/usr/include", "/usr/lib/gcc", "/usr/sbin", "/usr/share/man", "/usr/lib/python3"]
BIN = Path(sys.executable).parent


def build(work: Path) -> tuple[Path, Path]:
    """The encrypted layout and the private key (built once, reused)."""
    encrypted, key = work / "encrypted", work / "key.pem"
    if (work / ".complete").exists():
        return encrypted, key
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    plain = Layout.open_or_create(work / "plain")
    layers, diff_ids, total = [], [], 0
    for source in SOURCES:
        tar = work / "layer.tar"
        subprocess.run(
            ["tar", "-C", "/", "-cf", str(tar), source.lstrip("/")],
            check=True,
            stderr=subprocess.DEVNULL,
        )
        total += tar.stat().st_size
        with tar.open("rb") as f:
            diff_ids.append("sha256:" + hashlib.file_digest(f, "sha256").hexdigest())
        subprocess.run(["gzip", "-6", "-f", str(tar)], check=True)
        blob = Path(str(tar) + ".gz").read_bytes()
        layers.append(
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": plain.write_blob(blob),
                "size": len(blob),
            }
        )
        Path(str(tar) + ".gz").unlink()
    config = (
        b'{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers",'
        b'"diff_ids":[' + b",".join(f'"{d}"'.encode() for d in diff_ids) + b"]}}"
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": CONFIG_TYPE,
            "digest": plain.write_blob(config),
            "size": len(config),
        },
        "layers": layers,
    }
    plain.add_manifest(manifest, "bench")
    private = ec.generate_private_key(ec.SECP256R1())
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public = work / "key.pub.pem"
    public.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    subprocess.run(
        [
            str(BIN / "trusthook"),
            "image",
            "encrypt",
            f"{work / 'plain'}:bench",
            f"{encrypted}:bench",
            "--recipient",
            f"jwe:{public}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    shutil.rmtree(work / "plain")
    print(f"built: {len(SOURCES)} layers, {total / 1e6:.0f} MB uncompressed", flush=True)
    (work / ".complete").write_text("")
    return encrypted, key


def trusthook_unpack(encrypted: Path, key: Path, out: Path) -> tuple[float, int]:
    return run_timed(
        [
            str(BIN / "trusthook"),
            "image",
            "unpack",
            f"{encrypted}:bench",
            str(out / "rootfs"),
            "--key",
            str(key),
        ]
    )


def skopeo_umoci(encrypted: Path, key: Path, out: Path) -> tuple[float, int]:
    copy, copy_rss = run_timed(
        [
            "skopeo",
            "copy",
            "-q",
            "--decryption-key",
            str(key),
            f"oci:{encrypted}:bench",
            f"oci:{out / 'plain'}:bench",
        ]
    )
    unpack, unpack_rss = run_timed(
        ["umoci", "unpack", "--image", f"{out / 'plain'}:bench", str(out / "bundle")]
    )
    return copy + unpack, max(copy_rss, unpack_rss)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/var/lib/trusthook-bench/decrypt")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    encrypted, key = build(Path(args.workdir))
    results: dict[str, list[tuple[float, int]]] = {"trusthook": [], "skopeo+umoci": []}
    scratch = Path(tempfile.mkdtemp(prefix="out-", dir=args.workdir))
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4g", "tmpfs", str(scratch)], check=True)
    try:
        for _ in range(args.runs):
            for name, tool in (("trusthook", trusthook_unpack), ("skopeo+umoci", skopeo_umoci)):
                with tempfile.TemporaryDirectory(dir=scratch) as out:
                    results[name].append(tool(encrypted, key, Path(out)))
    finally:
        subprocess.run(["umount", str(scratch)], check=True)
        scratch.rmdir()
    print(f"{'tool':<14} {'median s':>9} {'runs':>24} {'peak RSS MiB':>13}")
    medians = {}
    for name, runs in results.items():
        times = [t for t, _ in runs]
        medians[name] = statistics.median(times)
        shown = " ".join(f"{t:.2f}" for t in times)
        print(f"{name:<14} {medians[name]:>9.2f} {shown:>24} {max(r for _, r in runs):>13}")
    ratio = medians["skopeo+umoci"] / medians["trusthook"]
    print(f"trusthook is {ratio:.2f}x skopeo+umoci (target >= 1.5x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
