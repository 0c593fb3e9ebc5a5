"""Metrics without Prometheus: the exposition format (escaping, cumulative buckets, label
sets, refusals), the server's wiring (trust states as ``status_of`` says them, /metrics for
operators only, what each answer counts) over a SQLite store and the ASGI app called
directly, and the agent's (its counters, psutil health, the textfile, ``trusthook status``)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from trusthook.agent.attester import Attester
from trusthook.agent.metrics import AgentMetrics, Textfile, check_label, failure_check
from trusthook.agent.service import AgentService
from trusthook.attest.appraise import HostState
from trusthook.attest.verdict import Reason
from trusthook.common.config import Config, parse_config
from trusthook.common.messages import AgentHealth, HostStatus, ReasonBody, StatusResult
from trusthook.common.metrics import (
    CONTENT_TYPE,
    Registry,
    escape_help,
    escape_label_value,
    format_value,
)
from trusthook.common.protocol import OP_STATUS, PROTOCOL_VERSION
from trusthook.errors import (
    AgentRefusedError,
    AttestationError,
    ConfigError,
    RequestError,
    ServerRefusedError,
    ServerUnavailableError,
    TPMError,
)
from trusthook.server import api
from trusthook.server.admission import Admission, AdmissionState
from trusthook.server.app import create_app
from trusthook.server.ca import CertificateAuthority, pem
from trusthook.server.config import ServerConfig
from trusthook.server.metrics import HostCount, ServerMetrics, host_gauges, host_state
from trusthook.server.records import HostRecord, OperatorCert
from trusthook.server.schema import admission_values, admissions, host_values, hosts
from trusthook.server.service import OPERATOR_PREFIX, ServerService
from trusthook.server.status import NOT_ATTESTED, status_of
from trusthook.server.store import Store

NOW = 1_750_000_000.0

# the exposition format


def test_counters_and_gauges_are_written_with_help_type_and_sorted_series() -> None:
    registry = Registry()
    requests = registry.counter("app_requests_total", "Requests.", ("route", "code"))
    requests.inc(route="/b", code="200")
    requests.inc(2, route="/a", code="500")
    requests.declare(route="/a", code="200")
    plain = registry.counter("app_starts_total", "Starts.")
    temperature = registry.gauge("app_temperature_celsius", "Heat.")
    temperature.set(-1.5)
    assert plain.value() == 0 and requests.value(route="/a", code="500") == 2
    assert registry.text() == (
        "# HELP app_requests_total Requests.\n"
        "# TYPE app_requests_total counter\n"
        'app_requests_total{route="/a",code="200"} 0\n'
        'app_requests_total{route="/a",code="500"} 2\n'
        'app_requests_total{route="/b",code="200"} 1\n'
        "# HELP app_starts_total Starts.\n"
        "# TYPE app_starts_total counter\n"
        "app_starts_total 0\n"
        "# HELP app_temperature_celsius Heat.\n"
        "# TYPE app_temperature_celsius gauge\n"
        "app_temperature_celsius -1.5\n"
    )


def test_label_values_and_help_are_escaped() -> None:
    registry = Registry()
    counter = registry.counter("odd_total", 'A "quoted" \\ help\nover two lines.', ("check",))
    counter.inc(check='back\\slash "quote"\nnewline')
    lines = registry.text().splitlines()
    assert lines[0] == '# HELP odd_total A "quoted" \\\\ help\\nover two lines.'
    assert lines[2] == 'odd_total{check="back\\\\slash \\"quote\\"\\nnewline"} 1'
    assert escape_help("a\\b\nc") == "a\\\\b\\nc"


def _unescape(text: str) -> str:
    """A label value as Prometheus's parser reads the escaped text back."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            out.append({"\\": "\\", '"': '"', "n": "\n"}[text[i + 1]])
            i += 2
        else:
            assert text[i] not in '"\n'
            out.append(text[i])
            i += 1
    return "".join(out)


