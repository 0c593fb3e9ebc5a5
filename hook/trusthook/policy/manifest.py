"""The workload policy manifest: which workloads may run where, with which images, root
filesystems and launch profiles, encrypted or not, restorable or not, and what a launch outside
it means (docs/policy.md). One TOML document a security officer edits and reviews; parsed here
into a frozen model, every refusal naming its line. Pure: bytes in, a Manifest or a PolicyError.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from trusthook.common.digest import is_digest, sha256_of
from trusthook.common.jcs import canonicalize
from trusthook.errors import PolicyError
from trusthook.policy.locate import Locator, TablePath
from trusthook.policy.selector import Selector, SelectorError, parse_selector

FORMAT = 1
MAX_MANIFEST = 4 << 20  # bytes: 1,000 workloads with long digest lists fit many times over
MAX_WORKLOADS = 10_000
_NAME = re.compile(r"[a-z0-9]([a-z0-9._/-]{0,126}[a-z0-9])?")
_GROUP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_PATTERN = re.compile(r"[\x21-\x7e]{1,253}")
_TOP = {"format", "defaults", "workload"}
_DEFAULTS = {"unknown_launch", "violation"}
_WORKLOAD = {
    "name",
    "match",
    "images",
    "rootfs",
    "launch_profiles",
    "encryption",
    "restore",
    "groups",
    "placement",
    "violation",
}


class Action(StrEnum):
    """What a launch outside the manifest means for a host that is otherwise trusted."""

    AUDIT = "audit"  # recorded and reported; the host's trust does not change
    UNTRUST = "untrust"  # the host turns untrusted, the launch named as the reason


class Encryption(StrEnum):
    REQUIRED = "required"  # only an encrypted image launches (its keys: placement-gated)
    OPTIONAL = "optional"


@dataclass(frozen=True, slots=True, kw_only=True)
class Workload:
    """One workload: what its launches are (``match``: identity patterns), what they may run,
    and where. Empty ``rootfs``, ``launch_profiles`` or ``groups``: any."""

    name: str
    match: tuple[str, ...]
    images: frozenset[str]
    rootfs: frozenset[str]
    launch_profiles: frozenset[str]
    encryption: Encryption
    restore: bool
    groups: frozenset[str]
    placement: tuple[Selector, ...]
    violation: Action
    line: int  # where its [[workload]] table starts (not part of the digest)

    def matches(self, identity: str) -> bool:
        return any(fnmatch.fnmatchcase(identity, p) for p in self.match)

    def placement_failures(self, attributes: Mapping[str, str]) -> tuple[Selector, ...]:
        """The placement selectors a host with these attributes does not satisfy."""
        return tuple(s for s in self.placement if not s.holds(attributes))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "match": list(self.match),
            "images": sorted(self.images),
            "rootfs": sorted(self.rootfs),
            "launch_profiles": sorted(self.launch_profiles),
            "encryption": self.encryption.value,
            "restore": self.restore,
            "groups": sorted(self.groups),
            "placement": [s.text for s in self.placement],
            "violation": self.violation.value,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Manifest:
    """A parsed manifest. ``digest`` names its meaning (the canonical JSON of ``to_json``), so
    reformatting or reordering sets does not make a new policy; comments do not count."""

    unknown_launch: Action
    violation: Action
    workloads: tuple[Workload, ...]
    _index: _Index = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", _Index(self.workloads))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "defaults": {
                "unknown_launch": self.unknown_launch.value,
                "violation": self.violation.value,
            },
            "workloads": [w.to_json() for w in self.workloads],
        }

    @property
    def digest(self) -> str:
        return sha256_of(canonicalize(self.to_json()))

    def workload(self, identity: str | None, image_digest: str | None) -> Workload | None:
        """The workload a launch is: the first whose ``match`` takes its identity; without an
        identity, or none matching, the first that lists its image (docs/policy.md §3)."""
        found = self._index.find(identity, image_digest)
        return None if found is None else self.workloads[found]

    def named(self, name: str) -> Workload | None:
        return next((w for w in self.workloads if w.name == name), None)


class _Index:
    """Which workload a launch is, without a pass over every workload: patterns without
    wildcards in a dict, the others in one regular expression whose alternatives keep the
    workloads' order (the first alternative that matches is the first workload), images in a
    dict. The answer is the lowest workload number among the hits, as a scan would give."""

    def __init__(self, workloads: Sequence[Workload]) -> None:
        self._exact: dict[str, int] = {}
        self._images: dict[str, int] = {}
        alternatives: list[str] = []
        self._groups: list[int] = []
        for number, workload in enumerate(workloads):
            for pattern in workload.match:
                if any(c in pattern for c in "*?["):
                    alternatives.append(f"(?P<w{len(self._groups)}>{fnmatch.translate(pattern)})")
                    self._groups.append(number)
                else:
                    self._exact.setdefault(pattern, number)
            for image in workload.images:
                self._images.setdefault(image, number)
        self._globs = re.compile("|".join(alternatives)) if alternatives else None

    def find(self, identity: str | None, image_digest: str | None) -> int | None:
        if identity is not None:
            hits = [self._exact[identity]] if identity in self._exact else []
            m = None if self._globs is None else self._globs.fullmatch(identity)
            if m is not None and m.lastgroup is not None:
                hits.append(self._groups[int(m.lastgroup[1:])])
            if hits:
                return min(hits)
        if image_digest is not None:
            return self._images.get(image_digest)
        return None


def parse_manifest(raw: bytes, source: str) -> Manifest:
    """The manifest in ``raw``; PolicyError ``SOURCE:LINE: what is wrong`` otherwise."""
    if len(raw) > MAX_MANIFEST:
        raise PolicyError(f"{source}: got {len(raw)} bytes, expected at most {MAX_MANIFEST}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PolicyError(f"{source}: not UTF-8 (byte {e.start})") from None
    try:
        document = tomllib.loads(text)
    except (tomllib.TOMLDecodeError, RecursionError, ValueError) as e:
        raise PolicyError(f"{source}: not valid TOML: {e}") from None
    return _Parser(source, Locator(text)).manifest(document)


class _Parser:
    def __init__(self, source: str, locator: Locator) -> None:
        self._source = source
        self._at = locator

    def _fail(self, line: int, text: str) -> PolicyError:
        return PolicyError(f"{self._source}:{line}: {text}")

    def manifest(self, doc: dict[str, Any]) -> Manifest:
        self._keys(doc, _TOP, (), "the manifest")
        version = doc.get("format")
        if version != FORMAT or isinstance(version, bool):
            line = self._at.key((), "format") or 1
            raise self._fail(line, f"format got {version!r}, expected format = {FORMAT}")
        defaults = doc.get("defaults", {})
        if not isinstance(defaults, dict):
            raise self._fail(self._at.key((), "defaults") or 1, "defaults must be a table")
        self._keys(defaults, _DEFAULTS, ("defaults",), "[defaults]")
        unknown = self._action(
            defaults, ("defaults",), "unknown_launch", Action.AUDIT, "[defaults]"
        )
        violation = self._action(defaults, ("defaults",), "violation", Action.UNTRUST, "[defaults]")
        tables = doc.get("workload", [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise self._fail(self._at.key((), "workload") or 1, "write workloads as [[workload]]")
        if len(tables) > MAX_WORKLOADS:
            raise self._fail(1, f"got {len(tables)} workloads, expected at most {MAX_WORKLOADS}")
        workloads: list[Workload] = []
        names: dict[str, int] = {}
        for index, table in enumerate(tables):
            w = self._workload(index, table, violation)
            if w.name in names:
                raise self._fail(
                    w.line, f"workload {w.name!r} is defined twice (first on line {names[w.name]})"
                )
            names[w.name] = w.line
            workloads.append(w)
        return Manifest(unknown_launch=unknown, violation=violation, workloads=tuple(workloads))

    def _keys(self, table: dict[str, Any], allowed: set[str], path: TablePath, what: str) -> None:
        for key in table:
            if key not in allowed:
                line = self._at.key(path, key) or self._at.table(path) or 1
                raise self._fail(
                    line,
                    f"{what}: unknown key {key!r}, expected one of {', '.join(sorted(allowed))}",
                )

    def _action(
        self, table: dict[str, Any], path: TablePath, key: str, default: Action, where: str
    ) -> Action:
        value = table.get(key, default.value)
        try:
            return Action(value)
        except ValueError:
            line = self._at.key(path, key) or 1
            raise self._fail(
                line, f'{where}: {key} got {value!r}, expected "audit" or "untrust"'
            ) from None

    def _workload(self, index: int, table: dict[str, Any], violation: Action) -> Workload:
        path: TablePath = ("workload", index)
        start = self._at.table(path) or 1
        self._keys(table, _WORKLOAD, path, "[[workload]]")
        name = table.get("name")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise self._fail(
                self._at.key(path, "name") or start,
                f"workload name got {name!r}, expected lower-case letters, digits and . _ / -"
                " (at most 128, starting and ending with a letter or digit)",
            )
        where = f"workload {name!r}"
        match = self._strings(table, path, "match", where, [name])
        for i, pattern in enumerate(match):
            if not _PATTERN.fullmatch(pattern):
                raise self._fail(
                    self._at.item(path, "match", i) or start,
                    f"{where}: match pattern {pattern!r} must be printable ASCII, no spaces",
                )
        images = self._digests(table, path, "images", where)
        rootfs = self._digests(table, path, "rootfs", where)
        if not images and not rootfs:
            raise self._fail(
                start, f"{where}: list its images (manifest digests) or rootfs digests, or both"
            )
        profiles = self._digests(table, path, "launch_profiles", where)
        groups = self._strings(table, path, "groups", where, [])
        for i, group in enumerate(groups):
            if not _GROUP.fullmatch(group):
                raise self._fail(
                    self._at.item(path, "groups", i) or start,
                    f"{where}: group {group!r} is not a host group name",
                )
        encryption = table.get("encryption", Encryption.OPTIONAL.value)
        if encryption not in (e.value for e in Encryption):
            raise self._fail(
                self._at.key(path, "encryption") or start,
                f'{where}: encryption got {encryption!r}, expected "required" or "optional"',
            )
        restore = table.get("restore", False)
        if not isinstance(restore, bool):
            raise self._fail(
                self._at.key(path, "restore") or start,
                f"{where}: restore got {restore!r}, expected true or false",
            )
        placement: list[Selector] = []
        for i, text in enumerate(self._strings(table, path, "placement", where, [])):
            try:
                placement.append(parse_selector(text))
            except SelectorError as e:
                raise self._fail(
                    self._at.item(path, "placement", i) or start,
                    f"{where}: placement {text!r}: {e}",
                ) from None
        return Workload(
            name=name,
            match=tuple(match),
            images=frozenset(images),
            rootfs=frozenset(rootfs),
            launch_profiles=frozenset(profiles),
            encryption=Encryption(encryption),
            restore=restore,
            groups=frozenset(groups),
            placement=tuple(placement),
            violation=self._action(table, path, "violation", violation, where),
            line=start,
        )

    def _strings(
        self, table: dict[str, Any], path: TablePath, key: str, where: str, default: list[str]
    ) -> list[str]:
        value = table.get(key, default)
        line = self._at.key(path, key) or self._at.table(path) or 1
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(line, f"{where}: {key} must be a list of strings")
        for i, item in enumerate(value):
            if item in value[:i]:
                raise self._fail(
                    self._at.item(path, key, i) or line, f"{where}: {key} lists {item!r} twice"
                )
        return value

    def _digests(self, table: dict[str, Any], path: TablePath, key: str, where: str) -> list[str]:
        values = self._strings(table, path, key, where, [])
        for i, value in enumerate(values):
            if not is_digest(value):
                raise self._fail(
                    self._at.item(path, key, i) or self._at.key(path, key) or 1,
                    f"{where}: {key} entry {value!r} is not a digest, expected sha256:<64 hex>",
                )
        return values


def changes(old: Manifest, new: Manifest) -> list[str]:
    """What ``new`` means differently from ``old``, one line each (none: the same policy)."""
    lines = [
        f"defaults.{key}: {getattr(old, key).value} -> {getattr(new, key).value}"
        for key in ("unknown_launch", "violation")
        if getattr(old, key) is not getattr(new, key)
    ]
    before = {w.name: w.to_json() for w in old.workloads}
    after = {w.name: w.to_json() for w in new.workloads}
    for name in sorted(before.keys() - after.keys()):
        lines.append(f"workload {name!r}: removed")
    for name in sorted(after.keys() - before.keys()):
        lines.append(f"workload {name!r}: added")
    for name in sorted(before.keys() & after.keys()):
        for key, value in after[name].items():
            if before[name][key] != value:
                lines.append(f"workload {name!r}: {key}: {before[name][key]} -> {value}")
    if not lines and [w.name for w in old.workloads] != [w.name for w in new.workloads]:
        lines.append("workload order (the first workload whose match takes a launch is its)")
    return lines
