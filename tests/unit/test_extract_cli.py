"""``trusthook image unpack`` and ``decrypt`` end to end on hostile and broken images: one line
on stderr, exit 1, and nothing left behind (no rootfs, no plaintext, no half layout).

Every symlink in these layers points into the test's own ``outside`` directory.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import stat
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.keys import KeyPair, pem_pair
from tests.unit.test_extract_tar import END, base256, data, header, pax
from trusthook._devenv.ociimage import Entry, ImageSpec, build_image, tar_bytes
from trusthook.cli import main
from trusthook.errors import ImageCryptError
from trusthook.image import crypt
from trusthook.image.crypt import LayerKey, encrypt_image
from trusthook.image.keywrap import load_recipient
from trusthook.image.layout import Layout
from trusthook.image.model import Descriptor
from trusthook.image.rootfs import empty_directory

DEPTH = 1500
CHAIN = ["/".join(["d"] * k) for k in range(1, DEPTH + 1)]


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> KeyPair:
    return pem_pair(tmp_path_factory.mktemp("keys"), "ec", ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def rootfs(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "rootfs"
    yield path
    if path.exists():  # a test that failed: never leave a deep tree to pytest's clean-up
        empty_directory(path)


def tar_of(*entries: tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for item in entries:
            info, content = item if isinstance(item, tuple) else (item, b"")
            info.size = len(content)
            tf.addfile(info, io.BytesIO(content) if info.isreg() else None)
    return buf.getvalue()


def entry(name: str, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, 0o755, 1_600_000_000
    return info


def image(tmp_path: Path, *layers: bytes, compression: str = "gzip") -> str:
    build_image(tmp_path / "img", "x", ImageSpec(layers=list(layers), compression=compression))
    return f"{tmp_path / 'img'}:x"


def unpack(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(["image", "unpack", *argv])
    return code, capsys.readouterr().err


FIRST = header(b"first", size=1) + data(b"1")
BROKEN = {
    "deep-then-escape": tar_of(
        *(entry(p, tarfile.DIRTYPE) for p in CHAIN),
        (entry(f"{CHAIN[-1]}/f"), b"x"),
        (entry("../escape"), b"x"),
    ),
    "header-cut-short": FIRST + header(b"second", size=1)[:300],
    "negative-size": header(b"f", size=base256(-1, 12)) + FIRST + END,
    "sparse": FIRST + pax({"GNU.sparse.major": "1", "GNU.sparse.minor": "0"}) + header() + END,
    "uid-2**40": FIRST + pax({"uid": str(1 << 40)}) + header() + END,
    "mtime-nan": FIRST + pax({"mtime": "nan"}) + header() + END,
    "mtime-1e400": FIRST + pax({"mtime": "1e400"}) + header() + END,
    "devmajor-2**40": FIRST
    + header(b"dev", kind=b"3", devmajor=base256(1 << 40, 8), magic=b"ustar  \0")
    + END,
}
MESSAGES = {
    "deep-then-escape": r"layer entry '\.\./escape': path escapes the root",
    "header-cut-short": r"layer tar is malformed: the header at byte 1024 is cut short",
    "negative-size": r"layer tar is malformed: the header at byte 0 has size -1",
    "sparse": r"layer entry 'f': sparse files are not supported",
    "uid-2**40": r"layer entry 'f': uid 1099511627776 or gid 0 is out of range",
    "mtime-nan": r"layer entry 'f': pax mtime is b'nan', expected decimal seconds",
    "mtime-1e400": r"layer entry 'f': pax mtime is b'1e400', expected decimal seconds",
    "devmajor-2**40": r"layer entry 'dev': device number 1099511627776:3 is out of range",
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_a_broken_layer_is_one_line_and_leaves_no_rootfs(
    tmp_path: Path, rootfs: Path, capsys: pytest.CaptureFixture[str], name: str
) -> None:
    ref = image(tmp_path, tar_bytes([Entry(name="lower", data=b"l")]), BROKEN[name])
    code, err = unpack(capsys, ref, str(rootfs), "--devices", "allow")
    assert code == 1
    assert err.count("\n") == 1
    assert err.startswith("trusthook: layer 1 (sha256:")
    assert re.search(MESSAGES[name], err), err
    assert not rootfs.exists()


def test_a_refusal_empties_an_existing_root_and_keeps_it(
    tmp_path: Path, rootfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rootfs.mkdir()
    code, err = unpack(capsys, image(tmp_path, BROKEN["deep-then-escape"]), str(rootfs))
    assert (code, list(rootfs.iterdir())) == (1, [])
    assert "path escapes the root" in err


def test_a_whiteout_over_a_deep_tree_is_applied(
    tmp_path: Path, rootfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lower = tar_of(*(entry(p, tarfile.DIRTYPE) for p in CHAIN), (entry(f"{CHAIN[-1]}/f"), b"x"))
    upper = tar_of(entry(".wh.d"), (entry("kept"), b"k"))
    code, err = unpack(capsys, image(tmp_path, lower, upper), str(rootfs))
    assert (code, err) == (0, "")
    assert [p.name for p in rootfs.iterdir()] == ["kept"]


# --- papercuts ------------------------------------------------------------------------------


def test_a_malformed_pin_is_refused_before_anything(
    tmp_path: Path, rootfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = image(tmp_path, tar_bytes([Entry(name="f")]))
    code, err = unpack(capsys, ref, str(rootfs), "--pin", "ab" * 32)
    assert code == 1
    assert err == (
        "trusthook: --pin must be a manifest digest, sha256:<64 lowercase hex digits>; "
        f"got '{'ab' * 32}'\n"
    )
    assert not rootfs.exists()


def test_another_pinned_digest_is_named_as_the_flag(
    tmp_path: Path, rootfs: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ref = image(tmp_path, tar_bytes([Entry(name="f")]))
    code, err = unpack(capsys, ref, str(rootfs), "--pin", "sha256:" + "0" * 64)
    assert code == 1
    assert err.startswith("trusthook: image manifest digest is sha256:")
    assert err.endswith(f", expected sha256:{'0' * 64} (--pin)\n")
    assert not rootfs.exists()


def test_an_encrypted_image_without_a_key_says_to_pass_one(
    tmp_path: Path, rootfs: Path, key: KeyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    plain = image(tmp_path, tar_bytes([Entry(name="f")]))
    code = main(
        ["image", "encrypt", plain, f"{tmp_path / 'enc'}:x", "--recipient", str(key.public)]
    )
    assert code == 0
    capsys.readouterr()
    code, err = unpack(capsys, f"{tmp_path / 'enc'}:x", str(rootfs))
    assert code == 1
    assert err.endswith(
        "is encrypted and no key was given: pass a recipient's private key with --key\n"
    )
    assert not rootfs.exists()


def test_unpack_help_describes_key(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["image", "unpack", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--key PRIVKEY a private key (PEM or JWK) that is a recipient" in text
    assert "repeat for several" in text


# --- decrypt: plaintext only when it all worked ---------------------------------------------


def encrypted(tmp_path: Path, key: KeyPair) -> Layout:
    """An image of two encrypted layers and a plain one."""
    layers = [tar_bytes([Entry(name=name)]) for name in "abc"]
    build_image(tmp_path / "plain", "x", ImageSpec(layers=layers))
    plain = Layout.open(tmp_path / "plain")
    out = Layout.open_or_create(tmp_path / "enc")
    recipient = load_recipient(str(key.public))
    encrypt_image(plain, "x", out, "x", [recipient], select=lambda i: i < 2)
    return out


def files(top: Path) -> dict[str, bytes]:
    return {str(p.relative_to(top)): p.read_bytes() for p in top.rglob("*") if p.is_file()}


def test_decrypt_writes_no_plaintext_when_a_later_layer_fails_its_hmac(
    tmp_path: Path, key: KeyPair, capsys: pytest.CaptureFixture[str]
) -> None:
    layout = encrypted(tmp_path, key)
    desc, _ = layout.manifest("x")
    raw = json.loads(layout.read_blob(desc))
    pubopts = raw["layers"][1]["annotations"]["org.opencontainers.image.enc.pubopts"]
    options = json.loads(base64.b64decode(pubopts))
    options["hmac"] = base64.b64encode(bytes(32)).decode()
    raw["layers"][1]["annotations"]["org.opencontainers.image.enc.pubopts"] = base64.b64encode(
        json.dumps(options).encode()
    ).decode()
    layout.add_manifest(raw, "x")
    existing = tmp_path / "existing"
    build_image(existing, "other", ImageSpec(layers=[tar_bytes([Entry(name="o")])]))
    before = files(existing)
    for dest in (tmp_path / "new", existing):
        code = main(
            ["image", "decrypt", f"{layout.path}:x", f"{dest}:x", "--key", str(key.private)]
        )
        err = capsys.readouterr().err
        assert code == 1
        assert err.startswith("trusthook: layer 1 (sha256:") and "HMAC mismatch" in err
    assert not (tmp_path / "new").exists()
    assert files(existing) == before


def test_decrypt_removes_what_it_wrote_when_pass_two_fails(
    tmp_path: Path, key: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    layout = encrypted(tmp_path, key)
    real = crypt.decrypted_chunks
    calls = []

    def second_fails(
        source: Layout, desc: Descriptor, layer_key: LayerKey, what: str
    ) -> Iterator[bytes]:
        calls.append(what)
        if len(calls) == 2:
            raise ImageCryptError(f"{what}: the blob changed")
        return real(source, desc, layer_key, what)

    monkeypatch.setattr(crypt, "decrypted_chunks", second_fails)
    dest = tmp_path / "out"
    dest.mkdir()
    assert main(["image", "decrypt", f"{layout.path}:x", str(dest), "--key", str(key.private)]) == 1
    assert list(dest.iterdir()) == []  # the directory was there, empty: it stays, empty


def test_encrypt_and_decrypt_write_0644_files_under_umask_022(tmp_path: Path, key: KeyPair) -> None:
    plain = image(tmp_path, tar_bytes([Entry(name="f")]))
    old = os.umask(0o022)
    try:
        assert (
            main(["image", "encrypt", plain, f"{tmp_path / 'e'}:x", "--recipient", str(key.public)])
            == 0
        )
        assert (
            main(
                [
                    "image",
                    "decrypt",
                    f"{tmp_path / 'e'}:x",
                    f"{tmp_path / 'd'}:x",
                    "--key",
                    str(key.private),
                ]
            )
            == 0
        )
    finally:
        os.umask(old)
    for out in (tmp_path / "e", tmp_path / "d"):
        modes = {str(p.relative_to(out)): stat.S_IMODE(p.stat().st_mode) for p in out.rglob("*")}
        assert {m for p, m in modes.items() if (out / p).is_file()} == {0o644}, modes
        assert {m for p, m in modes.items() if (out / p).is_dir()} == {0o755}, modes