@given(st.text())
def test_any_label_value_survives_escaping(value: str) -> None:
    escaped = escape_label_value(value)
    assert "\n" not in escaped
    assert _unescape(escaped) == value


def test_a_lone_surrogate_in_a_label_value_is_still_utf8() -> None:
    registry = Registry()
    registry.counter("s_total", "S.", ("check",)).inc(check="a\ud800b")
    assert 's_total{check="a?b"} 1' in registry.body().decode("utf-8")


def test_histogram_buckets_are_cumulative_with_inf_sum_and_count() -> None:
    registry = Registry()
    latency = registry.histogram("op_seconds", "Latency.", ("route",), buckets=(0.1, 1, 10))
    for value in (0.05, 0.1, 0.5, 1.0, 3.0, 100.0):  # a bound itself falls in its bucket (le)
        latency.observe(value, route="/x")
    latency.observe(0.2, route="/a")
    assert latency.count(route="/x") == 6
    assert registry.text() == (
        "# HELP op_seconds Latency.\n"
        "# TYPE op_seconds histogram\n"
        'op_seconds_bucket{route="/a",le="0.1"} 0\n'
        'op_seconds_bucket{route="/a",le="1"} 1\n'
        'op_seconds_bucket{route="/a",le="10"} 1\n'
        'op_seconds_bucket{route="/a",le="+Inf"} 1\n'
        'op_seconds_sum{route="/a"} 0.2\n'
        'op_seconds_count{route="/a"} 1\n'
        'op_seconds_bucket{route="/x",le="0.1"} 2\n'
        'op_seconds_bucket{route="/x",le="1"} 4\n'
        'op_seconds_bucket{route="/x",le="10"} 5\n'
        'op_seconds_bucket{route="/x",le="+Inf"} 6\n'
        'op_seconds_sum{route="/x"} 104.65\n'
        'op_seconds_count{route="/x"} 6\n'
    )


def test_a_histogram_without_labels_starts_empty_and_takes_an_explicit_inf() -> None:
    registry = Registry()
    registry.histogram("h_seconds", "H.", buckets=(0.5, float("inf")))
    assert registry.text().splitlines()[2:] == [
        'h_seconds_bucket{le="0.5"} 0',
        'h_seconds_bucket{le="+Inf"} 0',
        "h_seconds_sum 0",
        "h_seconds_count 0",
    ]


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (3, "3"),
        (3.0, "3"),
        (0.25, "0.25"),
        (1e-05, "1e-05"),
        (2.0**60, "1.152921504606847e+18"),
        (float("inf"), "+Inf"),
        (float("-inf"), "-Inf"),
        (float("nan"), "NaN"),
    ],
)
def test_values_are_written_as_go_does(value: float, text: str) -> None:
    assert format_value(value) == text


def test_wrong_names_labels_and_values_are_refused() -> None:
    registry = Registry()
    for name in ("", "1x", "a-b", "a b"):
        with pytest.raises(ValueError, match="metric name"):
            registry.counter(name, "x")
    for labels in (("__x",), ("a-b",), ("a", "a")):
        with pytest.raises(ValueError, match="label names? "):
            registry.counter("x_total", "x", labels)
    with pytest.raises(ValueError, match="reserved"):
        registry.histogram("h", "x", ("le",))
    for buckets in ((1.0, 0.5), (), (float("nan"),), (1.0, 1.0)):
        with pytest.raises(ValueError, match="buckets"):
            registry.histogram("h", "x", (), buckets)
    counter = registry.counter("c_total", "c", ("result",))
    with pytest.raises(ValueError, match="already registered"):
        registry.gauge("c_total", "again")
    registry.histogram("lat", "lat")
    with pytest.raises(ValueError, match="lat_count is already registered"):
        registry.counter("lat_count", "x")
    with pytest.raises(ValueError, match="expected \\['result'\\]"):
        counter.inc(check="x")
    with pytest.raises(ValueError, match="expected \\['result'\\]"):
        counter.inc()
    with pytest.raises(ValueError, match="not a string"):
        counter.inc(result=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="amount >= 0"):
        counter.inc(-1, result="x")
    with pytest.raises(ValueError, match="below its value"):
        counter.inc(5, result="x")
        counter.set_total(4, result="x")


