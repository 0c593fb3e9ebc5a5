"""The messages between the CLI, the agent and the server: every one survives its JSON form,
matches the server's own models where the server speaks it, and refuses anything but its shape
with one line naming the member."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from trusthook.common.eventlog import LaunchEvent, Record
from trusthook.common.jsonread import FROM_AGENT, Message
from trusthook.common.messages import (
    ActivationRequest,
    AgentHealth,
    AttestationRequest,
    AuditCheckpointAnswer,
    AuditProofAnswer,
    AuditWatchAnswer,
    Enrollment,
    EnrollmentChallenge,
    EnrollmentRequest,
    EnrollmentResult,
    EnrollParams,
    EnrollResult,
    HostStatus,
    LastAttempt,
    NonceResponse,
    ReasonBody,
    ReleaseRequest,
    ReleaseResponse,
    SnapshotResult,
    StatusResult,
)
from trusthook.errors import AgentRefusedError, TrusthookError
from trusthook.server import api

text = st.text(max_size=12)
some_text = st.text(min_size=1, max_size=12)
optional_text = st.none() | text
blob = st.binary(max_size=48)

reasons = st.builds(ReasonBody, check=text, message=text, expected=optional_text, got=optional_text)
host_statuses = st.builds(
    HostStatus,
    host_id=text,
    hostname=text,
    group=text,
    trusted=st.booleans(),
    reasons=st.lists(reasons, max_size=3).map(tuple),
    since=text,
    valid_until=optional_text,
    last_attestation=optional_text,
    enrolled_at=text,
    verified_recnum=st.integers(min_value=-1, max_value=2**40),
)
enrollments = st.builds(Enrollment, server=text, host_id=text, hostname=text, group=text)
last_attempts = st.builds(
    LastAttempt, last_attempt=text, error=optional_text, last_verdict=st.none() | host_statuses
)
events = st.builds(
    LaunchEvent,
    container_id=text,
    bundle=text,
    image_reference=optional_text,
    image_digest=optional_text,
    rootfs_digest=text,
    rootfs_entries=st.integers(min_value=0, max_value=2**32),
    config_digest=text,
    launch_profile_digest=text,
    stage=text,
    time=text,
    boot_id=text,
)
records = st.builds(
    Record,
    recnum=st.integers(min_value=0, max_value=2**32),
    pcr=st.integers(min_value=0, max_value=23),
    digest=st.binary(min_size=32, max_size=32),
    event=events,
)

counts = st.integers(min_value=0, max_value=2**62)
agent_healths = st.builds(
    AgentHealth,
    pid=counts,
    started_at=text,
    rss_bytes=counts,
    cpu_ms=counts,
    open_fds=counts,
    threads=counts,
)
audit_watches = st.builds(
    AuditWatchAnswer,
    checkpoint=text.filter(bool),
    consistency=st.lists(st.binary(min_size=32, max_size=32), max_size=3).map(tuple),
)
MESSAGES: dict[type[Message], st.SearchStrategy[Any]] = {
    EnrollmentChallenge: st.builds(
        EnrollmentChallenge,
        enrollment_id=st.text("0123456789abcdefXYZ", min_size=1, max_size=32),
        host_id=text,
        credential_blob=blob,
        encrypted_secret=blob,
        expires_at=text,
    ),
    EnrollmentResult: st.builds(
        EnrollmentResult, host_id=text, group=text, certificate=text, ca_certificate=text
    ),
    NonceResponse: st.builds(
        NonceResponse,
        nonce=blob,
        expires_at=text,
        pcrs=st.lists(st.integers(min_value=0, max_value=23), max_size=4).map(tuple),
        verified_boot_id=optional_text,
        verified_recnum=st.integers(min_value=-1, max_value=2**40),
        audit=st.none() | audit_watches,
    ),
    AuditWatchAnswer: audit_watches,
    ReasonBody: reasons,
    HostStatus: host_statuses,
    ReleaseResponse: st.builds(
        ReleaseResponse, image=text, sealed_keys=st.dictionaries(text, text, max_size=3)
    ),
    EnrollParams: st.builds(
        EnrollParams,
        server=some_text,
        server_ca=text.map(lambda s: Path("/" + s)),
        hostname=some_text,
        note=text,
        reenroll=st.booleans(),
    ),
    EnrollResult: st.builds(EnrollResult, host_id=text, server=text, reenrolled=st.booleans()),
    Enrollment: enrollments,
    LastAttempt: last_attempts,
    AgentHealth: agent_healths,
    StatusResult: st.builds(
        StatusResult,
        enrollment=st.none() | enrollments,
        attempt=st.none() | last_attempts,
        agent=st.none() | agent_healths,
    ),
    SnapshotResult: st.builds(
        SnapshotResult,
        pcr=st.integers(min_value=0, max_value=23),
        pcr_value=st.binary(min_size=32, max_size=32),
        records=st.lists(records, max_size=3).map(tuple),
    ),
}
SERVER_MODELS: dict[type[Message], type[BaseModel]] = {
    EnrollmentChallenge: api.EnrollmentChallenge,
    EnrollmentResult: api.EnrollmentResult,
    NonceResponse: api.NonceResponse,
    AuditWatchAnswer: api.AuditWatch,
    ReasonBody: api.ReasonBody,
    HostStatus: api.HostStatus,
    ReleaseResponse: api.ReleaseResponse,
}
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)


def over_the_wire(message: Message) -> object:
    return json.loads(json.dumps(message.to_json()))


@pytest.mark.parametrize("kind", MESSAGES, ids=lambda kind: kind.__name__)
@given(data=st.data())
def test_round_trip(kind: type[Message], data: st.DataObject) -> None:
    message = data.draw(MESSAGES[kind])
    assert kind.from_json(over_the_wire(message)) == message


@pytest.mark.parametrize("kind", SERVER_MODELS, ids=lambda kind: kind.__name__)
@given(data=st.data())
def test_the_servers_answers_are_what_its_models_write(
    kind: type[Message], data: st.DataObject
) -> None:
    wire = data.draw(MESSAGES[kind]).to_json()
    assert SERVER_MODELS[kind].model_validate(wire).model_dump(mode="json") == wire


short = st.text(min_size=1, max_size=12)
b64_blob = st.binary(max_size=48)
one_line = st.text(st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=12)
attestation_requests = st.builds(
    AttestationRequest,
    nonce=b64_blob,
    quote_attest=b64_blob,
    quote_signature=b64_blob,
    pcrs=st.dictionaries(st.integers(0, 23), st.binary(min_size=32, max_size=32), max_size=3),
    boot_id=short,
    events=st.lists(records, max_size=2).map(tuple),
    attributes_attest=b64_blob,
    attributes_signature=b64_blob,
)
REQUESTS: list[tuple[st.SearchStrategy[Any], type[BaseModel]]] = [
    (
        st.builds(
            EnrollmentRequest,
            hostname=one_line,
            note=st.just("") | one_line,
            ek_certificate=b64_blob,
            ek_public=b64_blob,
            ak_public=b64_blob,
            csr=text,
            reenroll=st.booleans(),
        ),
        api.EnrollmentRequest,
    ),
    (
        st.builds(
            ActivationRequest,
            secret=st.binary(max_size=64),
            key_public=st.binary(max_size=64),
            key_attest=st.binary(max_size=64),
            key_signature=st.binary(max_size=64),
        ),
        api.ActivationRequest,
    ),
    (attestation_requests, api.AttestationRequest),
    (
        st.builds(
            ReleaseRequest,
            attestation=attestation_requests,
            launch_recnum=st.integers(min_value=0, max_value=2**32),
            manifest=b64_blob,
            key_public=b64_blob,
            key_attest=b64_blob,
            key_signature=b64_blob,
        ),
        api.ReleaseRequest,
    ),
]


@pytest.mark.parametrize(("requests", "model"), REQUESTS, ids=lambda r: getattr(r, "__name__", ""))
@given(data=st.data())
def test_the_agents_requests_are_what_the_servers_models_read(
    requests: st.SearchStrategy[Any], model: type[BaseModel], data: st.DataObject
) -> None:
    wire = data.draw(requests).to_json()
    assert model.model_validate(wire).model_dump(mode="json") == wire


@pytest.mark.parametrize("kind", MESSAGES, ids=lambda kind: kind.__name__)
@given(value=json_values)
def test_anything_else_raises_only_the_senders_error(kind: type[Message], value: object) -> None:
    try:
        kind.from_json(value)
    except TrusthookError as e:
        assert type(e) is kind.SOURCE.error
        assert "\n" not in str(e)
        assert " got " in str(e)
        assert ", expected " in str(e)


@pytest.mark.parametrize("kind", MESSAGES, ids=lambda kind: kind.__name__)
@given(data=st.data())
def test_a_member_replaced_by_anything_parses_or_is_refused_by_name(
    kind: type[Message], data: st.DataObject
) -> None:
    wire = data.draw(MESSAGES[kind]).to_json()
    if not wire:
        return
    key = data.draw(st.sampled_from(sorted(wire)))
    value = data.draw(json_values)
    try:
        kind.from_json({**wire, key: value})
    except TrusthookError as e:
        assert type(e) is kind.SOURCE.error
        assert key in str(e)


# what each message refuses: a sample, its members that may be absent, its integer members
REASON = ReasonBody(check="pcr", message="PCR 23 differs", expected="ab", got="cd")
VERDICT = HostStatus(
    host_id="h1",
    hostname="node-1",
    group="lab",
    trusted=False,
    reasons=(REASON,),
    since="2026-01-01T00:00:00.000000Z",
    valid_until=None,
    last_attestation="2026-01-01T00:00:00.000000Z",
    enrolled_at="2025-12-31T00:00:00.000000Z",
    verified_recnum=4,
)
ENROLLMENT = Enrollment(server="https://s:8443", host_id="h1", hostname="node-1", group="lab")
ATTEMPT = LastAttempt(last_attempt="2026-01-01T00:00:00.000000Z", error=None, last_verdict=VERDICT)
EVENT = LaunchEvent(
    container_id="c1",
    bundle="/run/b",
    image_reference=None,
    image_digest=None,
    rootfs_digest="sha256:" + "ab" * 32,
    rootfs_entries=3,
    config_digest="sha256:" + "cd" * 32,
    launch_profile_digest="sha256:" + "ef" * 32,
    stage="createRuntime",
    time="2026-01-01T00:00:00.000000Z",
    boot_id="b0",
)
SAMPLES: list[tuple[Message, set[str], set[str]]] = [
    (
        EnrollmentChallenge(
            enrollment_id="e1",
            host_id="h1",
            credential_blob=b"blob",
            encrypted_secret=b"secret",
            expires_at="2026-01-01T00:00:00.000000Z",
        ),
        set(),
        set(),
    ),
    (
        EnrollmentResult(host_id="h1", group="lab", certificate="PEM", ca_certificate="PEM"),
        {"audit_key"},
        set(),
    ),
    (
        NonceResponse(
            nonce=bytes(32),
            expires_at="2026-01-01T00:00:00.000000Z",
            pcrs=(23,),
            verified_boot_id=None,
            verified_recnum=-1,
            attributes_tag=bytes(68),
        ),
        {"audit"},
        {"verified_recnum"},
    ),
    (AuditWatchAnswer(checkpoint="origin\n1\nAAAA\n", consistency=(bytes(32),)), set(), set()),
    (REASON, {"expected", "got"}, set()),
    (VERDICT, set(), {"verified_recnum"}),
    (ReleaseResponse(image="sha256:" + "ab" * 32, sealed_keys={"iv": "AAAA"}), set(), set()),
    (
        EnrollParams(
            server="https://s:8443",
            server_ca=Path("/etc/ca.pem"),
            hostname="node-1",
            note="rack 4",
            reenroll=True,
        ),
        set(),
        set(),
    ),
    (EnrollResult(host_id="h1", server="https://s:8443", reenrolled=False), set(), set()),
    (ENROLLMENT, {"audit_key"}, set()),
    (ATTEMPT, {"last_verdict", "audit_error"}, set()),
    (
        LastAttempt(
            last_attempt="2026-01-01T00:00:00.000000Z",
            error=None,
            last_verdict=None,
            audit_size=7,
            audit_error=None,
        ),
        {"audit_error", "audit_size"},
        {"audit_size"},
    ),
    (AuditCheckpointAnswer(checkpoint="origin\n1\nAAAA\n"), set(), set()),
    (AuditProofAnswer(hashes=(bytes(32),)), set(), set()),
    (
        StatusResult(enrollment=ENROLLMENT, attempt=ATTEMPT),
        {"last_attempt", "last_verdict", "audit_error"},
        set(),
    ),
    (
        SnapshotResult(
            pcr=23,
            pcr_value=bytes(32),
            records=(Record.for_event(recnum=0, pcr=23, event=EVENT),),
        ),
        set(),
        {"pcr"},
    ),
]


def refusal(kind: type[Message], data: object) -> str:
    with pytest.raises(kind.SOURCE.error) as caught:
        kind.from_json(data)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{kind.SOURCE.owner} {kind.NOUN} is malformed: ")
    return message


def malformed(
    samples: list[tuple[Message, set[str], set[str]]],
) -> list[tuple[type[Message], object, str]]:
    """For each sample: not an object, each required member missing, each member of the wrong
    type, a boolean for each integer, and an unknown member where the message is strict."""
    cases: list[tuple[type[Message], object, str]] = []
    for message, optional, integers in samples:
        kind, wire = type(message), message.to_json()
        cases += [(kind, [], "got an array, expected an object"), (kind, None, "got null")]
        for key in sorted(set(wire) - optional):
            missing = {k: v for k, v in wire.items() if k != key}
            cases.append((kind, missing, f"{key} got nothing, expected "))
        for key in sorted(wire):
            cases.append((kind, {**wire, key: 3.5}, f"{key} got 3.5, expected "))
        for key in sorted(integers):
            cases.append((kind, {**wire, key: True}, f"{key} got true, expected an integer"))
        if kind.STRICT:
            cases.append((kind, {**wire, "junk": 1}, "got member 'junk', expected only "))
    return cases


@pytest.mark.parametrize(
    ("kind", "data", "needle"),
    malformed(SAMPLES),
    ids=lambda v: v.__name__ if isinstance(v, type) else "",
)
def test_malformed_is_refused_naming_the_member(
    kind: type[Message], data: object, needle: str
) -> None:
    assert needle in refusal(kind, data)


def wire(message: Message, **changes: object) -> dict[str, Any]:
    return {**message.to_json(), **changes}


@pytest.mark.parametrize(
    ("kind", "data", "needle"),
    [
        (HostStatus, wire(VERDICT, trusted="yes"), "trusted got 'yes', expected true or false"),
        (
            HostStatus,
            wire(VERDICT, reasons=[{"message": "m"}]),
            "reasons[0].check got nothing, expected a string",
        ),
        (
            EnrollmentChallenge,
            {**SAMPLES[0][0].to_json(), "enrollment_id": "../hosts"},
            "enrollment_id got '../hosts', expected letters and digits",
        ),
        (
            EnrollmentChallenge,
            {**SAMPLES[0][0].to_json(), "credential_blob": "not base64!"},
            "credential_blob got a string that is not base64, expected a base64 string",
        ),
        (
            NonceResponse,
            {**SAMPLES[2][0].to_json(), "pcrs": [23, 24]},
            "pcrs[1] got 24, expected a PCR index 0..23",
        ),
        (
            NonceResponse,
            {**SAMPLES[2][0].to_json(), "pcrs": [True]},
            "pcrs[0] got true, expected a PCR index 0..23",
        ),
        (
            ReleaseResponse,
            {"image": "x", "sealed_keys": {"iv": 1}},
            "sealed_keys got an object, expected an object of strings",
        ),
        (
            StatusResult,
            {"enrolled": True, "enrollment": None},
            "enrollment got null, expected an object, as enrolled is true",
        ),
        (
            StatusResult,
            {"enrolled": False, "enrollment": ENROLLMENT.to_json()},
            "enrollment got an object, expected null, as enrolled is false",
        ),
        (
            StatusResult,
            {"enrolled": False, "enrollment": None, "error": "boom"},
            "got member 'error', expected only agent, enrolled, enrollment, last_attempt",
        ),
        (
            StatusResult,
            wire(StatusResult(enrollment=None, attempt=ATTEMPT), last_verdict={"trusted": 1}),
            "last_verdict.host_id got nothing, expected a string",
        ),
        (
            StatusResult,
            {**wire(StatusResult(enrollment=ENROLLMENT, attempt=None)), "enrollment": {}},
            "enrollment.server got nothing, expected a string",
        ),
        (
            SnapshotResult,
            wire(SAMPLES[-1][0], pcr_value="AB" * 32),
            "pcr_value got a string of 64 characters, expected 64 lowercase hex digits",
        ),
        (SnapshotResult, wire(SAMPLES[-1][0], pcr=24), "pcr got 24, expected an integer 0..23"),
        (
            SnapshotResult,
            wire(SAMPLES[-1][0], records=[{"recnum": 0}]),
            "records[0]: a record must be an object with keys",
        ),
    ],
)
def test_each_check_is_refused(kind: type[Message], data: object, needle: str) -> None:
    assert needle in refusal(kind, data)


def test_a_newer_server_may_add_members() -> None:
    assert HostStatus.from_json({**VERDICT.to_json(), "new": 1}) == VERDICT


def test_a_verdict_relayed_by_the_agent_is_refused_as_the_agents() -> None:
    with pytest.raises(AgentRefusedError, match="^the agent's host status is malformed: trusted"):
        HostStatus.from_json(wire(VERDICT, trusted=None), source=FROM_AGENT)


def test_a_status_without_an_attempt_has_none_of_its_members() -> None:
    status = StatusResult(enrollment=ENROLLMENT, attempt=None)
    assert status.to_json() == {"enrolled": True, "enrollment": ENROLLMENT.to_json()}
    failed = LastAttempt(last_attempt="t", error="unreachable", last_verdict=None)
    assert failed.to_json() == {"last_attempt": "t", "error": "unreachable"}


def test_the_cli_can_import_it_cheaply() -> None:
    heavy = ("pydantic", "cryptography", "tpm2_pytss", "trusthook.measure", "trusthook.server")
    code = (
        "import sys, trusthook.common.messages;"
        f"print([m for m in sys.modules if m.startswith({heavy!r})])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
