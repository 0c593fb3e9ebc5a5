"""The recorded swtpm evidence in ``tests/data/evidence/``: its file format and a loader.

One JSON file per TPM epoch (``<n>-<name>.json``) and ``ak.json``. An epoch file holds the
quotes taken in that epoch in the order they were taken, each with the nonce it answers, the PCR
values the TPM read with it, and the event-log records added since the previous quote (as the
agent sends them: the records after ``after``). Bytes are lowercase hex; records are CEL JSON
(``Record.to_json``). ``record_evidence`` writes these files, the unit tests read them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trusthook.attest.appraise import Evidence
from trusthook.common.eventlog import Record, parse_record

EVIDENCE_DIR = Path(__file__).parent / "evidence"
FORMAT = 1
CONTAINER_PCR = 23
PCRS = (*range(8), CONTAINER_PCR)  # what the server asks a host group with golden PCRs 0-7 for


def firmware_digests(index: int) -> list[bytes]:
    """What the recorder's simulated firmware extends into PCR ``index`` (0-7) at every
    power-on, so the recorded PCRs 0-7 are the same in every epoch: the golden values."""
    return [hashlib.sha256(f"firmware PCR {index} event {n}".encode()).digest() for n in (0, 1)]


@dataclass(frozen=True, slots=True, kw_only=True)
class RecordedQuote:
    """One quote as the agent produced it, and what it answers."""

    name: str
    boot_id: str
    nonce: bytes
    pcrs: tuple[int, ...]  # the PCRs the TPM was asked to quote
    after: int  # the records sent are those after this one (-1: the whole log)
    attest: bytes
    signature: bytes
    pcr_values: Mapping[int, bytes]
    events: tuple[Record, ...]

    def evidence(self) -> Evidence:
        return Evidence(
            attest=self.attest,
            signature=self.signature,
            pcr_values=dict(self.pcr_values),
            boot_id=self.boot_id,
            events=self.events,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "nonce": self.nonce.hex(),
            "pcrs": list(self.pcrs),
            "after": self.after,
            "attest": self.attest.hex(),
            "signature": self.signature.hex(),
            "pcr_values": {str(i): v.hex() for i, v in sorted(self.pcr_values.items())},
            "events": [r.to_json() for r in self.events],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], boot_id: str, where: str) -> RecordedQuote:
        return cls(
            name=data["name"],
            boot_id=boot_id,
            nonce=bytes.fromhex(data["nonce"]),
            pcrs=tuple(data["pcrs"]),
            after=data["after"],
            attest=bytes.fromhex(data["attest"]),
            signature=bytes.fromhex(data["signature"]),
            pcr_values={int(i): bytes.fromhex(v) for i, v in data["pcr_values"].items()},
            events=tuple(
                parse_record(r, f"{where} events[{i}]") for i, r in enumerate(data["events"])
            ),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Epoch:
    """The quotes of one TPM epoch (one resetCount, restartCount), in the order taken."""

    name: str
    how: str  # how this epoch began
    boot_id: str
    quotes: tuple[RecordedQuote, ...]

    def quote(self, name: str) -> RecordedQuote:
        for q in self.quotes:
            if q.name == name:
                return q
        raise KeyError(f"epoch {self.name} has no quote {name!r}")

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "epoch": self.name,
            "how": self.how,
            "boot_id": self.boot_id,
            "quotes": [q.to_json() for q in self.quotes],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str) -> Epoch:
        if data.get("format") != FORMAT:
            raise ValueError(f"{where}: format {data.get('format')!r}, expected {FORMAT}")
        boot_id = data["boot_id"]
        return cls(
            name=data["epoch"],
            how=data["how"],
            boot_id=boot_id,
            quotes=tuple(
                RecordedQuote.from_json(q, boot_id, f"{where} quotes[{i}]")
                for i, q in enumerate(data["quotes"])
            ),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class Recording:
    """The AK that signed every quote, and the epochs in the order the TPM went through them."""

    ak_public: bytes
    epochs: tuple[Epoch, ...]

    def epoch(self, name: str) -> Epoch:
        for e in self.epochs:
            if e.name == name:
                return e
        raise KeyError(f"no epoch {name!r} was recorded")


def dump(recording: Recording, directory: Path) -> list[Path]:
    """Write ``recording`` to ``directory``; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / "ak.json"]
    paths[0].write_text(
        json.dumps({"format": FORMAT, "ak_public": recording.ak_public.hex()}) + "\n"
    )
    for n, epoch in enumerate(recording.epochs, start=1):
        path = directory / f"{n}-{epoch.name}.json"
        path.write_text(json.dumps(epoch.to_json(), indent=1) + "\n")
        paths.append(path)
    return paths


def load(directory: Path = EVIDENCE_DIR) -> Recording:
    """The recording in ``directory``, epochs in file-name order."""
    ak = json.loads((directory / "ak.json").read_text())
    files = sorted(
        (p for p in directory.glob("*-*.json")), key=lambda p: int(p.name.split("-", 1)[0])
    )
    epochs = tuple(Epoch.from_json(json.loads(p.read_text()), p.name) for p in files)
    return Recording(ak_public=bytes.fromhex(ak["ak_public"]), epochs=epochs)