def test_counts_from_many_threads_all_land_and_each_calls_on_change() -> None:
    calls = []
    registry = Registry(on_change=lambda: calls.append(1))
    counter = registry.counter("n_total", "n", ("t",))
    latency = registry.histogram("d_seconds", "d")

    def work(t: str) -> None:
        for _ in range(1000):
            counter.inc(t=t)
            latency.observe(0.01)

    threads = [threading.Thread(target=work, args=(str(i % 2),)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert counter.value(t="0") == counter.value(t="1") == 4000
    assert latency.count() == 8000
    assert len(calls) == 16000


def test_gauge_replace_drops_the_series_it_does_not_name() -> None:
    registry = Registry()
    gauge = registry.gauge("g", "g", ("state",))
    gauge.replace([({"state": "a"}, 1), ({"state": "b"}, 2)])
    gauge.replace([({"state": "b"}, 3)])
    assert registry.text().splitlines()[2:] == ['g{state="b"} 3']


# the server: trust states


def _admission(host_id: str, state: AdmissionState, group: str | None = "lab") -> Admission:
    return Admission(
        ek_sha256=host_id,
        state=state,
        group=group,
        attributes={},
        ek_cert_serial=None,
        ek_cert_issuer=None,
        hostname=None,
        note=None,
        requested_at=None,
        decided_by="test",
        decided_at=NOW - 1000,
        reason="",
        reenroll_grant=False,
        version=1,
    )


def _host(host_id: str, **changes: Any) -> HostRecord:
    record = HostRecord(
        host_id=host_id,
        hostname=f"h-{host_id[:4]}",
        ek_public=b"ek",
        ak_public=b"ak",
        request_key=b"rk",
        cert_serial="abc",
        enrolled_at=NOW - 900,
        state=HostState(),
        trusted=False,
        reasons=(NOT_ATTESTED,),
        since=NOW - 900,
        valid_until=None,
        last_attestation=None,
        held=None,
        admission=None,
        version=0,
    )
    return replace(record, **changes)


GOLDEN = Reason(check="golden_pcr", message="PCR 0 differs")
# every kind of host the server can hold, with the state status_of puts it in
HOSTS: list[tuple[HostRecord, AdmissionState | None, str]] = [
    (_host("a" * 64), AdmissionState.ADMITTED, "stale"),  # enrolled, never attested
    (
        _host("b" * 64, trusted=True, reasons=(), last_attestation=NOW - 10, valid_until=NOW + 60),
        AdmissionState.ADMITTED,
        "trusted",
    ),
    (
        _host("c" * 64, trusted=True, reasons=(), last_attestation=NOW - 99, valid_until=NOW - 1),
        AdmissionState.ADMITTED,
        "stale",
    ),
    (
        _host("d" * 64, reasons=(GOLDEN,), last_attestation=NOW - 10, valid_until=None),
        AdmissionState.ADMITTED,
        "untrusted",
    ),
    (
        _host("e" * 64, trusted=True, reasons=(), last_attestation=NOW - 10, valid_until=NOW + 60),
        AdmissionState.REVOKED,
        "untrusted",
    ),
    (_host("f" * 64), AdmissionState.PENDING, "untrusted"),
    (_host("0" * 64, trusted=True, reasons=(), last_attestation=NOW - 5), None, "untrusted"),
]


def _status_state(record: HostRecord) -> str:
    """The state a host's trust status (as operators read it) puts it in."""
    status = status_of(record, NOW, operator=True)
    if status.trusted:
        return "trusted"
    if record.admitted and (record.last_attestation is None or status.reasons[0].check == "stale"):
        return "stale"
    return "untrusted"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(f"sqlite:///{tmp_path / 'db'}")
    s.create_schema()
    yield s
    s.dispose()


def _insert(store: Store, record: HostRecord, admission: AdmissionState | None) -> None:
    engine = sqlalchemy.create_engine(store._url)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.insert(hosts).values(**host_values(record)))
        if admission is not None:
            values = admission_values(_admission(record.host_id, admission))
            conn.execute(sqlalchemy.insert(admissions).values(**values))
    engine.dispose()


def test_the_stored_hosts_are_counted_in_the_state_their_status_says(store: Store) -> None:
    for record, admission, expected in HOSTS:
        _insert(store, record, admission)
        assert _status_state(store.get_host(record.host_id) or record) == expected
    counts, size = store.metrics_snapshot(NOW)
    assert size == 0
    assert sum(c.hosts for c in counts) == len(HOSTS)
    assert host_gauges(counts) == {
        ("trusted", "lab"): 1,
        ("stale", "lab"): 2,
        ("untrusted", "lab"): 3,
        ("trusted", ""): 0,  # the host without an admission record has no group
        ("stale", ""): 0,
        ("untrusted", ""): 1,
    }


@pytest.mark.parametrize(
    ("admitted", "trusted", "expired", "attested", "state"),
    [
        (False, True, False, True, "untrusted"),
        (True, False, False, False, "stale"),
        (True, True, True, True, "stale"),
        (True, False, True, True, "untrusted"),
        (True, True, False, True, "trusted"),
    ],
)
def test_host_state(
    admitted: bool, trusted: bool, expired: bool, attested: bool, state: str
) -> None:
    count = HostCount(
        group="g", admitted=admitted, trusted=trusted, expired=expired, attested=attested, hosts=1
    )
    assert host_state(count) == state


def _status(trusted: bool, *checks: str) -> api.HostStatus:
    return api.HostStatus(
        host_id="a" * 64,
        hostname="h",
        group="lab",
        trusted=trusted,
        reasons=[api.ReasonBody(check=c, message="m") for c in checks],
        since="2025-01-01T00:00:00Z",
        valid_until=None,
        last_attestation=None,
        enrolled_at="2025-01-01T00:00:00Z",
        verified_recnum=-1,
    )


def _samples(text: str) -> dict[str, float]:
    """Every sample line of an exposition: 'name{labels}' -> value."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def test_attestations_and_releases_are_counted_by_result_and_check() -> None:
    metrics = ServerMetrics()
    metrics.attested(_status(True))
    metrics.attested(_status(False, "golden_pcr", "nonce"))
    metrics.attested(_status(False, "nonce"))
    with metrics.releasing():
        pass
    with pytest.raises(AttestationError), metrics.releasing():
        raise AttestationError("untrusted", "the host is not trusted")
    with pytest.raises(RequestError), metrics.releasing():  # malformed: no decision
        raise RequestError("manifest: not base64")
    samples = _samples(metrics.exposition(NOW).decode())
    assert samples['trusthook_attestations_total{result="trusted"}'] == 1
    assert samples['trusthook_attestations_total{result="untrusted"}'] == 2
    assert samples['trusthook_attestation_reasons_total{check="nonce"}'] == 2
    assert samples['trusthook_attestation_reasons_total{check="golden_pcr"}'] == 1
    assert samples['trusthook_releases_total{result="released",check=""}'] == 1
    assert samples['trusthook_releases_total{result="refused",check="untrusted"}'] == 1
    assert len([s for s in samples if s.startswith("trusthook_releases_total")]) == 2
    assert not any(s.startswith("trusthook_hosts") for s in samples)  # no store: no gauges


# the server: /metrics through the ASGI app


@dataclass
class Server:
    app: Any
    metrics: ServerMetrics
    store: Store
    ca: CertificateAuthority
    operator_pem: str
    host_pem: str


def _client_pem(ca: CertificateAuthority, name: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([]))
        .sign(key, hashes.SHA256())
    )
    certificate = ca.issue_client_certificate(
        csr.public_bytes(serialization.Encoding.PEM),
        name,
        datetime.now(UTC),
        timedelta(days=1),
    )
    return pem(certificate).decode(), format(certificate.serial_number, "x")


@pytest.fixture
def server(store: Store) -> Server:
    ca = CertificateAuthority.create("test", datetime.now(UTC))
    operator_pem, serial = _client_pem(ca, OPERATOR_PREFIX + "prometheus")
    store.add_operator_cert(
        OperatorCert(
            serial=serial, name="prometheus", issued_at=NOW, expires_at=NOW * 2, issued_by="t"
        )
    )
    host_id = "a" * 64
    host_pem, host_serial = _client_pem(ca, host_id)
    _insert(store, _host(host_id, cert_serial=host_serial), AdmissionState.ADMITTED)
    service = ServerService(config=ServerConfig(groups={}), store=store, ca=ca, ek_roots=())
    metrics = ServerMetrics(store)
    app = create_app(service, max_body=1024, metrics=metrics)
    return Server(app, metrics, store, ca, operator_pem, host_pem)


def _get(app: Any, path: str, certificate: str | None = None) -> tuple[int, str, bytes]:
    """GET ``path`` from the ASGI app as uvicorn with PeerCertProtocol would hand it over."""
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "https",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"localhost")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8443),
        "extensions": {"tls": {"client_cert_chain": [certificate] if certificate else []}},
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], headers.get("content-type", ""), body


def test_metrics_are_for_operator_certificates_only(server: Server) -> None:
    status, content_type, body = _get(server.app, "/metrics", server.operator_pem)
    assert status == 200, body
    assert content_type == CONTENT_TYPE
    for certificate, check in ((server.host_pem, "client"), (None, "client")):
        status, _, body = _get(server.app, "/metrics", certificate)
        assert status == 403
        assert json.loads(body)["error"]["check"] == check
    # an operator name the server never issued (TLS would refuse another CA's before this)
    unrecorded, _ = _client_pem(server.ca, OPERATOR_PREFIX + "prometheus")
    assert _get(server.app, "/metrics", unrecorded)[0] == 403
    samples = _samples(_get(server.app, "/metrics", server.operator_pem)[2].decode())
    assert samples['trusthook_requests_refused_total{route="/metrics",check="client"}'] == 3


def test_scrape_reads_the_gauges_and_every_request_is_timed(server: Server) -> None:
    assert _get(server.app, "/v1/health")[0] == 200
    assert _get(server.app, "/no/such/path")[0] == 404
    assert _get(server.app, "/v1/hosts/" + "9" * 64, server.operator_pem)[0] == 404
    text = _get(server.app, "/metrics", server.operator_pem)[2].decode()
    samples = _samples(text)
    assert samples['trusthook_hosts{state="stale",group="lab"}'] == 1  # enrolled, not attested
    assert samples['trusthook_hosts{state="trusted",group="lab"}'] == 0
    assert samples["trusthook_audit_log_entries"] == 1  # the operator certificate's issuing
    count = "trusthook_request_duration_seconds_count"
    assert samples[f'{count}{{route="/v1/health",status="2xx"}}'] == 1
    assert samples[f'{count}{{route="other",status="4xx"}}'] == 1  # never the path sent
    assert samples[f'{count}{{route="/v1/hosts/{{host_id}}",status="4xx"}}'] == 1
    assert "/no/such/path" not in text and "9" * 64 not in text
    buckets = [
        v for k, v in samples.items() if k.startswith("trusthook_request_duration_seconds_bucket")
    ]
    assert buckets and all(v >= 0 for v in buckets)


def test_a_failed_database_is_counted_and_answered_503(server: Server, tmp_path: Path) -> None:
    server.store.dispose()
    for leftover in tmp_path.glob("db*"):
        leftover.unlink()
    (tmp_path / "db").mkdir()  # no database can be opened there now
    status, _, body = _get(server.app, "/metrics", server.operator_pem)
    assert status == 503, body
    assert json.loads(body)["error"]["check"] == "storage"
    samples = _samples(server.metrics.registry.text())
    assert samples['trusthook_database_errors_total{route="/metrics"}'] == 1
    assert samples['trusthook_request_duration_seconds_count{route="/metrics",status="5xx"}'] == 1
    assert not any(s.startswith("trusthook_requests_refused_total") for s in samples)


# the agent


def _verdict(trusted: bool, *checks: str) -> HostStatus:
    return HostStatus(
        host_id="a" * 64,
        hostname="h",
        group="lab",
        trusted=trusted,
        reasons=tuple(ReasonBody(check=c, message="m", expected=None, got=None) for c in checks),
        since="2025-01-01T00:00:00Z",
        valid_until=None,
        last_attestation=None,
        enrolled_at="2025-01-01T00:00:00Z",
        verified_recnum=-1,
    )


def test_agent_counts_launches_attestations_failures_tpm_errors_and_releases() -> None:
    metrics = AgentMetrics()
    assert "trusthook_agent_trusted" not in _samples(metrics.registry.text())  # absent, not 0
    for result in ("measured", "measured", "refused"):
        metrics.launch(result)
    metrics.hook_answered(0.003)
    metrics.attested(_verdict(True), log_rewritten=False)
    metrics.attested(_verdict(False, "golden_pcr", "Bad Check\n"), log_rewritten=None)
    metrics.attest_failed(ServerUnavailableError("cannot reach"))
    metrics.tpm_error("hook")
    metrics.tpm_error(["not", "an", "op"])
    metrics.release("released")
    samples = _samples(metrics.registry.text())
    assert samples['trusthook_agent_launches_total{result="measured"}'] == 2
    assert samples['trusthook_agent_launches_total{result="unmeasured"}'] == 0
    assert samples['trusthook_agent_launches_total{result="refused"}'] == 1
    assert samples['trusthook_agent_hook_duration_seconds_bucket{le="0.005"}'] == 1
    assert samples["trusthook_agent_hook_duration_seconds_count"] == 1
    assert samples['trusthook_agent_attestations_total{result="trusted"}'] == 1
    assert samples['trusthook_agent_attestations_total{result="untrusted"}'] == 1
    assert samples['trusthook_agent_attestations_total{result="failed"}'] == 1
    assert samples['trusthook_agent_attestation_failures_total{check="golden_pcr"}'] == 1
    assert samples['trusthook_agent_attestation_failures_total{check="other"}'] == 1
    assert samples['trusthook_agent_attestation_failures_total{check="server_unavailable"}'] == 1
    assert samples["trusthook_agent_trusted"] == 0  # the last verdict
    assert samples["trusthook_agent_server_log_rewritten"] == 0  # the last check
    assert samples['trusthook_agent_tpm_errors_total{op="hook"}'] == 1
    assert samples['trusthook_agent_tpm_errors_total{op="other"}'] == 1
    assert samples['trusthook_agent_release_requests_total{result="released"}'] == 1
    assert metrics.changed.is_set()


def test_failure_checks_and_check_labels() -> None:
    assert failure_check(ServerUnavailableError("x")) == "server_unavailable"
    assert failure_check(ServerRefusedError("x")) == "server_refused"
    assert failure_check(TPMError("x")) == "tpm"
    assert failure_check(ConfigError("x")) == "agent"
    assert check_label("request_signature") == "request_signature"
    for odd in ("", "Golden", "a" * 65, 'x"y', "x\ny"):
        assert check_label(odd) == "other"


def test_agent_health_comes_from_psutil_into_gauges_and_the_status() -> None:
    metrics = AgentMetrics()
    health = metrics.health()
    assert health is not None
    assert health.pid == os.getpid()
    assert health.rss_bytes > 1 << 20 and health.threads >= 1 and health.open_fds >= 3
    assert datetime.fromisoformat(health.started_at) < datetime.now(UTC)
    samples = _samples(metrics.registry.text())
    assert samples["trusthook_agent_resident_memory_bytes"] > 1 << 20
    assert samples["trusthook_agent_threads"] >= 1
    assert samples["trusthook_agent_cpu_seconds_total"] > 0
    assert abs(samples["trusthook_agent_start_time_seconds"] - time.time()) < 86400 * 365
    status = StatusResult(enrollment=None, attempt=None, agent=health)
    assert StatusResult.from_json(status.to_json()) == status
    assert StatusResult.from_json(replace(status, agent=None).to_json()).agent is None


def test_a_malformed_agent_health_is_refused() -> None:
    good = AgentHealth(
        pid=1, started_at="2025-01-01T00:00:00Z", rss_bytes=1, cpu_ms=1, open_fds=1, threads=1
    ).to_json()
    for bad, member in (
        ({**good, "rss_bytes": -1}, "agent.rss_bytes"),
        ({**good, "cpu_ms": 1.5}, "agent.cpu_ms"),
        ({**good, "extra": 1}, "extra"),
    ):
        raw = {"enrolled": False, "enrollment": None, "agent": bad}
        with pytest.raises(AgentRefusedError, match=member):
            StatusResult.from_json(raw)


class _Attester:
    """The attester as the service sees it: a status, or a TPM that fails."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error

    def status(self) -> StatusResult:
        if self.error is not None:
            raise self.error
        return StatusResult(enrollment=None, attempt=None)


def _service(metrics: AgentMetrics, attester: object) -> AgentService:
    stub: Any = attester
    return AgentService(
        log=stub, attester=stub, launch=stub, boot_id="b", measure_rootfs=stub, metrics=metrics
    )


def test_the_agent_status_carries_its_health_and_tpm_errors_are_counted_by_op() -> None:
    metrics = AgentMetrics()
    request = {"version": PROTOCOL_VERSION, "op": OP_STATUS}
    answer = StatusResult.from_json(_service(metrics, _Attester()).handle(request, b""))
    assert answer.agent is not None and answer.agent.pid == os.getpid()
    failing = _service(metrics, _Attester(TPMError("TPM refused to read PCRs")))
    with pytest.raises(TPMError):
        failing.handle(request, b"")
    with pytest.raises(RequestError):  # refused before any TPM: not a TPM error
        failing.handle({"version": PROTOCOL_VERSION, "op": "nope"}, b"")
    samples = _samples(metrics.registry.text())
    assert samples['trusthook_agent_tpm_errors_total{op="status"}'] == 1
    assert len([k for k in samples if k.startswith("trusthook_agent_tpm_errors_total")]) == 1


def test_a_release_without_an_enrollment_is_counted_failed(tmp_path: Path) -> None:
    metrics = AgentMetrics()
    stub: Any = object()
    attester = Attester(log=stub, state_dir=tmp_path, boot_id="b", interval=60, metrics=metrics)
    event: Any = None
    with pytest.raises(ConfigError, match="enrolled host"):
        attester.release(b"{}", "sha256:" + "ab" * 32, event)
    with pytest.raises(ConfigError, match="not enrolled"):  # no attempt: nothing counted
        attester.attest()
    samples = _samples(metrics.registry.text())
    assert samples['trusthook_agent_release_requests_total{result="failed"}'] == 1
    assert samples['trusthook_agent_release_requests_total{result="released"}'] == 0
    assert samples['trusthook_agent_attestations_total{result="failed"}'] == 0


class CountingTextfile(Textfile):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.writes = 0

    def write(self) -> None:
        self.writes += 1
        super().write()


def _wait_for(condition: Any, what: str, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


def test_the_textfile_is_written_atomically_rate_limited_and_removed(tmp_path: Path) -> None:
    path = tmp_path / "node-exporter" / "trusthook.prom"  # its directory is made
    metrics = AgentMetrics()
    textfile = CountingTextfile(path, metrics, min_interval=0.5, refresh=30)
    stop = threading.Event()
    thread = threading.Thread(target=textfile.run, args=(stop,))
    thread.start()
    try:
        _wait_for(path.exists, "the first write")
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
        assert 'trusthook_agent_launches_total{result="measured"} 0' in path.read_text()
        started = time.monotonic()
        for _ in range(200):  # a burst of changes: written once a half second at most
            metrics.launch("measured")
            time.sleep(0.005)

        def counted() -> bool:
            return 'launches_total{result="measured"} 200' in path.read_text()

        _wait_for(counted, "the burst's last count")
        elapsed = time.monotonic() - started
        assert textfile.writes <= 2 + elapsed / 0.5, (textfile.writes, elapsed)
        assert [p.name for p in path.parent.iterdir()] == ["trusthook.prom"]  # no temp left
    finally:
        stop.set()
        metrics.changed.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert not path.exists()


def test_the_textfile_is_refreshed_without_changes(tmp_path: Path) -> None:
    path = tmp_path / "trusthook.prom"
    metrics = AgentMetrics()
    textfile = CountingTextfile(path, metrics, min_interval=0.05, refresh=0.1)
    stop = threading.Event()
    thread = threading.Thread(target=textfile.run, args=(stop,))
    thread.start()
    try:
        _wait_for(lambda: textfile.writes >= 3, "three writes without a change")
    finally:
        stop.set()
        metrics.changed.set()
        thread.join(timeout=10)


def test_a_failing_textfile_is_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    textfile = Textfile(blocker / "trusthook.prom", AgentMetrics())
    for _ in range(3):
        textfile.write()
    assert len([r for r in caplog.records if "cannot write" in r.getMessage()]) == 1


def test_the_textfile_setting() -> None:
    assert Config().metrics_textfile is None
    config = parse_config({"agent": {"metrics_textfile": "/var/lib/node/trusthook.prom"}})
    assert config.metrics_textfile == Path("/var/lib/node/trusthook.prom")
    assert parse_config({"agent": {"metrics_textfile": ""}}).metrics_textfile is None
    for bad in ("relative.prom", "/var/lib/node/trusthook.txt", "/a\0.prom"):
        with pytest.raises(ConfigError, match="metrics_textfile"):
            parse_config({"agent": {"metrics_textfile": bad}})


# trusthook status


HEALTH = AgentHealth(
    pid=4242,
    started_at="2025-06-01T10:00:00Z",
    rss_bytes=48 << 20,
    cpu_ms=1234,
    open_fds=17,
    threads=6,
)
PROBE = """
import json, sys
from trusthook.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


@pytest.fixture
def agent_socket(tmp_path: Path) -> Iterator[Path]:
    """A stand-in agent answering ``status`` (not enrolled) with its health."""
    path = tmp_path / "agent.sock"
    answer = StatusResult(enrollment=None, attempt=None, agent=HEALTH).to_json()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                while conn.recv(65536):
                    pass
                conn.sendall(b"ok\n" + json.dumps(answer).encode())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield path
    listener.close()
    thread.join(timeout=5)


def test_status_shows_the_agent_health_without_importing_psutil(agent_socket: Path) -> None:
    config = agent_socket.with_name("trusthook.toml")
    config.write_text(f'[agent]\nsocket = "{agent_socket}"\n')
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "--trusthook-config", str(config), "status"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report["code"] == 1  # not enrolled
    assert result.stdout.splitlines()[0] == (
        "agent     pid 4242 since 2025-06-01T10:00:00Z: 48.0 MiB resident, 1.23 s CPU,"
        " 17 open files, 6 threads"
    )
    loaded = [m for m in report["modules"] if m.split(".")[0] == "psutil" or "metrics" in m]
    assert loaded == []
