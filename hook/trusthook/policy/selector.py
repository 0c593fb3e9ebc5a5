"""Placement selectors: one condition on a host's attributes, as a security officer writes it in
the policy manifest (docs/policy.md §4). Pure.

    country in [DE, FR]      the attribute is one of the values
    country not in [US]      the attribute is set and is none of the values
    zone != dmz              the attribute is set and is not the value
    pci = true               the attribute is the value (attribute values are text: "true")
    rack                     the attribute is set (to anything)
    !quarantine              the attribute is not set

A host without the attribute satisfies only ``!key``: a selector about an attribute the operator
never assigned is not met (a host is never placed somewhere by omission). Keys are admission
attribute keys; values are bare words (``[A-Za-z0-9_.:/-]``) or double-quoted text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

_KEY = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}"
_WORD = r"[A-Za-z0-9_.:/-]+"
_VALUE = rf'(?:{_WORD}|"[^"\\\x00-\x1f]*")'
_FORMS = (
    ("in", re.compile(rf"\s*(?P<key>{_KEY})\s+in\s+\[(?P<values>[^\]]*)\]\s*")),
    ("not in", re.compile(rf"\s*(?P<key>{_KEY})\s+not\s+in\s+\[(?P<values>[^\]]*)\]\s*")),
    ("!=", re.compile(rf"\s*(?P<key>{_KEY})\s*!=\s*(?P<value>{_VALUE})\s*")),
    ("=", re.compile(rf"\s*(?P<key>{_KEY})\s*==?\s*(?P<value>{_VALUE})\s*")),
    ("absent", re.compile(rf"\s*!\s*(?P<key>{_KEY})\s*")),
    ("present", re.compile(rf"\s*(?P<key>{_KEY})\s*")),
)
_LIST_ITEM = re.compile(rf"\s*(?P<value>{_VALUE})\s*(?:,|$)")
MAX_SELECTOR = 1000


class SelectorError(ValueError):
    """Why a selector's text is not one (the manifest parser adds where it stands)."""


class Op(StrEnum):
    IN = "in"
    NOT_IN = "not in"
    EQ = "="
    NE = "!="
    PRESENT = "present"
    ABSENT = "absent"


# The members as plain names: holds() runs per launch, and an enum member looked up on its
# class costs more than the comparison.
_IN, _NOT_IN, _EQ, _NE, _ABSENT = Op.IN, Op.NOT_IN, Op.EQ, Op.NE, Op.ABSENT


@dataclass(frozen=True, slots=True, kw_only=True)
class Selector:
    """One placement condition; ``text`` is the canonical way to write it."""

    key: str
    op: Op
    values: tuple[str, ...]

    @property
    def text(self) -> str:
        if self.op is Op.PRESENT:
            return self.key
        if self.op is Op.ABSENT:
            return f"!{self.key}"
        if self.op in (Op.IN, Op.NOT_IN):
            return f"{self.key} {self.op} [{', '.join(_show(v) for v in self.values)}]"
        return f"{self.key} {self.op} {_show(self.values[0])}"

    def holds(self, attributes: Mapping[str, str]) -> bool:
        """Whether a host with these attributes satisfies the selector."""
        value = attributes.get(self.key)
        op = self.op
        if op is _ABSENT:
            return value is None
        if value is None:
            return False
        if op is _IN or op is _EQ:
            return value in self.values
        if op is _NOT_IN or op is _NE:
            return value not in self.values
        return True  # PRESENT

    def explain(self, attributes: Mapping[str, str]) -> str:
        """What the host has, for a refusal that names this selector."""
        value = attributes.get(self.key)
        got = "not set" if value is None else _show(value)
        return f"placement '{self.text}': the host's {self.key} is {got}"


def _show(value: str) -> str:
    return value if re.fullmatch(_WORD, value) else '"' + value + '"'


def _unquote(value: str) -> str:
    return value[1:-1] if value.startswith('"') else value


def parse_selector(text: str) -> Selector:
    """The selector ``text`` writes; SelectorError saying what is wrong with it."""
    if len(text) > MAX_SELECTOR:
        raise SelectorError(f"got {len(text)} characters, expected at most {MAX_SELECTOR}")
    for op, pattern in _FORMS:
        m = pattern.fullmatch(text)
        if m is None:
            continue
        key = m["key"]
        if op in ("in", "not in"):
            values = _values(m["values"])
        elif op in ("=", "!="):
            values = (_unquote(m["value"]),)
        else:
            values = ()
        return Selector(key=key, op=Op(op), values=values)
    raise SelectorError(
        "expected KEY in [V, ...], KEY not in [V, ...], KEY = V, KEY != V, KEY or !KEY"
        ' (KEY an attribute name, V a word or "quoted text")'
    )


def _values(text: str) -> tuple[str, ...]:
    if not text.strip():
        raise SelectorError("the list is empty: no host could satisfy it")
    values: list[str] = []
    position = 0
    while position < len(text):
        m = _LIST_ITEM.match(text, position)
        if m is None or m.end() == position:
            raise SelectorError(f'the list [{text}] is not words or "quoted text" separated by ,')
        values.append(_unquote(m["value"]))
        position = m.end()
    if len(set(values)) != len(values):
        raise SelectorError(f"the list [{text}] names a value twice")
    return tuple(values)
