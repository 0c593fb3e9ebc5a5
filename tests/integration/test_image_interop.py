"""ocicrypt interoperability with Debian's skopeo and umoci, both ways, and the unpack refusals."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.integration.imaging import (
    layered_tars,
    manifest_layers,
    skopeo,
    tree,
    umoci_rootfs,
    zstd_layers_to_tar,
)
from tests.keys import KeyPair, jwk_pair, pem_pair
from trusthook._devenv.ociimage import ImageSpec, build_image
from trusthook.cli import main
from trusthook.image.keywrap import load_private_key, load_recipient, unwrap, wrap
from trusthook.image.layout import Layout
from trusthook.image.model import ANNOTATION_JWE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    d = tmp_path_factory.mktemp("keys")
    return {
        "rsa": pem_pair(d, "rsa", rsa.generate_private_key(65537, 3072)),
        "ec": pem_pair(d, "ec", ec.generate_private_key(ec.SECP256R1())),
        "oaep256": jwk_pair(d, "oaep256", "RSA-OAEP-256"),
        "a128kw": jwk_pair(d, "a128kw", "ECDH-ES+A128KW"),
        "a192kw": jwk_pair(d, "a192kw", "ECDH-ES+A192KW"),
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One layout holding the layered image as plain tar, tar+gzip and tar+zstd."""
    layout = tmp_path_factory.mktemp("images") / "layout"
    tars = layered_tars()
    for compression in ("none", "gzip", "zstd"):
        build_image(layout, compression, ImageSpec(layers=tars, compression=compression))
    return layout


def reference_rootfs(encrypted: Path, ref: str, key: KeyPair, work: Path) -> Path:
    """What a user gets today: skopeo copy --decryption-key, then umoci unpack.

    umoci 0.4.7 cannot read zstd layers (and skopeo 1.9 does not recompress them), so zstd
    layers are decompressed with the zstd tool in between; the diff_ids stay the same.
    """
    skopeo(
        "--decryption-key",
        str(key.private),
        f"oci:{encrypted}:{ref}",
        f"oci:{work / 'plain'}:{ref}",
    )
    zstd_layers_to_tar(work / "plain", ref)
    return umoci_rootfs(work / "plain", ref, work / "bundle")


@pytest.mark.parametrize(
    ("compression", "recipients", "key"),
    [
        ("gzip", ("rsa",), "rsa"),
        ("zstd", ("ec",), "ec"),
        ("none", ("oaep256",), "oaep256"),
        ("gzip", ("rsa", "ec", "oaep256"), "ec"),
    ],
)
# skopeo 1.9 cannot encrypt to EC keys given as JWK (go-jose: "unknown/unsupported
# algorithm") and ignores a JWK's "alg" (RSA keys get RSA-OAEP), so RSA-OAEP-256 and
# ECDH-ES+A128KW/+A192KW are covered from trusthook to skopeo only.
def test_skopeo_encrypted_images_unpack_to_what_skopeo_and_umoci_give(
    tmp_path: Path,
    images: Path,
    keys: dict[str, KeyPair],
    compression: str,
    recipients: tuple[str, ...],
    key: str,
) -> None:
    enc = tmp_path / "enc"
    skopeo(
        *(a for r in recipients for a in ("--encryption-key", f"jwe:{keys[r].public}")),
        f"oci:{images}:{compression}",
        f"oci:{enc}:app",
    )
    root = tmp_path / "rootfs"
    code = main(
        [
            "image",
            "unpack",
            f"{enc}:app",
            str(root),
            "--key",
            str(keys[key].private),
            "--setuid",
            "keep",
        ]
    )
    assert code == 0
    expected = tree(reference_rootfs(enc, "app", keys[key], tmp_path))
    got = tree(root)
    assert got == expected
    assert "etc/app.conf" not in got and "var/lib/gone" not in got  # whiteouts applied
    assert sorted(p for p in got if p.startswith("opt/data/")) == ["opt/data/new"]  # opaque


