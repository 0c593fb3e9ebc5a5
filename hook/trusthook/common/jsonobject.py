"""Parse bytes that must hold one JSON object. Standard library only (the shim uses it)."""

from __future__ import annotations

import json
from typing import Any


def parse_object(raw: bytes, what: str, error: type[Exception]) -> dict[str, Any]:
    """The JSON object in ``raw``; anything else raises ``error`` naming ``what``."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:  # bad UTF-8, bad JSON, too deep, huge numbers
        raise error(f"{what} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{what} must be a JSON object, got {type(data).__name__}")
    return data
