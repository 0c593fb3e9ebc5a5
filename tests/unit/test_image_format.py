"""ocicrypt's formats without skopeo: the layer cipher, option documents, JWE wrapping, models."""

from __future__ import annotations

import base64
import gzip
import io
import json
import os
from pathlib import Path

import pytest
import zstandard
from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given
from hypothesis import strategies as st
from jwcrypto import jwe, jwk

from tests.keys import KeyPair, pem_pair
from trusthook._devenv.ociimage import Entry, ImageSpec, build_image, tar_bytes
from trusthook.errors import ImageCryptError, ImageError
from trusthook.image.cipher import Authenticator, LayerCipher, PrivateOptions, PublicOptions
from trusthook.image.crypt import (
    authenticate_layer,
    decrypted_chunks,
    encrypt_image,
    unwrap_layer_key,
)
from trusthook.image.keywrap import (
    load_private_key,
    load_recipient,
    recipient_algs,
    unwrap,
    wrap,
)
from trusthook.image.layout import Layout, parse_reference
from trusthook.image.model import ImageConfig, LayerType, Manifest
from trusthook.image.rootfs import local_keys, released_keys, unpack_image
from trusthook.image.seal import seal_image
from trusthook.image.stream import GzipReader, LayerStream, decompressing
from trusthook.image.unpack import ExtractPolicy

DIGEST = "sha256:" + "ab" * 32


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, KeyPair]:
    tmp = tmp_path_factory.mktemp("keys")
    return {
        "rsa": pem_pair(tmp, "rsa", rsa.generate_private_key(65537, 2048)),
        "ec": pem_pair(tmp, "ec", ec.generate_private_key(ec.SECP256R1())),
        "ec384": pem_pair(tmp, "ec384", ec.generate_private_key(ec.SECP384R1())),
    }


def test_ctr_is_the_whole_block_counter_and_hmac_covers_ciphertext() -> None:
    options = PrivateOptions(symkey=bytes(range(32)), nonce=b"\xff" * 16, digest=DIGEST)
    plain = os.urandom(100_000)
    enc = LayerCipher(options, encrypt=True)
    ciphertext = enc.update(plain[:12345]) + enc.update(plain[12345:])
    mac = enc.finalize()
    # An independent computation: the nonce is the initial counter block, all 128 bits count.
    ref = Cipher(algorithms.AES(options.symkey), modes.CTR(b"\xff" * 16)).encryptor()
    assert ciphertext == ref.update(plain) + ref.finalize()
    ref_mac = hmac.HMAC(options.symkey, hashes.SHA256())
    ref_mac.update(ciphertext)
    assert mac == ref_mac.finalize()
    dec = LayerCipher(options, encrypt=False)
    assert dec.update(ciphertext) == plain
    assert dec.finalize() == mac


def test_authenticator_refuses_one_flipped_bit() -> None:
    options = PrivateOptions.generate(DIGEST)
    enc = LayerCipher(options, encrypt=True)
    ciphertext = bytearray(enc.update(b"x" * 5000))
    mac = enc.finalize()
    ciphertext[4999] ^= 1
    auth = Authenticator(options)
    auth.update(bytes(ciphertext))
    with pytest.raises(ImageCryptError, match="HMAC mismatch"):
        auth.verify(mac, "layer 0")


def test_option_documents_are_gos_json() -> None:
    options = PrivateOptions(symkey=b"k" * 32, nonce=b"n" * 16, digest=DIGEST)
    assert json.loads(options.to_json()) == {
        "symkey": base64.b64encode(b"k" * 32).decode(),
        "digest": DIGEST,
        "cipheroptions": {"nonce": base64.b64encode(b"n" * 16).decode()},
    }
    assert PrivateOptions.from_json(options.to_json()) == options
    public = PublicOptions(hmac=b"h" * 32)
    assert json.loads(base64.b64decode(public.to_annotation())) == {
        "cipher": "AES_256_CTR_HMAC_SHA256",
        "hmac": base64.b64encode(b"h" * 32).decode(),
        "cipheroptions": {},
    }
    assert PublicOptions.from_annotation(public.to_annotation()) == public


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (b"[]", "must be a JSON object"),
        (b'{"symkey":"AAAA","digest":"sha256:00","cipheroptions":{}}', "digest"),
        (b'{"symkey":"AAAA","digest":"' + DIGEST.encode() + b'"}', "symkey must be 32 bytes"),
        (
            b'{"symkey":"' + base64.b64encode(b"k" * 32) + b'","digest":"' + DIGEST.encode() + b'"'
            b',"cipheroptions":{"nonce":"!!"}}',
            "nonce is not valid base64",
        ),
    ],
)
def test_bad_private_options_are_refused(doc: bytes, message: str) -> None:
    with pytest.raises(ImageError, match=message):
        PrivateOptions.from_json(doc)


