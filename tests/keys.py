"""Key files for the image tests: PEM pairs (as ocicrypt and skopeo read them) and JWKs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwcrypto import jwk


@dataclass(frozen=True)
class KeyPair:
    """A private key file (for --decryption-key / --key) and its public key (for jwe:)."""

    private: Path
    public: Path


def pem_pair(
    directory: Path, name: str, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
) -> KeyPair:
    """PKCS#8 and SubjectPublicKeyInfo PEM files (ocicrypt cannot read SEC1 EC keys)."""
    private = directory / f"{name}.pem"
    public = directory / f"{name}.pub.pem"
    private.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return KeyPair(private, public)


def jwk_pair(directory: Path, name: str, alg: str) -> KeyPair:
    """JWK files whose ``alg`` picks the key-management algorithm."""
    params = (
        {"kty": "RSA", "size": 2048} if alg.startswith("RSA") else {"kty": "EC", "crv": "P-384"}
    )
    key = jwk.JWK.generate(**params)
    private = json.loads(key.export_private())
    public = json.loads(key.export_public())
    private["alg"] = public["alg"] = alg
    (directory / f"{name}.jwk").write_text(json.dumps(private))
    (directory / f"{name}.pub.jwk").write_text(json.dumps(public))
    return KeyPair(directory / f"{name}.jwk", directory / f"{name}.pub.jwk")
