"""The event log model: TCG Canonical Event Log records, JSON encoding (docs/eventlog.md).

Pure: records are parsed from and rendered to bytes here; files live in ``logstore``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trusthook.common.jcs import canonicalize
from trusthook.errors import EventLogError

CONTENT_TYPE = "trusthook_launch"
CONTENT_VERSION = 2  # what this agent writes; readers take 1 too (no identity, no encrypted)
# A restored container's record (docs/policy.md §8): version 2 and ``restore``. Only a restore
# is written as version 3, so every other record reads as before with older servers.
RESTORE_CONTENT_VERSION = 3
_READ_VERSIONS = frozenset({1, 2, 3})
PCR_SIZE = 32
# The largest integer a record holds: JCS writes numbers as IEEE doubles (RFC 8785 §3.2.2.3),
# so a larger one would not read back as itself, and its digest would not be its own.
MAX_EXACT_INTEGER = 2**53 - 1
# The stage of the record an encrypted-image launch makes before its keys are released: its
# root is still empty (docs/images.md §7); the launch's own record follows, with the root.
RELEASE_STAGE = "release"
_RECORD_KEYS = {"recnum", "pcr", "digests", "content_type", "content"}
_CONTENT_FIELDS: dict[str, type | tuple[type, ...]] = {
    "version": int,
    "container_id": str,
    "bundle": str,
    "image": dict,
    "rootfs_digest": str,
    "rootfs_entries": int,
    "config_digest": str,
    "launch_profile_digest": str,
    "stage": str,
    "time": str,
    "boot_id": str,
}
_IMAGE_FIELDS = {"reference", "digest"}
_V2_FIELDS: dict[str, type | tuple[type, ...]] = {"identity": dict, "encrypted": bool}
_V3_FIELDS: dict[str, type | tuple[type, ...]] = {**_V2_FIELDS, "restore": bool}
_IDENTITY_FIELDS = {"workload", "kubernetes"}
_KUBERNETES_FIELDS = ("namespace", "pod", "container")


@dataclass(frozen=True, slots=True, kw_only=True)
class Identity:
    """What the engine said the launch is (docs/policy.md §3): an explicit workload name
    (the ``org.trusthook.workload`` annotation) and the Kubernetes pod and container, each
    if given. Labels, not evidence: the server's policy decides what they may claim."""

    workload: str | None = None
    kubernetes: tuple[str, str, str] | None = None  # (namespace, pod, container)

    def to_content(self) -> dict[str, Any]:
        kubernetes = None
        if self.kubernetes is not None:
            kubernetes = dict(zip(_KUBERNETES_FIELDS, self.kubernetes, strict=True))
        return {"workload": self.workload, "kubernetes": kubernetes}

    @classmethod
    def from_content(cls, content: object, where: str) -> Identity:
        if not isinstance(content, dict) or set(content) != _IDENTITY_FIELDS:
            raise EventLogError(f"{where}: content.identity must be {{workload, kubernetes}}")
        workload, kubernetes = content["workload"], content["kubernetes"]
        if workload is not None and not isinstance(workload, str):
            raise EventLogError(f"{where}: content.identity.workload must be a string or null")
        if kubernetes is None:
            return cls(workload=workload)
        if (
            not isinstance(kubernetes, dict)
            or set(kubernetes) != set(_KUBERNETES_FIELDS)
            or not all(isinstance(kubernetes[k], str) for k in _KUBERNETES_FIELDS)
        ):
            raise EventLogError(
                f"{where}: content.identity.kubernetes must be {{namespace, pod, container}}"
                " strings or null"
            )
        namespace, pod, container = (kubernetes[k] for k in _KUBERNETES_FIELDS)
        return cls(workload=workload, kubernetes=(namespace, pod, container))