def test_other_ciphers_are_refused() -> None:
    doc = base64.b64encode(b'{"cipher":"AES_128_GCM","hmac":"","cipheroptions":{}}').decode()
    with pytest.raises(ImageCryptError, match="cipher must be AES_256_CTR_HMAC_SHA256"):
        PublicOptions.from_annotation(doc)


@pytest.mark.parametrize(("name", "alg"), [("rsa", "RSA-OAEP"), ("ec", "ECDH-ES+A256KW")])
def test_one_recipient_is_flattened_json_with_alg_protected(
    keys: dict[str, KeyPair], name: str, alg: str
) -> None:
    priv, pub = keys[name].private, keys[name].public
    annotation = wrap(b"secret", [load_recipient(f"jwe:{pub}")])
    doc = json.loads(base64.b64decode(annotation))
    assert "recipients" not in doc
    protected = json.loads(base64.urlsafe_b64decode(doc["protected"] + "=="))
    assert protected == {"alg": alg, "enc": "A256GCM"}
    assert unwrap(annotation, [load_private_key(priv)], "layer 0") == b"secret"


def test_several_recipients_are_general_json_and_each_key_unwraps(
    keys: dict[str, KeyPair],
) -> None:
    recipients = [load_recipient(str(keys[n].public)) for n in ("rsa", "ec", "ec384")]
    annotation = wrap(b"secret", recipients)
    assert len(json.loads(base64.b64decode(annotation))["recipients"]) == 3
    assert recipient_algs(annotation, "l") == ["RSA-OAEP", "ECDH-ES+A256KW", "ECDH-ES+A256KW"]
    for n in ("rsa", "ec", "ec384"):
        assert unwrap(annotation, [load_private_key(keys[n].private)], "l") == b"secret"


def test_comma_joined_wrapped_keys_are_all_tried(keys: dict[str, KeyPair]) -> None:
    first = wrap(b"secret", [load_recipient(str(keys["rsa"].public))])
    second = wrap(b"secret", [load_recipient(str(keys["ec"].public))])
    assert unwrap(f"{first},{second}", [load_private_key(keys["ec"].private)], "l") == b"secret"


def test_a_wrong_key_is_named_in_one_line(keys: dict[str, KeyPair]) -> None:
    annotation = wrap(b"secret", [load_recipient(str(keys["rsa"].public))])
    with pytest.raises(ImageCryptError, match=r"layer 2: none of the 1 decryption key\(s\)"):
        unwrap(annotation, [load_private_key(keys["ec"].private)], "layer 2")


@pytest.mark.parametrize(
    "alg", ["RSA-OAEP-256", "ECDH-ES+A128KW", "ECDH-ES+A192KW", "RSA1_5", "dir"]
)
def test_jwk_alg_chooses_the_algorithm(tmp_path: Path, alg: str) -> None:
    kty = {"kty": "RSA", "size": 2048} if alg.startswith("RSA") else {"kty": "EC", "crv": "P-256"}
    key = jwk.JWK.generate(**kty)
    public = json.loads(key.export_public())
    public["alg"] = alg
    (tmp_path / "pub.jwk").write_text(json.dumps(public))
    if alg in ("RSA1_5", "dir"):
        with pytest.raises(ImageCryptError, match=f"alg '{alg}' is not one of"):
            load_recipient(str(tmp_path / "pub.jwk"))
        return
    annotation = wrap(b"s", [load_recipient(str(tmp_path / "pub.jwk"))])
    assert recipient_algs(annotation, "l") == [alg]
    assert unwrap(annotation, [key], "l") == b"s"


