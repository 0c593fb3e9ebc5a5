"""ocicrypt's layer cipher, AES_256_CTR_HMAC_SHA256, and its option documents. Pure.

Per layer: a fresh 32-byte key and a 16-byte nonce that is the whole initial counter block
(big-endian, the full block increments); HMAC-SHA256 with the same key over the ciphertext only.
The private options (key, nonce, digest of the plaintext blob) are what gets wrapped to the
recipients; the public options (cipher name, HMAC) travel base64-encoded in the
``org.opencontainers.image.enc.pubopts`` annotation. Both are JSON with Go's encoding of byte
strings (standard base64 with padding) and Go's field order.
"""

from __future__ import annotations

import hmac
import json
import secrets
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes

from trusthook.common import b64
from trusthook.common.jsonobject import parse_object
from trusthook.errors import ImageCryptError
from trusthook.image.model import check_digest

CIPHER_NAME = "AES_256_CTR_HMAC_SHA256"
KEY_SIZE = 32
NONCE_SIZE = 16


def _unb64(value: object, what: str, size: int) -> bytes:
    data = b64.decode(value, what, ImageCryptError)
    if len(data) != size:
        raise ImageCryptError(f"{what} must be {size} bytes, got {len(data)}")
    return data


def _cipher_options(obj: dict[str, Any], what: str) -> dict[str, Any]:
    options = obj.get("cipheroptions")
    if options is None:
        return {}
    if not isinstance(options, dict):
        raise ImageCryptError(f"{what}: cipheroptions must be a JSON object")
    return options


@dataclass(frozen=True, kw_only=True)
class PrivateOptions:
    """What is wrapped to the recipients: the layer key, the nonce, the plaintext blob's digest."""

    symkey: bytes
    nonce: bytes
    digest: str

    @classmethod
    def generate(cls, digest: str) -> PrivateOptions:
        """Fresh random key and nonce for a layer whose plaintext blob has ``digest``."""
        return cls(
            symkey=secrets.token_bytes(KEY_SIZE),
            nonce=secrets.token_bytes(NONCE_SIZE),
            digest=digest,
        )

    def to_json(self) -> bytes:
        """Go's JSON for ocicrypt's PrivateLayerBlockCipherOptions."""
        doc = {
            "symkey": b64.encode(self.symkey),
            "digest": self.digest,
            "cipheroptions": {"nonce": b64.encode(self.nonce)},
        }
        return json.dumps(doc, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PrivateOptions:
        """Parse unwrapped private options; an ImageCryptError if anything is off."""
        obj = parse_object(data, "layer private options", ImageCryptError)
        options = _cipher_options(obj, "layer private options")
        digest = check_digest(obj.get("digest"), "layer private options digest")
        return cls(
            symkey=_unb64(obj.get("symkey"), "layer private options symkey", KEY_SIZE),
            nonce=_unb64(options.get("nonce"), "layer private options nonce", NONCE_SIZE),
            digest=digest,
        )


@dataclass(frozen=True, kw_only=True)
class PublicOptions:
    """The cipher name and the HMAC of the ciphertext, in the layer's pubopts annotation."""

    hmac: bytes

    def to_annotation(self) -> str:
        """The base64 annotation value (Go's JSON for PublicLayerBlockCipherOptions)."""
        doc = {"cipher": CIPHER_NAME, "hmac": b64.encode(self.hmac), "cipheroptions": {}}
        return b64.encode(json.dumps(doc, separators=(",", ":")).encode())

    @classmethod
    def from_annotation(cls, value: str) -> PublicOptions:
        """Parse a pubopts annotation; refuses any cipher but AES_256_CTR_HMAC_SHA256."""
        obj = parse_object(
            b64.decode(value, "pubopts annotation", ImageCryptError), "pubopts", ImageCryptError
        )
        _cipher_options(obj, "pubopts")
        if obj.get("cipher") != CIPHER_NAME:
            raise ImageCryptError(
                f"pubopts: cipher must be {CIPHER_NAME}, got {obj.get('cipher')!r}"
            )
        return cls(hmac=_unb64(obj.get("hmac"), "pubopts hmac", 32))


class LayerCipher:
    """AES-256-CTR plus HMAC-SHA256 over the ciphertext, fed in chunks (encrypt or decrypt)."""

    def __init__(self, options: PrivateOptions, *, encrypt: bool) -> None:
        cipher = Cipher(algorithms.AES(options.symkey), modes.CTR(options.nonce))
        self._ctx: CipherContext = cipher.encryptor() if encrypt else cipher.decryptor()
        self._mac = crypto_hmac.HMAC(options.symkey, hashes.SHA256())
        self._encrypt = encrypt

    def update(self, data: bytes) -> bytes:
        """Encrypt or decrypt the next chunk."""
        out = self._ctx.update(data)
        self._mac.update(out if self._encrypt else data)
        return out

    def finalize(self) -> bytes:
        """The HMAC of all the ciphertext."""
        self._ctx.finalize()
        return self._mac.finalize()


def check_mac(got: bytes, expected: bytes, what: str) -> None:
    """An ImageCryptError naming ``what`` unless the two HMACs are equal (constant time)."""
    if not hmac.compare_digest(got, expected):
        raise ImageCryptError(f"{what}: HMAC mismatch, the ciphertext was tampered with")


class Authenticator:
    """HMAC-SHA256 of a ciphertext, checked before any of it is decrypted."""

    def __init__(self, options: PrivateOptions) -> None:
        self._mac = crypto_hmac.HMAC(options.symkey, hashes.SHA256())

    def update(self, ciphertext: bytes) -> None:
        """Feed the next chunk of ciphertext."""
        self._mac.update(ciphertext)

    def verify(self, expected: bytes, what: str) -> None:
        """An ImageCryptError naming ``what`` unless the HMAC is ``expected``."""
        check_mac(self._mac.finalize(), expected, what)
