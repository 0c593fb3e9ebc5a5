"""Reading messages that cross a process boundary: ``Message`` (a frozen dataclass with
``from_json`` and ``to_json``), ``Fields`` (one JSON object's members, each read with a
"got X, expected Y" refusal naming it) and ``Source`` (who sent it, which decides the error
class). The messages themselves are ``trusthook.common.messages``.

Pure, and standard library only: the CLI's cheap commands import this module.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypeVar

from trusthook.common import b64
from trusthook.errors import (
    AgentRefusedError,
    RequestError,
    ServerRefusedError,
    TrusthookError,
)

T = TypeVar("T")
M = TypeVar("M", bound="Message")
_HEX_DIGITS = frozenset("0123456789abcdef")


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """Who sent a message, as its refusals name it ("{owner} {noun}{where} is malformed: …"),
    and the error they raise; ``hint`` ends them."""

    owner: str
    error: type[TrusthookError]
    where: str = ""
    hint: str = ""

    def refuse(self, noun: str, text: str) -> TrusthookError:
        hint = f"; {self.hint}" if self.hint else ""
        return self.error(f"{self.owner} {noun}{self.where} is malformed: {text}{hint}")


FROM_SERVER = Source(owner="the attestation server's", error=ServerRefusedError)
FROM_AGENT = Source(owner="the agent's", error=AgentRefusedError)
TO_AGENT = Source(owner="the", error=RequestError)


def show(value: object) -> str:
    """A JSON value as a refusal names it: short scalars in full, anything else by kind."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        text = repr(value)
        return text if len(text) <= 32 else "a long number"
    if isinstance(value, str):
        return repr(value) if len(value) <= 32 else f"a string of {len(value)} characters"
    if isinstance(value, list):
        return "an array"
    return "an object" if isinstance(value, dict) else type(value).__name__


class Fields:
    """The members of one JSON object being read into a message; every read checks its type
    and refuses naming the member's path (``last_verdict.reasons[0].check``)."""

    def __init__(self, data: object, noun: str, source: Source, at: str = "") -> None:
        self.noun, self.source, self._at = noun, source, at
        if not isinstance(data, dict):
            raise self.refuse("", show(data), "an object")
        self._data: dict[str, object] = data
        self._known: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self._at}.{key}" if self._at and key else self._at or key

    def refuse(self, key: str, got: str, expected: str) -> TrusthookError:
        """The error for member ``key`` (this object itself if empty)."""
        return self.refuse_at(self._name(key), got, expected)

    def refuse_at(self, name: str, got: str, expected: str) -> TrusthookError:
        """The error for the value at path ``name``."""
        text = f"got {got}, expected {expected}"
        return self.source.refuse(self.noun, f"{name} {text}" if name else text)

    def has(self, key: str) -> bool:
        self._known.add(key)
        return key in self._data

    def _get(self, key: str, expected: str) -> object:
        if not self.has(key):
            raise self.refuse(key, "nothing", expected)
        return self._data[key]

    def text(self, key: str, *, empty: bool = True, expected: str = "a string") -> str:
        expected = expected if empty else f"a non-empty {expected.removeprefix('a ')}"
        value = self._get(key, expected)
        if not isinstance(value, str) or not (empty or value):
            raise self.refuse(key, show(value), expected)
        return value

    def optional_text(self, key: str) -> str | None:
        value = self._get(key, "a string or null")
        if value is not None and not isinstance(value, str):
            raise self.refuse(key, show(value), "a string or null")
        return value

    def integer(self, key: str, within: range | None = None) -> int:
        expected = "an integer"
        if within is not None:
            expected += f" {within.start}..{within.stop - 1}"
        value = self._get(key, expected)
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or (within is not None and value not in within)
        ):
            raise self.refuse(key, show(value), expected)
        return value

    def flag(self, key: str) -> bool:
        value = self._get(key, "true or false")
        if not isinstance(value, bool):
            raise self.refuse(key, show(value), "true or false")
        return value

    def base64(self, key: str) -> bytes:
        text = self.text(key, expected="a base64 string")
        try:
            return b64.decode(text, key, ValueError)
        except ValueError:
            raise self.refuse(key, "a string that is not base64", "a base64 string") from None

    def hex(self, key: str, size: int) -> bytes:
        expected = f"{2 * size} lowercase hex digits"
        text = self.text(key, expected=expected)
        if len(text) != 2 * size or not _HEX_DIGITS.issuperset(text):
            raise self.refuse(key, show(text), expected)
        return bytes.fromhex(text)

    def text_map(self, key: str) -> dict[str, str]:
        value = self._get(key, "an object of strings")
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise self.refuse(key, show(value), "an object of strings")
        return dict(value)

    def nested(self, key: str, kind: type[M]) -> M:
        return parse_message(
            kind, self._get(key, "an object"), self.noun, self.source, self._name(key)
        )

    def optional_nested(self, key: str, kind: type[M]) -> M | None:
        value = self._get(key, "an object or null")
        return None if value is None else self.nested(key, kind)

    def array(self, key: str, read: Callable[[object, str], T], expected: str) -> tuple[T, ...]:
        value = self._get(key, expected)
        if not isinstance(value, list):
            raise self.refuse(key, show(value), expected)
        return tuple(read(item, f"{self._name(key)}[{i}]") for i, item in enumerate(value))

    def refuse_unknown(self) -> None:
        unknown = sorted(set(self._data) - self._known)
        if unknown:
            known = ", ".join(sorted(self._known))
            raise self.refuse("", f"member {unknown[0]!r}", f"only {known}")


def parse_message(kind: type[M], data: object, noun: str, source: Source, at: str) -> M:
    fields = Fields(data, noun, source, at)
    message = kind._read(fields)
    if kind.STRICT:
        fields.refuse_unknown()
    return message


class Message(ABC):
    """A message trusthook reads: ``from_json`` refuses anything but its shape."""

    __slots__ = ()
    NOUN: ClassVar[str]  # what refusals call it
    SOURCE: ClassVar[Source]  # who sends it, unless ``from_json`` is told otherwise
    STRICT: ClassVar[bool] = True  # unknown members are refused

    @classmethod
    def from_json(cls, data: object, *, source: Source | None = None) -> Self:
        return parse_message(cls, data, cls.NOUN, source or cls.SOURCE, "")

    @classmethod
    @abstractmethod
    def _read(cls, fields: Fields) -> Self:
        """The message in ``fields``; the members left over are checked after."""

    @abstractmethod
    def to_json(self) -> dict[str, Any]: ...
