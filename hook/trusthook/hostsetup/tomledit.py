"""Editing a TOML file as text, so that its comments, blank lines and layout survive: append
tables in a marked block, set one key on its own line, and undo exactly those edits again.

What is added is marked, so that it can be taken out again byte for byte:
- tables go in one block at the end of the file, between ``BEGIN`` and ``END`` comment lines
  (and after one blank line, when the file has content);
- a key set in a table the file already has goes on one line ending in a comment: ``ADDED``
  when the key was new, ``EDITED`` followed by the original line when it replaced one; when the
  value it replaced went on over more lines (a multi-line array), each of those is kept behind
  ``HIDDEN``, a comment line; a key set again keeps its mark (and the first original line).
Nothing here knows what the keys mean; ``engines`` says what to add and checks the result by
parsing it (``tomllib``): a file whose layout defeats these line-level edits (a table defined
with dotted keys, an inline table, a header inside a multi-line string) gives a result that does
not parse to what was intended, and is refused. Pure.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Mapping, Sequence
from typing import Any

BEGIN = (
    "# BEGIN trusthook: added by `trusthook runtime configure`;"
    " `trusthook runtime unconfigure` removes it"
)
END = "# END trusthook"
ADDED = "  # added by trusthook runtime configure"
EDITED = "  # set by trusthook runtime configure; was: "
HIDDEN = "# hidden by trusthook runtime configure: "
TablePath = tuple[str, ...]
Value = str | bool | int | list[str]
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_LINE = re.compile(r"[^\n]*\n|[^\n]+\Z")


def lines_of(text: str) -> list[str]:
    """``text`` as lines, each with its ``\\n`` (TOML's newline; ``\\r\\n`` keeps its ``\\r``)."""
    return _LINE.findall(text)


def _newline(line: str) -> str:
    return line[len(line.rstrip("\r\n")) :]


def _indent(line: str) -> str:
    return line[: len(line) - len(line.lstrip(" \t"))]


def key_text(key: str) -> str:
    """A key as TOML writes it: bare if it can be, else a basic string."""
    return key if _BARE_KEY.fullmatch(key) else json.dumps(key)


def value_text(value: Value) -> str:
    """A string, boolean, integer or list of strings as TOML writes it, on one line (a JSON
    string is a TOML basic string)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(json.dumps(item) for item in value) + "]"
    return str(value) if isinstance(value, int) else json.dumps(value)


def header_text(path: TablePath) -> str:
    return "[" + ".".join(key_text(k) for k in path) + "]"


def header_path(line: str) -> tuple[TablePath, bool] | None:
    """The table a header line opens and whether it is an array of tables (``[[…]]``); None
    if ``line`` is not a header. A header parses on its own to nested empty tables."""
    stripped = line.strip()
    if not stripped.startswith("["):
        return None
    try:
        node: Any = tomllib.loads(stripped)
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        key, node = next(iter(node.items()))
        path.append(key)
    if node == {}:
        return tuple(path), False
    if node == [{}]:
        return tuple(path), True
    return None


def find_table(lines: Sequence[str], path: TablePath) -> int | None:
    """The index of the header line of table ``path``, None if the file has no such header."""
    for i, line in enumerate(lines):
        if header_path(line) == (path, False):
            return i
    return None


def section_end(lines: Sequence[str], header: int) -> int:
    """The index of the next header after line ``header`` (the end of its section)."""
    for i in range(header + 1, len(lines)):
        if header_path(lines[i]) is not None:
            return i
    return len(lines)


def _assigns(line: str, key: str) -> bool:
    """Whether ``line`` begins an assignment to ``key`` (bare, or as a quoted string)."""
    stripped = line.lstrip(" \t")
    for spelled in (key_text(key), json.dumps(key), f"'{key}'"):
        if stripped.startswith(spelled) and stripped[len(spelled) :].lstrip(" \t")[:1] == "=":
            return True
    return False


def key_span(lines: Sequence[str], header: int, key: str) -> tuple[int, int] | None:
    """The lines ``[start, end)`` in the section opened at ``header`` that set ``key`` to a
    value (more than one when the value goes on over lines: a multi-line array)."""
    end = section_end(lines, header)
    for i in range(header + 1, end):
        if not _assigns(lines[i], key):
            continue
        for j in range(i + 1, end + 1):
            try:
                data = tomllib.loads("".join(lines[i:j]))
            except tomllib.TOMLDecodeError:
                continue
            if list(data) == [key] and not isinstance(data[key], dict):
                return i, j
            break
    return None


def key_line(lines: Sequence[str], header: int, key: str) -> int | None:
    """The first line of the assignment to ``key`` in the section opened at ``header``."""
    span = key_span(lines, header, key)
    return None if span is None else span[0]


def _key_indent(lines: Sequence[str], header: int) -> str:
    """The indentation of the keys in a section: its first key's, else the header's + 2."""
    for i in range(header + 1, section_end(lines, header)):
        stripped = lines[i].strip()
        if stripped and not stripped.startswith("#"):
            return _indent(lines[i])
    return _indent(lines[header]) + "  "


def set_key(lines: list[str], header: int, key: str, value: Value) -> None:
    """Set ``key`` in the section opened at ``header``: its first line replaced (the original
    kept in the ``EDITED`` comment) and any further lines of its old value made ``HIDDEN``
    comments, or a new ``ADDED`` line right after the header."""
    assignment = f"{key_text(key)} = {value_text(value)}"
    span = key_span(lines, header, key)
    if span is None:
        newline = _newline(lines[header]) or "\n"
        if not _newline(lines[header]):
            lines[header] += "\n"
        lines.insert(header + 1, _key_indent(lines, header) + assignment + ADDED + newline)
        return
    start, end = span
    line = lines[start]
    indent, newline = _indent(line), _newline(line)
    original = line[len(indent) : len(line) - len(newline)]
    if original.endswith(ADDED):  # set before by configure: still added
        lines[start] = indent + assignment + ADDED + newline
        return
    if EDITED in original:  # set before by configure: the first original stays
        original = original[original.index(EDITED) + len(EDITED) :]
    lines[start] = indent + assignment + EDITED + original + newline
    for i in range(start + 1, end):
        newline = _newline(lines[i]) or "\n"  # the last line of a file may have none
        lines[i] = HIDDEN + lines[i][: len(lines[i]) - len(_newline(lines[i]))] + newline


def block(tables: Sequence[tuple[TablePath, Mapping[str, Value]]], top: str = "") -> str:
    """The marked block holding ``tables`` (``top``: top-level key lines before them)."""
    parts = [BEGIN + "\n", top]
    for path, values in tables:
        parts.append("\n" + header_text(path) + "\n")
        parts.extend(f"  {key_text(k)} = {value_text(v)}\n" for k, v in values.items())
    parts.append(END + "\n")
    return "".join(parts)


def append_block(text: str, marked: str) -> str:
    """``text`` with the block appended, after a blank line when ``text`` has content."""
    if text and not text.endswith("\n"):
        text += "\n"
    return text + ("\n" if text.strip() else "") + marked


def remove_marked(text: str) -> tuple[str, bool]:
    """``text`` without trusthook's block (and the blank line before it) and with every
    ``ADDED`` line removed and every ``EDITED`` and ``HIDDEN`` line restored; whether anything
    was marked. ValueError if a block begins and never ends."""
    lines = lines_of(text)
    out: list[str] = []
    found = False
    i = 0
    while i < len(lines):
        line = lines[i]
        content = line.rstrip("\r\n")
        if content == BEGIN:
            end = next(
                (j for j in range(i + 1, len(lines)) if lines[j].rstrip("\r\n") == END), None
            )
            if end is None:
                raise ValueError(f"line {i + 1} begins trusthook's block, which never ends")
            if out and not out[-1].strip() and any(x.strip() for x in out[:-1]):
                out.pop()  # the blank line append_block put before the block
            found, i = True, end + 1
            continue
        if content.startswith(HIDDEN):
            out.append(content[len(HIDDEN) :] + _newline(line))
            found, i = True, i + 1
            continue
        if content.endswith(ADDED):
            found, i = True, i + 1
            continue
        at = content.find(EDITED)
        if at >= 0:
            line = _indent(line) + content[at + len(EDITED) :] + _newline(line)
            found = True
        out.append(line)
        i += 1
    return "".join(out), found