@pytest.mark.parametrize(
    ("compression", "recipients"),
    [("gzip", ("rsa",)), ("zstd", ("ec", "oaep256")), ("none", ("a128kw", "rsa", "a192kw"))],
)
def test_trusthook_encrypted_images_decrypt_with_skopeo_to_the_original_layers(
    tmp_path: Path,
    images: Path,
    keys: dict[str, KeyPair],
    compression: str,
    recipients: tuple[str, ...],
) -> None:
    enc = tmp_path / "enc"
    args = [a for r in recipients for a in ("--recipient", f"jwe:{keys[r].public}")]
    assert main(["image", "encrypt", f"{images}:{compression}", f"{enc}:app", *args]) == 0
    original = manifest_layers(images, compression)
    encrypted = manifest_layers(enc, "app")
    assert not set(original) & set(encrypted)
    for r in recipients:  # every recipient alone can decrypt
        out = tmp_path / f"dec-{r}"
        skopeo("--decryption-key", str(keys[r].private), f"oci:{enc}:app", f"oci:{out}:app")
        assert manifest_layers(out, "app") == original


def test_trusthook_decrypts_skopeo_images_to_the_original_layers(
    tmp_path: Path, images: Path, keys: dict[str, KeyPair]
) -> None:
    enc, dec = tmp_path / "enc", tmp_path / "dec"
    skopeo("--encryption-key", f"jwe:{keys['ec'].public}", f"oci:{images}:zstd", f"oci:{enc}:app")
    assert (
        main(["image", "decrypt", f"{enc}:app", f"{dec}:app", "--key", str(keys["ec"].private)])
        == 0
    )
    assert manifest_layers(dec, "app") == manifest_layers(images, "zstd")


def test_comma_joined_wrapped_keys_decrypt_with_skopeo_and_trusthook(
    tmp_path: Path, images: Path, keys: dict[str, KeyPair]
) -> None:
    """A second recipient added later, as ocicrypt appends: ``<jwe for A>,<jwe for B>``."""
    enc = tmp_path / "enc"
    assert (
        main(
            [
                "image",
                "encrypt",
                f"{images}:gzip",
                f"{enc}:one",
                "--recipient",
                str(keys["rsa"].public),
            ]
        )
        == 0
    )
    layout = Layout.open(enc)
    _, manifest = layout.manifest("one")
    layers = []
    for desc in manifest.layers:
        wrapped = desc.annotations[ANNOTATION_JWE]
        options = unwrap(wrapped, [load_private_key(keys["rsa"].private)], "layer")
        joined = wrapped + "," + wrap(options, [load_recipient(str(keys["ec"].public))])
        annotations = dict(desc.annotations, **{ANNOTATION_JWE: joined})
        layers.append(
            desc.replace(
                media_type=desc.media_type,
                digest=desc.digest,
                size=desc.size,
                annotations=annotations,
            )
        )
    layout.add_manifest(manifest.with_layers(tuple(layers)), "two")
    skopeo(
        "--decryption-key", str(keys["ec"].private), f"oci:{enc}:two", f"oci:{tmp_path / 'dec'}:x"
    )
    assert manifest_layers(tmp_path / "dec", "x") == manifest_layers(images, "gzip")
    assert (
        main(
            [
                "image",
                "unpack",
                f"{enc}:two",
                str(tmp_path / "root"),
                "--key",
                str(keys["ec"].private),
            ]
        )
        == 0
    )