@dataclass(frozen=True, slots=True, kw_only=True)
class LaunchEvent:
    """What one container launch contributes to the log."""

    container_id: str
    bundle: str
    image_reference: str | None
    image_digest: str | None
    rootfs_digest: str
    rootfs_entries: int
    config_digest: str
    launch_profile_digest: str
    stage: str
    time: str
    boot_id: str
    identity: Identity | None = None  # None: a version 1 record, which had none
    encrypted: bool | None = None  # whether the root was decrypted from an encrypted image
    restore: bool = False  # a checkpointed container restored (runc restore): version 3

    def to_content(self) -> dict[str, Any]:
        content = self._content_v1()
        if self.identity is None and self.encrypted is None and not self.restore:
            return content  # a version 1 record as it was written
        content["version"] = RESTORE_CONTENT_VERSION if self.restore else CONTENT_VERSION
        content["identity"] = (self.identity or Identity()).to_content()
        content["encrypted"] = bool(self.encrypted)
        if self.restore:
            content["restore"] = True
        return content

    def _content_v1(self) -> dict[str, Any]:
        return {
            "version": 1,
            "container_id": self.container_id,
            "bundle": self.bundle,
            "image": {"reference": self.image_reference, "digest": self.image_digest},
            "rootfs_digest": self.rootfs_digest,
            "rootfs_entries": self.rootfs_entries,
            "config_digest": self.config_digest,
            "launch_profile_digest": self.launch_profile_digest,
            "stage": self.stage,
            "time": self.time,
            "boot_id": self.boot_id,
        }

    @classmethod
    def from_content(cls, content: Mapping[str, Any], where: str) -> LaunchEvent:
        version = content.get("version")
        if type(version) is not int or version not in _READ_VERSIONS:
            raise EventLogError(f"{where}: content version {version!r}, expected 1, 2 or 3")
        extra = {1: {}, 2: _V2_FIELDS, 3: _V3_FIELDS}[version]
        fields = {**_CONTENT_FIELDS, **extra}
        if set(content) != set(fields):
            raise EventLogError(
                f"{where}: content has fields {sorted(content)}, expected {sorted(fields)}"
            )
        for key, kind in fields.items():
            if not isinstance(content[key], kind) or (
                kind is not bool and isinstance(content[key], bool)
            ):
                raise EventLogError(f"{where}: content.{key} has the wrong type")
        if version == 3 and content["restore"] is not True:
            raise EventLogError(f"{where}: content.restore must be true in a version 3 record")
        if not 0 <= content["rootfs_entries"] <= MAX_EXACT_INTEGER:
            raise EventLogError(
                f"{where}: content.rootfs_entries is {content['rootfs_entries']}, expected 0 to"
                f" {MAX_EXACT_INTEGER}"
            )
        image = content["image"]
        if set(image) != _IMAGE_FIELDS or not all(
            v is None or isinstance(v, str) for v in image.values()
        ):
            raise EventLogError(f"{where}: content.image must be {{reference, digest}}")
        return cls(
            container_id=content["container_id"],
            bundle=content["bundle"],
            image_reference=image["reference"],
            image_digest=image["digest"],
            rootfs_digest=content["rootfs_digest"],
            rootfs_entries=content["rootfs_entries"],
            config_digest=content["config_digest"],
            launch_profile_digest=content["launch_profile_digest"],
            stage=content["stage"],
            time=content["time"],
            boot_id=content["boot_id"],
            identity=None if version == 1 else Identity.from_content(content["identity"], where),
            encrypted=None if version == 1 else content["encrypted"],
            restore=version == 3,
        )

    def digest(self) -> bytes:
        """The event digest extended into the PCR: SHA-256 of the RFC 8785 form of the content."""
        return hashlib.sha256(canonicalize(self.to_content())).digest()


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """One CEL record: the event, where it went and the digest that was extended."""

    recnum: int
    pcr: int
    digest: bytes
    event: LaunchEvent

    @classmethod
    def for_event(cls, *, recnum: int, pcr: int, event: LaunchEvent) -> Record:
        return cls(recnum=recnum, pcr=pcr, digest=event.digest(), event=event)

    def to_json(self) -> dict[str, Any]:
        return {
            "recnum": self.recnum,
            "pcr": self.pcr,
            "digests": [{"hashAlg": "sha256", "digest": self.digest.hex()}],
            "content_type": CONTENT_TYPE,
            "content": self.event.to_content(),
        }

    def to_line(self) -> bytes:
        """One line of the log file: the RFC 8785 form of the record and a newline."""
        return canonicalize(self.to_json()) + b"\n"


