"""Strict standard base64 (padded, nothing but the alphabet): how every byte string trusthook
puts in JSON is encoded. Standard library only."""

from __future__ import annotations

import base64


def encode(data: bytes) -> str:
    """``data`` as standard base64 text."""
    return base64.b64encode(data).decode("ascii")


def decode(value: object, what: str, error: type[Exception]) -> bytes:
    """The bytes ``value`` encodes; ``error`` naming ``what`` if it is not base64 text."""
    if not isinstance(value, str):
        raise error(f"{what} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except ValueError:  # binascii.Error, or text that is not ASCII
        raise error(f"{what} is not valid base64") from None
