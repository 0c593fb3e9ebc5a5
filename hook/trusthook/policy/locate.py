"""Where a key or an array item of a TOML document stands, for messages that name the line.

tomllib says where a syntax error is, but the values it returns carry no positions. This reads
the same text line by line, knowing only what the manifest uses: ``[table]`` and
``[[array-of-tables]]`` headers, ``key = value`` lines, and arrays of strings that may run over
several lines. What it cannot place (a key inside an inline table, a multi-line string) gets no
line, and the caller names the nearest one it has. Pure.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

TablePath = Sequence[str | int]  # () the top level, ("defaults",), ("workload", 3)

_ARRAY_TABLE = re.compile(r"\s*\[\[\s*([A-Za-z0-9_-]+)\s*\]\]\s*(#.*)?")
_TABLE = re.compile(r"\s*\[\s*([A-Za-z0-9_-]+)\s*\]\s*(#.*)?")
_KEY = re.compile(r"\s*([A-Za-z0-9_-]+|\"[^\"]*\")\s*=\s*(.*)")
_STRING = re.compile(r"\"(?:[^\"\\]|\\.)*\"|'[^']*'")


class Locator:
    """The 1-based lines of tables, keys and array items in one TOML text."""

    def __init__(self, text: str) -> None:
        self._tables: dict[tuple[str | int, ...], int] = {}
        self._keys: dict[tuple[tuple[str | int, ...], str], int] = {}
        self._items: dict[tuple[tuple[str | int, ...], str], list[int]] = {}
        counts: dict[str, int] = {}
        table: tuple[str | int, ...] = ()
        lines = text.splitlines()
        number = 0
        while number < len(lines):
            line = lines[number]
            number += 1
            if m := _ARRAY_TABLE.fullmatch(line):
                name = m[1]
                table = (name, counts.get(name, 0))
                counts[name] = counts.get(name, 0) + 1
                self._tables[table] = number
            elif m := _TABLE.fullmatch(line):
                table = (m[1],)
                self._tables[table] = number
            elif m := _KEY.fullmatch(line):
                key = m[1].strip('"')
                self._keys[(table, key)] = number
                if m[2].lstrip().startswith("["):
                    number = self._array(lines, number - 1, m.start(2), (table, key))

    def _array(
        self, lines: list[str], first: int, column: int, where: tuple[tuple[str | int, ...], str]
    ) -> int:
        """Record the lines of an array's string items; the number of the line after it."""
        items: list[int] = []
        depth = 0
        number = first
        text = lines[first][column:]
        while True:
            position = 0
            while position < len(text):
                char = text[position]
                if char in "\"'":
                    m = _STRING.match(text, position)
                    if m is None:
                        break
                    items.append(number + 1)
                    position = m.end()
                    continue
                if char == "#":
                    break
                if char == "[":
                    depth += 1
                elif char == "]":
                    depth -= 1
                    if depth == 0:
                        self._items[where] = items
                        return number + 1
                position += 1
            number += 1
            if number >= len(lines):
                self._items[where] = items
                return number
            text = lines[number]

    def table(self, path: TablePath) -> int | None:
        return self._tables.get(tuple(path))

    def key(self, path: TablePath, key: str) -> int | None:
        return self._keys.get((tuple(path), key))

    def item(self, path: TablePath, key: str, index: int) -> int | None:
        items = self._items.get((tuple(path), key), [])
        return items[index] if index < len(items) else self.key(path, key)
