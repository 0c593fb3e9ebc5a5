"""ocicrypt's JWE key wrapping: layer private options wrapped to one or many recipients.

The ``org.opencontainers.image.enc.keys.jwe`` annotation is a comma-joined list of base64 (standard,
padded) JWE JSON serialisations. Each JWE has A256GCM content encryption and one recipient
(flattened JSON, ``alg`` in the protected header, as go-jose writes it) or several (general JSON,
``alg`` per recipient). Key algorithms: RSA-OAEP (default for RSA keys), RSA-OAEP-256,
ECDH-ES+A128KW, ECDH-ES+A192KW, ECDH-ES+A256KW (default for EC keys); a JWK's ``alg`` chooses.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from jwcrypto import jwe, jwk
from jwcrypto.common import JWException

from trusthook.common import b64
from trusthook.errors import ImageCryptError

CONTENT_ALG = "A256GCM"
RSA_ALGS = ("RSA-OAEP", "RSA-OAEP-256")
EC_ALGS = ("ECDH-ES+A128KW", "ECDH-ES+A192KW", "ECDH-ES+A256KW")
MAX_WRAPPED = 64 << 10  # one wrapped-key document; far above any real one


@dataclass(frozen=True)
class Recipient:
    """A public key and the JWE key-management algorithm used to wrap to it."""

    key: jwk.JWK
    alg: str


def _load_jwk(path: Path, *, private: bool) -> jwk.JWK:
    what = "private" if private else "public"
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageCryptError(f"{what} key {path} cannot be read: {e.strerror}") from None
    try:
        is_jwk = data.lstrip().startswith(b"{")
        key = jwk.JWK.from_json(data) if is_jwk else jwk.JWK.from_pem(data)
    except (JWException, ValueError, TypeError) as e:
        raise ImageCryptError(
            f"{what} key {path}: not a PEM or JWK {what} key ({e}); "
            "encrypted PEM keys are not supported"
        ) from None
    if key.get("kty") not in ("RSA", "EC"):
        raise ImageCryptError(f"{what} key {path}: only RSA and EC keys, got {key.get('kty')}")
    if key.has_private != private:
        raise ImageCryptError(
            f"{path} is a {'private' if key.has_private else 'public'} key, expected a {what} key"
        )
    return key


def load_recipient(spec: str) -> Recipient:
    """A recipient from ``[jwe:]PATH`` to a PEM public key or a JWK (whose ``alg`` is honoured)."""
    path = Path(spec.removeprefix("jwe:"))
    key = _load_jwk(path, private=False)
    allowed = RSA_ALGS if key.get("kty") == "RSA" else EC_ALGS
    alg = key.get("alg") or allowed[0 if key.get("kty") == "RSA" else -1]
    if alg not in allowed:
        raise ImageCryptError(
            f"public key {path}: alg {alg!r} is not one of {', '.join(allowed)} "
            f"for a {key.get('kty')} key"
        )
    return Recipient(key=key, alg=alg)


def load_private_key(path: Path) -> jwk.JWK:
    """A decryption key from a PEM private key or a private JWK."""
    return _load_jwk(path, private=True)


def wrap(plaintext: bytes, recipients: Sequence[Recipient]) -> str:
    """The annotation value wrapping ``plaintext`` to every recipient (one JWE)."""
    if not recipients:
        raise ImageCryptError("encryption needs at least one recipient key")
    if len(recipients) == 1:
        protected = {"alg": recipients[0].alg, "enc": CONTENT_ALG}
        token = jwe.JWE(plaintext, protected=json.dumps(protected))
        token.add_recipient(recipients[0].key)
    else:
        token = jwe.JWE(plaintext, protected=json.dumps({"enc": CONTENT_ALG}))
        for r in recipients:
            token.add_recipient(r.key, header=json.dumps({"alg": r.alg}))
    return b64.encode(token.serialize(compact=False).encode())


def _documents(annotation: str, what: str) -> list[str]:
    documents = []
    for i, part in enumerate(annotation.split(",")):
        if len(part) > MAX_WRAPPED:
            raise ImageCryptError(f"{what}: wrapped key {i} is too large ({len(part)} bytes)")
        raw = b64.decode(part, f"{what}: wrapped key {i}", ImageCryptError)
        try:
            documents.append(raw.decode())
        except UnicodeDecodeError:
            raise ImageCryptError(f"{what}: wrapped key {i} is not JSON text") from None
    return documents


def recipient_algs(annotation: str, what: str) -> list[str]:
    """The key algorithm of every recipient in a wrapped-keys annotation (for ``inspect``)."""
    algs = []
    for doc in _documents(annotation, what):
        try:
            obj = json.loads(doc)
            protected = json.loads(base64.urlsafe_b64decode(obj["protected"] + "=="))
        except (ValueError, RecursionError, KeyError, TypeError) as e:
            raise ImageCryptError(f"{what}: a wrapped key is not JWE JSON: {e}") from None
        recipients = obj.get("recipients", [obj])
        if (
            not isinstance(protected, dict)
            or not isinstance(recipients, list)
            or not all(isinstance(r, dict) for r in recipients)
            or not all(isinstance(r.get("header", {}), dict) for r in recipients)
        ):
            raise ImageCryptError(
                f"{what}: a wrapped key is not JWE JSON: got a protected header, recipients or"
                " recipient header that is not an object, expected objects"
            )
        algs += [str(r.get("header", {}).get("alg") or protected.get("alg")) for r in recipients]
    return algs


def unwrap(annotation: str, keys: Sequence[jwk.JWK], what: str) -> bytes:
    """The plaintext wrapped in ``annotation`` for any of ``keys``; else an ImageCryptError."""
    for doc in _documents(annotation, what):
        for key in keys:
            token = jwe.JWE()
            # Only ocicrypt's algorithms: any other "alg" or "enc" fails like a wrong key.
            token.allowed_algs = [*RSA_ALGS, *EC_ALGS, CONTENT_ALG]
            try:
                token.deserialize(doc, key=key)
            except (JWException, ValueError, TypeError, KeyError):
                continue
            payload = token.payload
            if not isinstance(payload, bytes):
                raise ImageCryptError(f"{what}: the wrapped key has no payload")
            return payload
    algs = ", ".join(recipient_algs(annotation, what))
    raise ImageCryptError(
        f"{what}: none of the {len(keys)} decryption key(s) is a recipient (recipients: {algs})"
    )