def test_inspect_names_the_recipients(
    tmp_path: Path, images: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str]
) -> None:
    enc = tmp_path / "enc"
    skopeo(
        "--encryption-key",
        f"jwe:{keys['rsa'].public}",
        "--encryption-key",
        f"jwe:{keys['oaep256'].public}",
        f"oci:{images}:gzip",
        f"oci:{enc}:app",
    )
    assert main(["image", "inspect", f"{enc}:app", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    # skopeo 1.9's ocicrypt ignores a JWK's "alg": both recipients are RSA-OAEP.
    assert [layer["recipients"] for layer in shown["layers"]] == [["RSA-OAEP", "RSA-OAEP"]] * 3
    assert all(layer["encrypted"] and layer["compression"] == "gzip" for layer in shown["layers"])


# Refusals: each leaves the target rootfs empty and exits non-zero with one line naming the fault.


@pytest.fixture
def encrypted(tmp_path: Path, images: Path, keys: dict[str, KeyPair]) -> Path:
    enc = tmp_path / "enc"
    skopeo("--encryption-key", f"jwe:{keys['rsa'].public}", f"oci:{images}:gzip", f"oci:{enc}:app")
    return enc


def _rewrite_manifest(layout_dir: Path, ref: str, edit: object) -> str:
    layout = Layout.open(layout_dir)
    desc, _ = layout.manifest(ref)
    manifest = json.loads(layout.read_blob(desc))
    assert callable(edit)
    edit(layout, manifest)
    return layout.add_manifest(manifest, ref).digest


def _unpack_fails(
    enc: Path,
    tmp_path: Path,
    key: Path,
    message: str,
    capsys: pytest.CaptureFixture[str],
    *extra: str,
) -> None:
    root = tmp_path / "rootfs"
    assert main(["image", "unpack", f"{enc}:app", str(root), "--key", str(key), *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err, err
    assert len(err.splitlines()) == 1
    assert not root.exists()  # emptied, and removed since the command made it


def _flip_bit(path: Path, offset: int) -> bytes:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    return bytes(data)


def test_wrong_key_is_refused(
    encrypted: Path, tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str]
) -> None:
    _unpack_fails(
        encrypted,
        tmp_path,
        keys["ec"].private,
        "none of the 1 decryption key(s) is a recipient",
        capsys,
    )


def test_a_flipped_ciphertext_bit_is_refused_by_the_manifest_digest(
    encrypted: Path, tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str]
) -> None:
    digest = manifest_layers(encrypted, "app")[2]
    blob = Layout.open(encrypted).blob_path(digest)
    blob.write_bytes(_flip_bit(blob, 1000))
    _unpack_fails(encrypted, tmp_path, keys["rsa"].private, "tampered or corrupt", capsys)


def test_a_flipped_ciphertext_bit_with_a_rewritten_manifest_is_refused_by_the_hmac(
    encrypted: Path, tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str]
) -> None:
    def edit(layout: Layout, manifest: dict[str, object]) -> None:
        layers = manifest["layers"]
        assert isinstance(layers, list)
        tampered = _flip_bit(layout.blob_path(layers[1]["digest"]), 77)
        layers[1]["digest"] = layout.write_blob(tampered)

    _rewrite_manifest(encrypted, "app", edit)
    _unpack_fails(encrypted, tmp_path, keys["rsa"].private, "HMAC mismatch", capsys)


def test_a_tampered_diff_id_is_refused_and_a_pin_refuses_the_rewritten_manifest(
    encrypted: Path, tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str]
) -> None:
    pinned = Layout.open(encrypted).resolve("app").digest

    def edit(layout: Layout, manifest: dict[str, object]) -> None:
        config_desc = manifest["config"]
        assert isinstance(config_desc, dict)
        config = json.loads(layout.blob_path(config_desc["digest"]).read_bytes())
        config["rootfs"]["diff_ids"][2] = "sha256:" + "0" * 64
        blob = json.dumps(config).encode()
        config_desc.update(digest=layout.write_blob(blob), size=len(blob))

    _rewrite_manifest(encrypted, "app", edit)
    _unpack_fails(
        encrypted, tmp_path, keys["rsa"].private, "the config's diff_id is sha256:000", capsys
    )
    _unpack_fails(
        encrypted,
        tmp_path,
        keys["rsa"].private,
        f"expected {pinned} (--pin)",
        capsys,
        "--pin",
        pinned,
    )


def test_a_tampered_wrapped_key_is_refused(
    encrypted: Path, tmp_path: Path, keys: dict[str, KeyPair], capsys: pytest.CaptureFixture[str]
) -> None:
    def edit(_layout: Layout, manifest: dict[str, object]) -> None:
        layers = manifest["layers"]
        assert isinstance(layers, list)
        doc = json.loads(base64.b64decode(layers[0]["annotations"][ANNOTATION_JWE]))
        ciphertext = bytearray(base64.urlsafe_b64decode(doc["ciphertext"] + "=="))
        ciphertext[0] ^= 1
        doc["ciphertext"] = base64.urlsafe_b64encode(bytes(ciphertext)).decode().rstrip("=")
        layers[0]["annotations"][ANNOTATION_JWE] = base64.b64encode(
            json.dumps(doc).encode()
        ).decode()

    _rewrite_manifest(encrypted, "app", edit)
    _unpack_fails(encrypted, tmp_path, keys["rsa"].private, "layer 0", capsys)