def test_key_files_must_be_the_right_kind(keys: dict[str, KeyPair], tmp_path: Path) -> None:
    with pytest.raises(ImageCryptError, match="is a private key, expected a public key"):
        load_recipient(str(keys["rsa"].private))
    with pytest.raises(ImageCryptError, match="is a public key, expected a private key"):
        load_private_key(keys["rsa"].public)
    (tmp_path / "junk").write_bytes(b"not a key")
    with pytest.raises(ImageCryptError, match="not a PEM or JWK public key"):
        load_recipient(str(tmp_path / "junk"))
    with pytest.raises(ImageCryptError, match="cannot be read"):
        load_recipient(str(tmp_path / "missing"))


@given(st.text(max_size=300))
def test_arbitrary_annotations_raise_only_our_errors(text: str) -> None:
    key = jwk.JWK.generate(kty="EC", crv="P-256")
    with pytest.raises(ImageError):
        unwrap(text, [key], "l")


@pytest.mark.parametrize(
    ("media_type", "compression", "encrypted"),
    [
        ("application/vnd.oci.image.layer.v1.tar", "none", False),
        ("application/vnd.oci.image.layer.v1.tar+gzip", "gzip", False),
        ("application/vnd.oci.image.layer.v1.tar+zstd+encrypted", "zstd", True),
    ],
)
def test_layer_media_types(media_type: str, compression: str, encrypted: bool) -> None:
    kind = LayerType.parse(media_type)
    assert (kind.compression, kind.encrypted) == (compression, encrypted)
    assert kind.media_type == media_type


def test_docker_layers_are_refused_with_a_hint() -> None:
    with pytest.raises(ImageError, match="convert Docker images to OCI"):
        LayerType.parse("application/vnd.docker.image.rootfs.diff.tar.gzip")


def test_manifest_and_config_validation() -> None:
    config = {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": DIGEST, "size": 2}
    good: dict[str, object] = {
        "schemaVersion": 2,
        "config": config,
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": DIGEST, "size": 1}
        ],
    }
    assert len(Manifest.parse(json.dumps(good).encode()).layers) == 1
    bad = dict(good, layers=[{"mediaType": "x", "digest": DIGEST, "size": 1}])
    with pytest.raises(ImageError, match="manifest layer 0"):
        Manifest.parse(json.dumps(bad).encode())
    bad = dict(good, config=dict(config, digest="sha512:00"))
    with pytest.raises(ImageError, match="manifest config digest"):
        Manifest.parse(json.dumps(bad).encode())
    with pytest.raises(ImageError, match="diff_ids must be a list"):
        ImageConfig.parse(b'{"rootfs":{"type":"layers"}}')
    with pytest.raises(ImageError, match="Entrypoint must be a list of strings"):
        ImageConfig.parse(
            b'{"rootfs":{"type":"layers","diff_ids":[]},"config":{"Entrypoint":"sh"}}'
        )


def test_references() -> None:
    assert parse_reference("oci:/x/y:tag") == (Path("/x/y"), "tag")
    assert parse_reference("/x/y") == (Path("/x/y"), None)
    assert parse_reference("dir:with/slash") == (Path("dir:with/slash"), None)


def test_multi_member_gzip_and_zstd_frames_decompress_in_bounded_reads() -> None:
    data = os.urandom(300_000) + bytes(3_000_000)
    members = gzip.compress(data[:100]) + gzip.compress(data[100:])
    reader = GzipReader(io.BytesIO(members))
    out = []
    while chunk := reader.read(65536):
        assert len(chunk) <= 65536
        out.append(chunk)
    assert b"".join(out) == data
    frames = zstandard.ZstdCompressor().compress(data[:7]) + zstandard.ZstdCompressor().compress(
        data[7:]
    )
    with LayerStream(decompressing(io.BytesIO(frames), "zstd")) as stream:
        assert stream.read(7) == data[:7]
        assert stream.drain() == "sha256:" + __import__("hashlib").sha256(data).hexdigest()


