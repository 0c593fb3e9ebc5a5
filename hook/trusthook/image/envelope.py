"""The key-release envelope: layer private options sealed to one host's TPM release key. Pure.

The server draws a 32-byte seed, encrypts it with RSA-OAEP-SHA256 (no label) to the host's
certified release key, and encrypts the payload with AES-256-GCM under the seed, a 12-byte IV and
associated data binding the answer to one request: ``"trusthook-release/v1" NUL host_id NUL
image NUL nonce``. Only that TPM can decrypt the seed (TPM2_RSA_Decrypt); the associated data
stops an answer from being replayed for another image, host or request.

Payload: JSON ``{"layers": {"<encrypted layer digest>": "<base64 private options JSON>"}}``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from trusthook.common import b64
from trusthook.common.jsonobject import parse_object
from trusthook.errors import ImageCryptError
from trusthook.image.model import check_digest

SEED_SIZE = 32
IV_SIZE = 12
OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def associated_data(*, host_id: str, image: str, nonce: bytes) -> bytes:
    """What one release answer is bound to."""
    return b"\0".join([b"trusthook-release/v1", host_id.encode(), image.encode(), nonce])


def _unb64(value: object, what: str) -> bytes:
    return b64.decode(value, f"released keys: {what}", ImageCryptError)


def seal(key: rsa.RSAPublicKey, layers: Mapping[str, bytes], aad: bytes) -> dict[str, str]:
    """The envelope of ``layers`` (layer digest to private options JSON) for ``key``."""
    seed = secrets.token_bytes(SEED_SIZE)
    iv = secrets.token_bytes(IV_SIZE)
    payload = json.dumps({"layers": {d: b64.encode(o) for d, o in layers.items()}}).encode()
    return {
        "encrypted_seed": b64.encode(key.encrypt(seed, OAEP)),
        "iv": b64.encode(iv),
        "ciphertext": b64.encode(AESGCM(seed).encrypt(iv, payload, aad)),
    }


def open_sealed(
    envelope: Mapping[str, Any], decrypt_seed: Callable[[bytes], bytes], aad: bytes
) -> dict[str, bytes]:
    """The layer options in ``envelope``; ``decrypt_seed`` is the TPM's RSA decryption."""
    seed = decrypt_seed(_unb64(envelope.get("encrypted_seed"), "encrypted_seed"))
    iv = _unb64(envelope.get("iv"), "iv")
    if len(seed) != SEED_SIZE or len(iv) != IV_SIZE:
        raise ImageCryptError("released keys: the seed or IV has the wrong size")
    try:
        payload = AESGCM(seed).decrypt(iv, _unb64(envelope.get("ciphertext"), "ciphertext"), aad)
    except InvalidTag:
        raise ImageCryptError(
            "released keys: the answer does not decrypt for this host, image and request"
        ) from None
    layers = parse_object(payload, "released keys", ImageCryptError).get("layers")
    if not isinstance(layers, dict):
        raise ImageCryptError("released keys: 'layers' must be a JSON object")
    return {
        check_digest(digest, "released layer"): _unb64(options, f"layer {digest[:19]}")
        for digest, options in layers.items()
    }
