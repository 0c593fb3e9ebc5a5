"""Verifier core side by side with the real anchor, Keylime 7.14.3: ``Tpm.check_quote`` with
a 3-entry IMA log per quote against trusthook's appraisal of the same number of quotes, signed
by the same software AK over the same number of PCRs, with 3 new log records per quote.

Usage (root, Debian 12): .venv/bin/python -m bench.attestation.keylime_compare [--quotes N]
    [--rounds R]. Goal: trusthook >= 5x Keylime in quotes per second per core.

What it installs, idempotently (checked first, installed only when missing):
- apt (``apt-get install -y --no-install-recommends``): ``python3-gpg`` (``keylime.signing``
  imports ``gpg``), ``libefivar1`` (its measured-boot parser), and the pure-Python modules
  ``keylime.tpm.tpm_main`` imports at run time although the wheel declares no dependencies:
  ``python3-pyasn1``, ``python3-pyasn1-modules`` (cert_utils), ``python3-jsonschema`` (ima,
  which pulls python3-attr and python3-pyrsistent), ``python3-lark`` and ``python3-packaging``
  (ima_dm, api_version), ``python3-yaml`` (config). Not needed for this path: tornado,
  sqlalchemy (keylime.json tries it and goes on without), requests, typing_extensions.
- a virtualenv ``/var/tmp/trusthook-bench/keylime-venv`` made by ``/usr/bin/python3`` (3.11)
  with ``--system-site-packages``, and in it, ``pip install --no-deps --require-hashes`` of
  ``keylime==7.14.3`` and of the same ``cryptography==50.0.2`` (with ``cffi==2.1.1``,
  ``pycparser==3.12``) that trusthook's venv has, so that both sides verify RSA with the same
  OpenSSL: Debian's python3-cryptography 38 is several times slower at it. The hashes are those
  PyPI's simple index lists (``pip download ... --no-deps`` then ``pip hash``).
- Keylime reads its config from a temporary directory (``KEYLIME_LOGGING_CONFIG``,
  ``KEYLIME_VERIFIER_CONFIG``, ``KEYLIME_DIR``); nothing is written to /etc/keylime. Its log
  level there is WARNING: without a logging config it logs DEBUG to stderr, and the shipped
  one logs ~10 INFO lines per quote, a cost this benchmark leaves out in Keylime's favour.

The workload, made here (tests/softtpm.py's AK, marshaled by tpm2-pytss, not by either
verifier's parser): N quotes by one software AK (RSA-2048, RSASSA-SHA256, the agent's AK
template), each with a fresh nonce, over 9 SHA-256 PCRs: 0-7 (golden values: those of the
recorded swtpm evidence's simulated firmware) and the log PCR, with the TPM clock moving forward.
- Keylime: PCRs 0-7 and 10. Its quote string ``r<b64 TPMS_ATTEST>:<b64 TPMT_SIGNATURE>:<b64
  pcrblob>`` (pcrblob: tpm2-tools' little-endian TPML_PCR_SELECTION + TPML_DIGEST[] dump), the
  AK as base64 TPM2B_PUBLIC (as the registrar keeps it), a 20-character nonce (as its verifier
  makes them), a ``tpm_policy`` with the golden values of PCRs 0-7, and 3 new ``ima-ng`` lines
  per quote extended into PCR 10, all allowed by the runtime policy; one AgentAttestState
  carried through the quotes (incremental IMA attestation and clock checks, as its verifier
  does).
- trusthook: PCRs 0-7 and 23; ``Evidence`` with 3 new launch records per quote extended into
  PCR 23, the host state carried from quote to quote. Timed twice: the core (``appraise`` with
  the AK checked once per round, as verify_core.py does) and per attestation as the server
  does it: the ``AttestationRequest`` (base64/hex members, records as JSON objects) turned into
  ``Evidence``, the host's AK looked up as the server does (``service.attestation_key``: checked
  once per AK and kept; its cache is cleared at each round's start), then ``appraise``. That is
  the layer of Keylime's ``check_quote``, which takes wire strings and converts the AK's
  TPM2B_PUBLIC every time.

Both sides run in one run, interleaved round by round (Keylime in a child process in its venv,
its timing loop inside the child), on one core each (``time.process_time``). Every verdict must
be a pass, and before timing each side is shown a forged nonce, a PCR outside the golden values
and a log entry that its policy does not allow, and must refuse all three.
"""