def parse_record(data: Any, where: str) -> Record:
    """A Record from its parsed JSON form; raises EventLogError naming ``where``."""
    if not isinstance(data, dict) or set(data) != _RECORD_KEYS:
        raise EventLogError(f"{where}: a record must be an object with keys {sorted(_RECORD_KEYS)}")
    recnum, pcr, digests = data["recnum"], data["pcr"], data["digests"]
    if (
        not isinstance(recnum, int)
        or isinstance(recnum, bool)
        or not 0 <= recnum <= MAX_EXACT_INTEGER
    ):
        raise EventLogError(f"{where}: recnum must be an integer 0 to {MAX_EXACT_INTEGER}")
    if not isinstance(pcr, int) or isinstance(pcr, bool) or not 0 <= pcr <= 23:
        raise EventLogError(f"{where}: pcr must be an integer 0..23")
    if data["content_type"] != CONTENT_TYPE:
        raise EventLogError(
            f"{where}: content_type {data['content_type']!r}, expected {CONTENT_TYPE!r}"
        )
    if (
        not isinstance(digests, list)
        or len(digests) != 1
        or not isinstance(digests[0], dict)
        or digests[0].get("hashAlg") != "sha256"
        or set(digests[0]) != {"hashAlg", "digest"}
    ):
        raise EventLogError(f"{where}: digests must hold exactly one sha256 digest")
    text = digests[0]["digest"]
    if not isinstance(text, str) or not re.fullmatch(r"[0-9a-f]*", text):
        raise EventLogError(f"{where}: digest is not lowercase hexadecimal")
    if len(text) != 2 * PCR_SIZE:
        raise EventLogError(f"{where}: digest has {len(text) // 2} bytes, expected {PCR_SIZE}")
    digest = bytes.fromhex(text)
    if not isinstance(data["content"], dict):
        raise EventLogError(f"{where}: content must be an object")
    event = LaunchEvent.from_content(data["content"], where)
    return Record(recnum=recnum, pcr=pcr, digest=digest, event=event)


def parse_line(line: bytes, where: str) -> Record:
    """Parse one log line (JSON text); raises EventLogError naming ``where``."""
    try:
        data = json.loads(line)
    except (ValueError, RecursionError) as e:  # bad UTF-8, bad JSON, too deep, huge numbers
        raise EventLogError(f"{where}: not valid JSON ({e})") from None
    return parse_record(data, where)


def extend(value: bytes, digest: bytes) -> bytes:
    """The PCR extend operation in the SHA-256 bank."""
    return hashlib.sha256(value + digest).digest()


def replay(records: Sequence[Record], initial: bytes = bytes(PCR_SIZE)) -> bytes:
    """The PCR value that extending every record's digest in order gives."""
    value = initial
    for record in records:
        value = extend(value, record.digest)
    return value


def check_records(records: Sequence[Record], pcr: int) -> None:
    """Each record must be numbered in sequence, target ``pcr`` and carry its content's digest."""
    for i, record in enumerate(records):
        if record.recnum != i:
            raise EventLogError(f"record {i}: recnum is {record.recnum}, expected {i}")
        if record.pcr != pcr:
            raise EventLogError(f"record {i}: pcr is {record.pcr}, expected {pcr}")
        if record.digest != record.event.digest():
            raise EventLogError(
                f"record {i}: digest {record.digest.hex()} does not match its content"
                f" ({record.event.digest().hex()}); the record was altered"
            )


def verify_against_pcr(records: Sequence[Record], pcr: int, pcr_value: bytes) -> None:
    """Raise EventLogError naming the first record where the log and the PCR diverge."""
    check_records(records, pcr)
    value = bytes(PCR_SIZE)
    matching_prefix = 0 if value == pcr_value else None
    for i, record in enumerate(records):
        value = extend(value, record.digest)
        if value == pcr_value:
            matching_prefix = i + 1
    if matching_prefix == len(records):
        return
    if pcr_value == bytes(PCR_SIZE):
        raise EventLogError(
            f"record 0: log diverges from PCR {pcr}; the PCR is all zeros but the log holds"
            f" {len(records)} records: the PCR was reset or the TPM restarted since"
        )
    if matching_prefix is not None:
        raise EventLogError(
            f"record {matching_prefix}: log diverges from PCR {pcr}; the PCR equals the replay of"
            f" the first {matching_prefix} records, so record {matching_prefix} onwards was never"
            " extended"
        )
    raise EventLogError(
        f"record 0: log diverges from PCR {pcr}; no prefix of the {len(records)} records replays"
        f" to {pcr_value.hex()} (the PCR was extended by something not in this log, or reset)"
    )
