"""What an unpacked layer may hold beyond plain files: the choices the host's image policy,
``trusthook image unpack`` and the extractor share. Standard library only (the CLI's parser
imports it)."""

from __future__ import annotations

from enum import StrEnum


class Devices(StrEnum):
    """Character and block device nodes in a layer (FIFOs are always created)."""

    REFUSE = "refuse"
    SKIP = "skip"
    ALLOW = "allow"


class Setuid(StrEnum):
    """setuid/setgid bits and ``security.capability`` on regular files."""

    STRIP = "strip"
    REFUSE = "refuse"
    KEEP = "keep"


def choice_values(kind: type[StrEnum]) -> list[str]:
    return [member.value for member in kind]