@pytest.mark.parametrize("cut", [1, 10, 100])
def test_truncated_or_corrupt_gzip_is_refused(cut: int) -> None:
    blob = gzip.compress(os.urandom(5000))
    with pytest.raises(ImageError, match="gzip stream is truncated"):
        reader = GzipReader(io.BytesIO(blob[:-cut]))
        while reader.read():
            pass
    with pytest.raises(ImageError, match="gzip stream is corrupt"):
        reader = GzipReader(io.BytesIO(blob[:20] + b"\xff" * 30 + blob[50:]))
        while reader.read():
            pass


def test_a_producer_error_reaches_the_reader() -> None:
    with LayerStream(GzipReader(io.BytesIO(b"not gzip"))) as stream, pytest.raises(ImageError):
        stream.read(10)


def test_pass_two_checks_the_hmac_again(tmp_path: Path, keys: dict[str, KeyPair]) -> None:
    """A blob that changes after pass 1 (authenticate_layer) is caught at the end of pass 2."""
    build_image(
        tmp_path / "plain", "x", ImageSpec(layers=[tar_bytes([Entry(name="f", data=b"x" * 9000)])])
    )
    layout = Layout.open_or_create(tmp_path / "enc")
    encrypt_image(
        Layout.open(tmp_path / "plain"), "x", layout, "x", [load_recipient(str(keys["ec"].public))]
    )
    _, manifest = layout.manifest("x")
    desc = manifest.layers[0]
    key = unwrap_layer_key(desc, [load_private_key(keys["ec"].private)], "layer 0")
    authenticate_layer(layout, desc, key, "layer 0")
    blob = layout.blob_path(desc.digest)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 1
    blob.write_bytes(bytes(data))
    with pytest.raises(ImageCryptError, match="layer 0: HMAC mismatch"):
        b"".join(decrypted_chunks(layout, desc, key, "layer 0"))


def test_a_jwe_with_other_content_encryption_is_refused() -> None:
    key = jwk.JWK.generate(kty="EC", crv="P-256")
    token = jwe.JWE(b"secret", protected=json.dumps({"alg": "ECDH-ES+A256KW", "enc": "A128GCM"}))
    token.add_recipient(jwk.JWK.from_json(key.export_public()))
    annotation = base64.b64encode(token.serialize(compact=False).encode()).decode()
    with pytest.raises(ImageCryptError, match="none of the 1 decryption key"):
        unwrap(annotation, [key], "layer 0")


def _layout_with(tmp_path: Path, spec: ImageSpec) -> Layout:
    build_image(tmp_path / "img", "x", spec)
    return Layout.open(tmp_path / "img")


def test_a_config_with_another_number_of_diff_ids_is_refused(tmp_path: Path) -> None:
    layout = _layout_with(tmp_path, ImageSpec(layers=[tar_bytes([Entry(name="f")])]))
    desc, manifest = layout.manifest("x")
    raw = json.loads(layout.read_blob(desc))
    config = json.loads(layout.read_blob(manifest.config))
    config["rootfs"]["diff_ids"].append("sha256:" + "0" * 64)
    blob = json.dumps(config).encode()
    raw["config"].update(digest=layout.write_blob(blob), size=len(blob))
    layout.add_manifest(raw, "x")
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ImageError, match="the manifest has 1 layers, the config 2 diff_ids"):
        unpack_image(layout, "x", root, keys=local_keys([]), policy=ExtractPolicy())
    assert list(root.iterdir()) == []


def test_a_layer_the_server_released_no_key_for_is_refused(
    tmp_path: Path, keys: dict[str, KeyPair]
) -> None:
    plain = _layout_with(tmp_path, ImageSpec(layers=[tar_bytes([Entry(name="f")])]))
    layout = Layout.open_or_create(tmp_path / "enc")
    encrypt_image(plain, "x", layout, "x", [load_recipient(str(keys["ec"].public))])
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(ImageCryptError, match="the server released no key for this layer"):
        unpack_image(layout, "x", root, keys=released_keys({}), policy=ExtractPolicy())


def test_sealing_refuses_a_user_given_by_name(tmp_path: Path) -> None:
    layout = _layout_with(tmp_path, ImageSpec(layers=[tar_bytes([Entry(name="f")])], user="app"))
    with pytest.raises(ImageError, match="user 'app' is a name"):
        seal_image(layout, "x", "app:sealed", tmp_path / "sealed.tar")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img"]
