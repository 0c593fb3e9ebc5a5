"""Content digests as OCI writes them: ``sha256:`` and 64 lowercase hex digits. Standard
library only."""

from __future__ import annotations

import hashlib
import re
from typing import TypeGuard

PREFIX = "sha256:"
_PATTERN = re.compile(r"sha256:[0-9a-f]{64}")


def is_digest(value: object) -> TypeGuard[str]:
    """Whether ``value`` is a ``sha256:<64 lowercase hex>`` string."""
    return isinstance(value, str) and _PATTERN.fullmatch(value) is not None


def sha256_of(data: bytes) -> str:
    """The ``sha256:<hex>`` digest of ``data``."""
    return PREFIX + hashlib.sha256(data).hexdigest()


def digest_string(raw: bytes) -> str:
    """A 32-byte SHA-256 digest in the ``sha256:<hex>`` form."""
    return PREFIX + raw.hex()