from __future__ import annotations

import argparse
import base64
import cProfile
import hashlib
import io
import itertools
import json
import os
import pstats
import secrets
import shutil
import statistics
import string
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from tests.data.recorded import firmware_digests
from tests.softtpm import Clock, SoftTpm

from trusthook.attest.appraise import Evidence, Expectations, HostState, appraise
from trusthook.attest.identity import check_ak_public
from trusthook.attest.quote import verify_quote
from trusthook.attest.tpmwire import TPM_ALG_SHA256, parse_rsassa_signature
from trusthook.common.eventlog import Identity, LaunchEvent, Record, extend, parse_record
from trusthook.server import api
from trusthook.server.service import attestation_key, evidence_of

GOAL = 5.0
CACHE = Path("/var/tmp/trusthook-bench")
VENV = CACHE / "keylime-venv"
SYSTEM_PYTHON = "/usr/bin/python3"
APT_PACKAGES = (
    "python3-gpg",
    "libefivar1",
    "python3-pyasn1",
    "python3-pyasn1-modules",
    "python3-jsonschema",
    "python3-lark",
    "python3-packaging",
    "python3-yaml",
)
PIP_PINS = {
    "keylime": ("7.14.3", "38596188f7950ae7d095b162a3ecc61345cd6f419b8302f5cf1c961d8e586e8d"),
    # cp311-abi3-manylinux_2_34_x86_64, the wheel trusthook's venv has
    "cryptography": ("50.0.2", "9dab55f57c74c3cad24c323bacbbd04be4705ba6eb0d92e920b1fc4837ed5079"),
    # cp311-cp311-manylinux2014_x86_64
    "cffi": ("2.1.1", "34e261f78cb6ceaaa36f42f2613f4380d94d9c759a9c73c769ee6e0247364632"),
    "pycparser": ("3.12", "a076f3f489b39b43ed13563a1dafe42447445bec2e294154ec5c57fcdda4c85e"),
}
FIRMWARE_PCRS = tuple(range(8))
KEYLIME_IMA_PCR = 10
CONTAINER_PCR = 23
ENTRIES = 3  # new log entries per quote, both sides
RESET_COUNT, RESTART_COUNT = 3, 0
BOOT_ID = "bench-boot"

KEYLIME_CHECKS = (
    "AK: TPM2B_PUBLIC -> PEM -> key, every quote",
    "signature: RSASSA over TPMS_ATTEST, hash algorithm is the expected sha256",
    "nonce: quote extraData = the nonce",
    "PCR digest: the pcrblob's values hash to the quoted pcrDigest",
    "clock: resetCount/restartCount do not decrease, safe=1, clock increases",
    "golden PCRs: 0-7 against tpm_policy",
    "IMA: each ima-ng line parsed, its template hash recomputed (sha1), its file digest"
    " looked up in the runtime policy (excludes, allow list), replayed onto PCR 10 from"
    " the last verified value until it matches the quoted value, quote progress",
    "not: measured-boot log (none given), data PCR 16 binding (no payload key), IMA"
    " signatures (no keyring), policy load/DB, JSON, HTTP",
)
TRUSTHOOK_CHECKS = (
    "AK: public area parsed and checked (restricted RSA-2048 RSASSA-SHA256 signing key) once"
    " per AK and kept, as the server does (server path); once per round in the core",
    "signature: RSASSA-SHA256 over TPMS_ATTEST (checked before parsing it)",
    "nonce: quote extraData = the nonce",
    "PCR selection: exactly the SHA-256 bank, exactly the PCRs asked for; values sent = those",
    "PCR digest: the values sent hash to the quoted pcrDigest",
    "clock: epoch (resetCount, restartCount) = the verified one or a new one with a new boot"
    " id, clock does not go backwards within the epoch, safe=1",
    "golden PCRs: 0-7 against the host group's values",
    "log: each record's number continues the last verified one, targets PCR 23, its digest ="
    " SHA-256 of its canonical (RFC 8785) content (recomputed), same boot id; replayed from"
    " the last verified PCR value to exactly the quoted one",
    "server path also: base64/hex members decoded, each record parsed from its JSON object",
    "not: nonce store, request signature, host attributes, policy manifest, DB, JSON, HTTP",
)


