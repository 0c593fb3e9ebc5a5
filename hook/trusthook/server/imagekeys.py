"""The server's key-encryption keys for images: created here, never exported in private form.

Each key is ``<state_dir>/image-keys/NAME.pem`` (PKCS#8, mode 0600, directory 0700). Images are
encrypted to the public half (``trusthook server keys public NAME``); releases try every key.
Keys are read when a release needs them, so a new key works without a restart.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwcrypto import jwk

from trusthook.errors import ConfigError
from trusthook.image.keywrap import load_private_key

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
KINDS = ("rsa", "ec")


def _path(directory: Path, name: str) -> Path:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"image key name {name!r} must match {_NAME.pattern}")
    return directory / f"{name}.pem"


def create_key(directory: Path, name: str, kind: str) -> Path:
    """Create the key ``name`` (RSA-3072 or EC P-256); refuses to replace an existing one."""
    if kind not in KINDS:
        raise ConfigError(f"image key type {kind!r}: expected one of {', '.join(KINDS)}")
    path = _path(directory, name)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = (
        rsa.generate_private_key(65537, 3072)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        raise ConfigError(
            f"image key {name!r} already exists ({path}); keys are never replaced"
        ) from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return path


def public_pem(directory: Path, name: str) -> bytes:
    """The public half of key ``name``, PEM: what ``trusthook image encrypt`` takes."""
    path = _path(directory, name)
    if not path.exists():
        raise ConfigError(f"no image key {name!r} in {directory}")
    key = load_private_key(path)
    return key.export_to_pem(private_key=False)


def list_keys(directory: Path) -> list[str]:
    """The names of the keys in ``directory``."""
    if not directory.is_dir():
        return []
    return sorted(p.stem for p in directory.glob("*.pem"))


def load_keys(directory: Path) -> list[jwk.JWK]:
    """Every key in ``directory``, for unwrapping layer keys."""
    return [load_private_key(_path(directory, name)) for name in list_keys(directory)]