# ---------------------------------------------------------------- installing Keylime


def _run(argv: Sequence[str], what: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{what} failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    return done.stdout


def _apt_missing() -> list[str]:
    missing = []
    for package in APT_PACKAGES:
        done = subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", package],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0 or "install ok installed" not in done.stdout:
            missing.append(package)
    return missing


def _venv_versions(python: Path) -> dict[str, str]:
    probe = (
        "import importlib.metadata as m, json\n"
        "out = {}\n"
        f"for name in {sorted(PIP_PINS)!r}:\n"
        "    try: out[name] = m.version(name)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, check=False)
    return json.loads(done.stdout) if done.returncode == 0 else {}


def ensure_keylime(log: Callable[[str], None]) -> Path:
    """The Keylime venv's python, after installing whatever is missing."""
    missing = _apt_missing()
    if missing:
        log(f"apt-get install {' '.join(missing)}")
        install = ["apt-get", "install", "-y", "--no-install-recommends", *missing]
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        if subprocess.run(install, capture_output=True, env=env, check=False).returncode != 0:
            _run(["apt-get", "update"], "apt-get update")
            _run(install, "apt-get install")
    python = VENV / "bin" / "python"
    if not python.exists():
        log(f"virtualenv {VENV} (--system-site-packages, {SYSTEM_PYTHON})")
        CACHE.mkdir(parents=True, exist_ok=True)
        _run([SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(VENV)], "venv")
    wanted = {name: version for name, (version, _) in PIP_PINS.items()}
    if _venv_versions(python) != wanted:
        log("pip install --require-hashes " + " ".join(f"{n}=={v}" for n, v in wanted.items()))
        with tempfile.NamedTemporaryFile("w", suffix=".txt", prefix="keylime-req-") as req:
            for name, (version, digest) in PIP_PINS.items():
                req.write(f"{name}=={version} --hash=sha256:{digest}\n")
            req.flush()
            _run(
                [str(python), "-m", "pip", "install", "--quiet", "--no-deps",
                 "--require-hashes", "--disable-pip-version-check", "-r", req.name],
                "pip install",
            )  # fmt: skip
        got = _venv_versions(python)
        if got != wanted:
            raise SystemExit(f"Keylime venv has {got}, expected {wanted}")
    return python


# ---------------------------------------------------------------- the workload


def golden_values() -> dict[int, bytes]:
    """PCRs 0-7 as the recorded swtpm evidence's simulated firmware leaves them."""
    values = {}
    for index in FIRMWARE_PCRS:
        value = bytes(32)
        for digest in firmware_digests(index):
            value = extend(value, digest)
        values[index] = value
    return values


def pcrblob(values: dict[int, bytes]) -> bytes:
    """tpm2-tools' PCR dump that Keylime's agent sends: TPML_PCR_SELECTION as in memory (16
    slots of hash, sizeofSelect, pcrSelect[4], padding), then TPML_DIGEST[] of 8 digests each
    (TPM2B_DIGEST with a 64-byte buffer), little-endian."""
    bitmap = sum(1 << i for i in values).to_bytes(3, "little")
    slots = struct.pack("<HB3s2x", TPM_ALG_SHA256, 3, bitmap) + bytes(8) * 15
    ordered = [values[i] for i in sorted(values)]
    chunks = [ordered[i : i + 8] for i in range(0, len(ordered), 8)]
    out = [struct.pack("<I", 1), slots, struct.pack("<I", len(chunks))]
    for chunk in chunks:
        out.append(struct.pack("<I", len(chunk)))
        out.extend(struct.pack("<H", len(v)) + v.ljust(64, b"\0") for v in chunk)
        out.append(bytes(66) * (8 - len(chunk)))
    return b"".join(out)


def ima_ng(path: str, file_digest: bytes) -> tuple[str, bytes]:
    """An ima-ng line (template hash SHA-1, as the kernel writes it) and the SHA-256 of its
    template data, which IMA extends into the SHA-256 bank of PCR 10."""
    d = b"sha256:\0" + file_digest
    n = path.encode() + b"\0"
    template = struct.pack("<I", len(d)) + d + struct.pack("<I", len(n)) + n
    template_hash = hashlib.sha1(template, usedforsecurity=False).hexdigest()
    line = f"{KEYLIME_IMA_PCR} {template_hash} ima-ng sha256:{file_digest.hex()} {path}"
    return line, hashlib.sha256(template).digest()


def launch(n: int) -> LaunchEvent:
    return LaunchEvent(
        container_id=f"bench-{n}",
        bundle=f"/run/bench/{n}",
        image_reference="busybox:latest",
        image_digest="sha256:" + "ab" * 32,
        rootfs_digest="sha256:" + secrets.token_hex(32),
        rootfs_entries=279,
        config_digest="sha256:" + secrets.token_hex(32),
        launch_profile_digest="sha256:" + secrets.token_hex(32),
        stage="createRuntime",
        time="2026-11-28T00:00:00.000000Z",
        boot_id=BOOT_ID,
        identity=Identity(workload=f"bench/w{n % 1000}"),
        encrypted=False,
    )


@dataclass(frozen=True, slots=True)
class Case:
    """One trusthook attestation: what the server issued and holds, and what the host sent."""

    nonce: bytes
    state: HostState
    evidence: Evidence
    request: api.AttestationRequest


@dataclass(frozen=True, slots=True)
class Workload:
    ak_public: bytes
    golden: dict[int, bytes]
    trusthook: list[Case]
    keylime: dict[str, Any]  # what the child reads: see KEYLIME_CHILD


def build(quotes: int) -> Workload:
    tpm = SoftTpm()
    ak_public = tpm.ak_public
    golden = golden_values()
    cases: list[Case] = []
    state = HostState(
        reset_count=RESET_COUNT, restart_count=RESTART_COUNT, boot_id=BOOT_ID, verified_recnum=-1
    )
    tip = bytes(32)
    kl_quotes, allowed, ima_tip, recnum = [], {}, bytes(32), 0
    for i in range(quotes):
        clock = 100_000 + 20 * i
        records = []
        for _ in range(ENTRIES):
            records.append(Record.for_event(recnum=recnum, pcr=CONTAINER_PCR, event=launch(recnum)))
            tip, recnum = extend(tip, records[-1].digest), recnum + 1
        nonce = secrets.token_bytes(32)
        values = {**golden, CONTAINER_PCR: tip}
        attest, signature = tpm.quote(values, nonce, Clock(clock, RESET_COUNT, RESTART_COUNT))
        evidence = Evidence(
            attest=attest,
            signature=signature,
            pcr_values=values,
            boot_id=BOOT_ID,
            events=tuple(records),
        )
        request = api.AttestationRequest(
            nonce=api.b64(nonce),
            quote=api.QuoteBody(attest=api.b64(attest), signature=api.b64(signature)),
            pcrs={str(k): v.hex() for k, v in sorted(values.items())},
            boot_id=BOOT_ID,
            events=[json.loads(json.dumps(r.to_json())) for r in records],
        )
        cases.append(Case(nonce, state, evidence, request))
        state = replace(state, clock=clock, verified_recnum=recnum - 1, verified_pcr=tip)

        lines = []
        for e in range(ENTRIES):
            path = f"/usr/lib/bench/q{i}/f{e}.so"
            file_digest = secrets.token_bytes(32)
            line, pcr_digest = ima_ng(path, file_digest)
            lines.append(line + "\n")
            allowed[path] = [file_digest.hex()]
            ima_tip = extend(ima_tip, pcr_digest)
        kl_nonce = "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(20))
        kl_values = {**golden, KEYLIME_IMA_PCR: ima_tip}
        kl_attest, kl_signature = tpm.quote(
            kl_values, kl_nonce.encode(), Clock(clock, RESET_COUNT, RESTART_COUNT)
        )
        blobs = (kl_attest, kl_signature, pcrblob(kl_values))
        kl_quotes.append(
            {
                "nonce": kl_nonce,
                "quote": "r" + ":".join(base64.b64encode(b).decode() for b in blobs),
                "ima": "".join(lines),
            }
        )
    mask = sum(1 << i for i in (*FIRMWARE_PCRS, KEYLIME_IMA_PCR))
    keylime = {
        "ak": base64.b64encode(ak_public).decode(),
        "tpm_policy": {str(i): [golden[i].hex()] for i in FIRMWARE_PCRS} | {"mask": hex(mask)},
        "runtime_policy": {
            "meta": {"version": 1, "generator": 0},
            "release": 0,
            "digests": allowed,
            "excludes": [],
            "keyrings": {},
            "ima": {"ignored_keyrings": [], "log_hash_alg": "sha1", "dm_policy": None},
            "ima-buf": {},
            "verification-keys": "",
        },
        "quotes": kl_quotes,
    }
    return Workload(ak_public=ak_public, golden=golden, trusthook=cases, keylime=keylime)


# ---------------------------------------------------------------- trusthook's side


def expectations(golden: dict[int, bytes]) -> Expectations:
    return Expectations(
        container_pcr=CONTAINER_PCR, golden={i: frozenset({v}) for i, v in golden.items()}
    )


def core_round(work: Workload, expect: Expectations) -> tuple[float, float]:
    """One pass of ``appraise`` over the cases, the AK checked once: CPU and wall seconds."""
    cpu, wall = time.process_time(), time.perf_counter()
    key = check_ak_public(work.ak_public)
    for case in work.trusthook:
        result = appraise(
            key=key, nonce=case.nonce, evidence=case.evidence, expect=expect, state=case.state
        )
        if result.reasons:
            raise AssertionError(f"trusthook refused a good quote: {result.reasons}")
    return time.process_time() - cpu, time.perf_counter() - wall


def server_round(work: Workload, expect: Expectations) -> tuple[float, float]:
    """One pass as the server attests: request decoded, the host's AK looked up (the server
    checks an AK once and keeps it: ``service.attestation_key``), ``appraise``."""
    attestation_key.cache_clear()  # the first attestation of the round pays the check
    cpu, wall = time.process_time(), time.perf_counter()
    for case in work.trusthook:
        evidence = evidence_of(case.request)
        result = appraise(
            key=attestation_key(work.ak_public),
            nonce=api.field_bytes(case.request.nonce, "nonce"),
            evidence=evidence,
            expect=expect,
            state=case.state,
        )
        if result.reasons:
            raise AssertionError(f"trusthook refused a good quote: {result.reasons}")
    return time.process_time() - cpu, time.perf_counter() - wall


def trusthook_controls(work: Workload, expect: Expectations) -> dict[str, list[str]]:
    """The checks refusing: a forged nonce, a PCR 0 outside the golden values, an altered
    record. Each must be refused; returns the checks that refused each."""
    key = check_ak_public(work.ak_public)
    good = work.trusthook[1]
    other_golden = replace(
        expect, golden={**expect.golden, 0: frozenset({hashlib.sha256(b"other").digest()})}
    )
    event = good.evidence.events[0].event
    forged = replace(good.evidence.events[0], event=replace(event, container_id="evil"))
    altered = replace(good.evidence, events=(forged, *good.evidence.events[1:]))
    trials = {
        "forged nonce": (work.trusthook[0].nonce, good.evidence, expect),
        "PCR 0 not golden": (good.nonce, good.evidence, other_golden),
        "log entry altered": (good.nonce, altered, expect),
    }
    out = {}
    for what, (nonce, evidence, exp) in trials.items():
        result = appraise(key=key, nonce=nonce, evidence=evidence, expect=exp, state=good.state)
        if not result.reasons:
            raise AssertionError(f"trusthook accepted a quote with a {what}")
        out[what] = [r.check for r in result.reasons]
    return out


def check_chain(work: Workload, expect: Expectations) -> None:
    """Each appraisal's next state is the state the next case was built with."""
    key = check_ak_public(work.ak_public)
    cases = work.trusthook
    for case, following in itertools.pairwise(cases):
        result = appraise(
            key=key, nonce=case.nonce, evidence=case.evidence, expect=expect, state=case.state
        )
        if result.reasons or result.state != following.state:
            raise AssertionError(f"the state chain broke: {result.reasons}, {result.state}")


def breakdown(work: Workload, expect: Expectations) -> list[tuple[str, float]]:
    """The server path's parts, each timed alone over the cases."""
    key = check_ak_public(work.ak_public)
    cases = work.trusthook

    def best(step: Callable[[Case], object]) -> float:
        runs = []
        for _ in range(3):
            start = time.process_time()
            for case in cases:
                step(case)
            runs.append(time.process_time() - start)
        return min(runs) / len(cases) * 1e6

    def core(case: Case) -> object:
        return appraise(
            key=key, nonce=case.nonce, evidence=case.evidence, expect=expect, state=case.state
        )

    def quote_only(case: Case) -> object:
        ev = case.evidence
        return verify_quote(
            key=key,
            attest=ev.attest,
            signature=ev.signature,
            nonce=case.nonce,
            pcrs=expect.pcrs,
            pcr_values=ev.pcr_values,
        )

    def rsa_only(case: Case) -> None:
        signature = parse_rsassa_signature(case.evidence.signature)
        key.public_key().verify(
            signature, case.evidence.attest, padding.PKCS1v15(), hashes.SHA256()
        )

    def ak(_: Case) -> object:
        return check_ak_public(work.ak_public)

    def decode(case: Case) -> object:
        return evidence_of(case.request)

    def records(case: Case) -> object:
        return [parse_record(r, "record") for r in case.request.events]

    def digests(case: Case) -> object:
        return [r.event.digest() for r in case.evidence.events]

    return [
        ("check_ak_public (tpm2-pytss unmarshal, re-marshal, checks)", best(ak)),
        ("request -> Evidence (service.evidence_of)", best(decode)),
        (f"  of which parse_record x{ENTRIES}", best(records)),
        ("appraise (the core)", best(core)),
        ("  of which verify_quote", best(quote_only)),
        ("    of which the RSA-2048 verify itself", best(rsa_only)),
        (f"  of which record digests recomputed x{ENTRIES} (RFC 8785 + SHA-256)", best(digests)),
    ]


def profile(work: Workload, expect: Expectations) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    server_round(work, expect)
    profiler.disable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(18)
    return out.getvalue()


# ---------------------------------------------------------------- Keylime's side, in its venv

KEYLIME_CHILD = r"""
import json, sys, time
import cryptography
from cryptography.hazmat.backends.openssl import backend
from keylime.agentstates import AgentAttestState
from keylime.common.algorithms import Hash
from keylime.mba import mba
from keylime.tpm.tpm_main import Tpm
from importlib.metadata import version

work = json.load(open(sys.argv[1]))
mba.load_imports()  # as keylime_verifier does at start
tpm = Tpm()
AK, POLICY, RUNTIME, QUOTES = work["ak"], work["tpm_policy"], work["runtime_policy"], work["quotes"]


def check(state, q, tpm_policy=POLICY, runtime=RUNTIME, nonce=None):
    return tpm.check_quote(
        state, nonce or q["nonce"], None, q["quote"], AK, tpm_policy, q["ima"], runtime,
        Hash.SHA256, state.get_ima_keyrings(),
    )


def run_round():
    state = AgentAttestState("bench-agent")
    cpu, wall = time.process_time(), time.perf_counter()
    for q in QUOTES:
        failure = check(state, q)
        if failure:
            return {"error": [(e.event_id, str(e.context)[:300]) for e in failure.events]}
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    # the IMA and clock checks ran on every quote and kept their state
    return {"cpu": cpu, "wall": wall, "ima_entries": state.get_next_ima_ml_entry(),
            "clock": state.get_tpm_clockinfo().clock}


def controls():
    out = {}
    bad_policy = dict(POLICY, **{"0": ["00" * 32]})
    bad_runtime = json.loads(json.dumps(RUNTIME))
    first_path = QUOTES[0]["ima"].split("\n")[0].split(" ")[4]
    bad_runtime["digests"][first_path] = ["00" * 32]
    trials = {
        "forged nonce": {"nonce": QUOTES[1]["nonce"]},
        "PCR 0 not golden": {"tpm_policy": bad_policy},
        "log entry altered": {"runtime": bad_runtime},
    }
    for what, kwargs in trials.items():
        failure = check(AgentAttestState("bench-control"), QUOTES[0], **kwargs)
        out[what] = failure.get_event_ids() if failure else []
    return out


print(json.dumps({"ready": True, "keylime": version("keylime"),
                  "cryptography": cryptography.__version__,
                  "openssl": backend.openssl_version_text(), "python": sys.version.split()[0]}),
      flush=True)
for command in sys.stdin:
    command = command.strip()
    reply = run_round() if command == "round" else controls() if command == "controls" else {}
    print(json.dumps(reply), flush=True)
"""

LOGGING_CONF = """\
[loggers]
keys = root

[handlers]
keys = stderr

[formatters]
keys = plain

[logger_root]
level = {level}
handlers = stderr

[handler_stderr]
class = StreamHandler
level = {level}
formatter = plain
args = (sys.stderr,)

[formatter_plain]
format = keylime %(name)s %(levelname)s %(message)s
"""

VERIFIER_CONF = """\
[verifier]
measured_boot_imports = []
measured_boot_evaluate = once
ignore_tomtou_errors = False
"""


class KeylimeChild:
    """Keylime's verifier core in its venv, driven one command (one line) at a time."""

    def __init__(self, python: Path, work: Path, workload: dict[str, Any], log_level: str) -> None:
        (work / "child.py").write_text(KEYLIME_CHILD)
        (work / "workload.json").write_text(json.dumps(workload))
        (work / "logging.conf").write_text(LOGGING_CONF.format(level=log_level))
        (work / "verifier.conf").write_text(VERIFIER_CONF)
        (work / "keylime").mkdir()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "KEYLIME_LOGGING_CONFIG": str(work / "logging.conf"),
            "KEYLIME_VERIFIER_CONFIG": str(work / "verifier.conf"),
            "KEYLIME_DIR": str(work / "keylime"),
            "HOME": str(work),
        }
        self._stderr = (work / "keylime.stderr").open("w+")
        self._proc = subprocess.Popen(
            [str(python), str(work / "child.py"), str(work / "workload.json")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            env=env,
            cwd=work,
        )
        self.info = self._reply()

    def _reply(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self._stderr.seek(0)
            raise SystemExit(f"Keylime's child ended: {self._stderr.read()[-3000:]}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def ask(self, command: str) -> dict[str, Any]:
        stdin: IO[str] | None = self._proc.stdin
        assert stdin is not None
        stdin.write(command + "\n")
        stdin.flush()
        return self._reply()

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read()

    def close(self) -> None:
        if self._proc.stdin is not None:
            self._proc.stdin.close()
        self._proc.wait(timeout=30)
        self._stderr.close()


# ---------------------------------------------------------------- main


@dataclass
class Timings:
    """CPU and wall seconds per round, per contender."""

    cpu: dict[str, list[float]]
    wall: dict[str, list[float]]
    keylime_info: dict[str, Any]
    keylime_refused: dict[str, list[str]]
    keylime_logged: list[str]  # Keylime's log lines while timed


def run(work: Workload, python: Path, rounds: int, log_level: str) -> Timings:
    """The interleaved rounds: trusthook's core, Keylime's in its child, trusthook's server
    path, ``rounds`` times."""
    expect = expectations(work.golden)
    cpu: dict[str, list[float]] = {"keylime": [], "server": [], "core": []}
    wall: dict[str, list[float]] = {"keylime": [], "server": [], "core": []}
    tmp = Path(tempfile.mkdtemp(prefix="trusthook-keylime-"))
    child = KeylimeChild(python, tmp, work.keylime, log_level)
    try:
        refused = child.ask("controls")
        for what, ids in refused.items():
            if not ids:
                raise AssertionError(f"Keylime accepted a quote with a {what}")
        control_lines = len(child.stderr().splitlines())  # the controls' own errors
        for _ in range(rounds):
            for name, timed in (("core", core_round), ("keylime", None), ("server", server_round)):
                if timed is not None:
                    seconds = timed(work, expect)
                else:
                    reply = child.ask("round")
                    if "error" in reply:
                        raise AssertionError(f"Keylime refused a good quote: {reply['error']}")
                    if reply["ima_entries"] != ENTRIES * len(work.trusthook):
                        raise AssertionError(f"Keylime's IMA state moved {reply['ima_entries']}")
                    seconds = reply["cpu"], reply["wall"]
                cpu[name].append(seconds[0])
                wall[name].append(seconds[1])
        logged = child.stderr().splitlines()[control_lines:]
        info = child.info
    finally:
        child.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return Timings(
        cpu=cpu, wall=wall, keylime_info=info, keylime_refused=refused, keylime_logged=logged
    )


def describe(work: Workload, t: Timings, rounds: int, refused: dict[str, list[str]]) -> None:
    from cryptography import __version__ as crypto_version  # noqa: PLC0415
    from cryptography.hazmat.backends.openssl import backend  # noqa: PLC0415

    n, info = len(work.trusthook), t.keylime_info
    print(
        f"workload: {n} quotes x {rounds} interleaved rounds, one software AK (RSA-2048,"
        f" RSASSA-SHA256), fresh nonce each, {ENTRIES} new log entries per quote"
    )
    print(
        "  Keylime   PCRs 0-7 (tpm_policy) + 10 (IMA, ima-ng lines, runtime policy of"
        f" {ENTRIES * n} files); Keylime {info['keylime']}, Python {info['python']},"
        f" cryptography {info['cryptography']}, {info['openssl']}"
    )
    print(
        "  trusthook PCRs 0-7 (golden) + 23 (launch records, CEL JSON); Python"
        f" {sys.version.split()[0]}, cryptography {crypto_version},"
        f" {backend.openssl_version_text()}"
    )
    print("what each checks, per quote:")
    for title, checks in (("Keylime Tpm.check_quote", KEYLIME_CHECKS),
                          ("trusthook appraise", TRUSTHOOK_CHECKS)):  # fmt: skip
        print(f"  {title}:")
        for check in checks:
            print(f"    - {check}")
    print("refused, as they must be (the checks that refused):")
    for what, ours in refused.items():
        print(f"  {what:18s} Keylime {t.keylime_refused[what]}  trusthook {ours}")


def _per_quote_us(seconds: Sequence[float], quotes: int) -> tuple[float, float]:
    """Median and best CPU microseconds per quote over the rounds."""
    return statistics.median(seconds) / quotes * 1e6, min(seconds) / quotes * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quotes", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per side")
    parser.add_argument(
        "--keylime-log-level",
        choices=("WARNING", "INFO", "DEBUG"),
        default="WARNING",
        help="Keylime's log level (to a file); its shipped logging.conf says INFO",
    )
    args = parser.parse_args(argv)
    if args.quotes < 2 or args.rounds < 1:
        parser.error("--quotes must be >= 2 and --rounds >= 1")
    python = ensure_keylime(lambda s: print(f"installing: {s}", flush=True))
    work = build(args.quotes)
    expect = expectations(work.golden)
    check_chain(work, expect)
    refused = trusthook_controls(work, expect)
    t = run(work, python, args.rounds, args.keylime_log_level)
    describe(work, t, args.rounds, refused)
    print(
        f"Keylime logged {len(t.keylime_logged)} lines at {args.keylime_log_level} or above"
        " while timed" + (f", the last: {t.keylime_logged[-1][:160]}" if t.keylime_logged else "")
    )
    n = args.quotes
    print(f"{'':28s} {'CPU us/quote':>13s} {'best':>7s} {'quotes/s/core':>14s} {'wall us':>8s}"
          "   per-round CPU us/quote")  # fmt: skip
    for name, title in (("keylime", "Keylime check_quote"),
                        ("server", "trusthook, per attestation"),
                        ("core", "trusthook core (AK cached)")):  # fmt: skip
        median, best = _per_quote_us(t.cpu[name], n)
        per_round = " ".join(f"{s / n * 1e6:.0f}" for s in t.cpu[name])
        print(f"{title:28s} {median:13.1f} {best:7.1f} {1e6 / median:14.0f}"
              f" {statistics.median(t.wall[name]) / n * 1e6:8.1f}   {per_round}")  # fmt: skip
    keylime = statistics.median(t.cpu["keylime"])
    ratio = keylime / statistics.median(t.cpu["server"])
    ratio_core = keylime / statistics.median(t.cpu["core"])
    print(
        f"ratio trusthook/Keylime: {ratio:.2f}x per attestation (server path),"
        f" {ratio_core:.2f}x core; goal >= {GOAL:.0f}x: {'met' if ratio >= GOAL else 'NOT met'}"
    )
    if ratio < GOAL:
        print("\nwhere trusthook's time goes per attestation (CPU us/quote, best of 3):")
        for what, us in breakdown(work, expect):
            print(f"  {what:62s} {us:7.1f}")
        print("\ncProfile of one server-path round (own time; the profiler inflates calls):")
        print(profile(work, expect))
    return 0 if ratio >= GOAL else 1


if __name__ == "__main__":
    raise SystemExit(main())
