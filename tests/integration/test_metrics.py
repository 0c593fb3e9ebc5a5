"""Metrics with real parts: a real Prometheus (Debian's) scrapes a real server process every
second over mutual TLS with an operator certificate issued by ``trusthook server
operator-cert issue``, while a swtpm host enrolls and attests, trusted and refused; its HTTP
API shows the counters and gauges move, every scrape parsed (strict: one bad line fails the
whole scrape), and a host's certificate is refused on /metrics. The agent's node_exporter
textfile holds the launches the hook measured and refused, passes ``promtool check metrics``,
and goes when the agent stops; ``trusthook status`` shows the agent's own health. The gauges
read the same from PostgreSQL, for every replica."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import stat
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.attesting import Forger, attest, enroll, host_client
from tests.integration.conftest import (
    BIN,
    Host,
    fresh_database,
    make_host,
    make_server,
    reserve_port,
    runc,
)
from tests.support.postgres import Postgres
from tests.unit.test_metrics import HOSTS, NOW, _insert
from trusthook._devenv.agentproc import AgentProcess
from trusthook._devenv.child import ChildProcess
from trusthook._devenv.swtpm import Swtpm
from trusthook.common.config import load_config
from trusthook.errors import ServerRefusedError
from trusthook.server.metrics import ServerMetrics
from trusthook.server.store import Store

pytestmark = pytest.mark.integration
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
DEADLINE = 90.0  # seconds for a value to show in Prometheus: scrapes are 1 s apart, the box busy


class Prometheus(ChildProcess):
    """``prometheus`` on a loopback port, scraping one trusthook server over mutual TLS every
    second, its TSDB in ``root``; stopped by its PID."""

    def __init__(self, root: Path, *, target: str, ca: Path, cert: Path, key: Path) -> None:
        super().__init__(root / "prometheus.log")
        self.root = root
        self.port = reserve_port()
        config = {  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
            "scrape_configs": [
                {
                    "job_name": "trusthook",
                    "scheme": "https",
                    "metrics_path": "/metrics",
                    "tls_config": {
                        "ca_file": str(ca),
                        "cert_file": str(cert),
                        "key_file": str(key),
                    },
                    "static_configs": [{"targets": [target]}],
                }
            ],
        }
        self.config_path = root / "prometheus.yml"
        self.config_path.write_text(json.dumps(config, indent=2))

    def start(self, timeout: float = 120.0) -> Prometheus:
        def ready() -> bool:
            try:
                return self._get("/-/ready", timeout=2)[0] == 200
            except OSError:
                return False

        argv = [
            PROMETHEUS,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.root / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        self._start(argv, ready, "prometheus", timeout)
        return self

    def _get(self, path: str, timeout: float = 10) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            answer = conn.getresponse()
            return answer.status, answer.read()
        finally:
            conn.close()

    def get(self, path: str) -> Any:
        status, body = self._get(path)
        assert status == 200, body
        return json.loads(body)

    def query(self, promql: str) -> list[dict[str, Any]]:
        answer = self.get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert answer["status"] == "success", answer
        result: list[dict[str, Any]] = answer["data"]["result"]
        return result

    def value(self, promql: str) -> float | None:
        """The value of a query with one series (None: no series)."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def wait(self, promql: str, ok: Callable[[float | None], bool], what: str) -> float | None:
        """Poll ``promql`` until ``ok`` says yes; fail after DEADLINE naming the last value."""
        deadline = time.monotonic() + DEADLINE
        while True:
            value = self.value(promql)
            if ok(value):
                return value
            if time.monotonic() > deadline:
                target = self.get("/api/v1/targets")["data"]["activeTargets"]
                pytest.fail(f"{what}: {promql} is {value} after {DEADLINE:g}s; targets {target}")
            time.sleep(0.25)

    def own_metric(self, name: str) -> float | None:
        """A counter of Prometheus's own (its /metrics), summed over its series; None if it
        has none of that name."""
        lines = self._get("/metrics")[1].decode().splitlines()
        values = [
            float(line.rpartition(" ")[2])
            for line in lines
            if line.startswith((name + " ", name + "{"))
        ]
        return sum(values) if values else None


def at_least(n: float) -> Callable[[float | None], bool]:
    return lambda value: value is not None and value >= n


def equal(n: float) -> Callable[[float | None], bool]:
    return lambda value: value == n


def metered_host(swtpm: Swtpm, root: Path) -> tuple[Host, Path]:
    """A host whose agent (not started) writes its metrics textfile; the file's path."""
    root.mkdir(parents=True, exist_ok=True)
    host = make_host(swtpm, root)
    textfile = root / "node-exporter" / "trusthook.prom"
    text = host.config_path.read_text()
    host.config_path.write_text(
        text.replace("[hook]\n", f'metrics_textfile = "{textfile}"\n[hook]\n', 1)
    )
    host.config = load_config(host.config_path)
    assert host.config.metrics_textfile == textfile
    host.agent = AgentProcess(host.config_path, host.config, root / "agent.log")
    return host, textfile


def samples(textfile: Path) -> dict[str, float]:
    out = {}
    for line in textfile.read_text().splitlines():
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            out[series] = float(value)
    return out


def wait_textfile(textfile: Path, ok: Callable[[dict[str, float]], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not (textfile.exists() and ok(samples(textfile))):
        if time.monotonic() > deadline:
            held = textfile.read_text() if textfile.exists() else "no file"
            pytest.fail(f"{what}: the textfile holds {held}")
        time.sleep(0.1)


@pytest.fixture
def metered(swtpm: Swtpm, tmp_path: Path) -> Iterator[tuple[Host, Path]]:
    host, textfile = metered_host(swtpm, tmp_path / "host")
    host.agent.start()
    yield host, textfile
    host.agent.stop()


def issue_operator_cert(server_config: Path, name: str, out: Path) -> tuple[Path, Path]:
    """``trusthook server operator-cert issue``, as docs/metrics.md has the operator do."""
    result = subprocess.run(
        [
            str(BIN / "trusthook"),
            "server",
            "operator-cert",
            "issue",
            name,
            "--config",
            str(server_config),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return out / f"{name}.crt", out / f"{name}.key"


def test_prometheus_scrapes_the_server_and_sees_attestations_move(
    metered: tuple[Host, Path], tmp_path: Path, ek_bundle: Path
) -> None:
    host, textfile = metered
    server = make_server(tmp_path / "server", ek_bundle)
    with server.process:
        cert, key = issue_operator_cert(server.config_path, "prometheus", tmp_path / "operator")
        (tmp_path / "prom").mkdir()
        prometheus = Prometheus(
            tmp_path / "prom",
            target=f"127.0.0.1:{server.process.config.port}",
            ca=server.ca_cert,
            cert=cert,
            key=key,
        )
        with prometheus:
            prometheus.wait('up{job="trusthook"}', equal(1), "the first scrape")
            trusted = 'trusthook_attestations_total{result="trusted"}'
            untrusted = 'trusthook_attestations_total{result="untrusted"}'
            assert prometheus.value(trusted) == 0  # declared: the series exists before any
            assert prometheus.value("sum(trusthook_hosts)") is None  # no host enrolled yet

            enroll(host, server)
            for _ in range(2):
                code, verdict = attest(host)
                assert code == 0, verdict
            prometheus.wait(trusted, equal(2), "two passing attestations")
            prometheus.wait('trusthook_hosts{state="trusted",group="lab"}', equal(1), "trusted")
            wait_textfile(
                textfile,
                lambda s: s.get('trusthook_agent_attestations_total{result="trusted"}') == 2,
                "the agent's two passing attestations",
            )

            # refused: a replayed nonce (the verdict says why), an unsigned request (403)
            host.agent.stop()  # the forger takes the host's TPM
            forger = Forger(host, server)
            with host_client(host, server) as client:
                body = forger.evidence(client.post("/v1/nonces"))
            with host_client(host, server) as client:
                assert client.post("/v1/attestations", body, signed=True)["trusted"] is True
            with host_client(host, server) as client:
                replay = client.post("/v1/attestations", body, signed=True)
            assert [r["check"] for r in replay["reasons"]] == ["nonce"]
            with host_client(host, server) as client, pytest.raises(ServerRefusedError):
                client.post("/v1/attestations", body)  # without its request-key signature
            with (
                host_client(host, server) as client,
                pytest.raises(ServerRefusedError, match="operator certificates, not hosts"),
            ):
                client.get("/metrics")

            prometheus.wait(trusted, equal(3), "the forger's passing attestation")
            prometheus.wait(untrusted, equal(1), "the replay")
            prometheus.wait('trusthook_attestation_reasons_total{check="nonce"}', equal(1), "why")
            prometheus.wait(
                'trusthook_requests_refused_total{route="/v1/attestations",'
                'check="request_signature"}',
                equal(1),
                "the unsigned request",
            )
            prometheus.wait(
                'trusthook_requests_refused_total{route="/metrics",check="client"}',
                equal(1),
                "the host on /metrics",
            )
            prometheus.wait(
                'trusthook_hosts{state="untrusted",group="lab"}', equal(1), "the replay's verdict"
            )
            assert prometheus.value('trusthook_hosts{state="trusted",group="lab"}') == 0
            prometheus.wait("trusthook_audit_log_entries", at_least(5), "the audit log's size")
            latency = (
                'trusthook_request_duration_seconds_{}{{route="/v1/attestations",status="{}"}}'
            )
            assert prometheus.value(latency.format("count", "2xx")) == 4
            assert prometheus.value(latency.format("count", "4xx")) == 1
            bucket = 'trusthook_request_duration_seconds_bucket{route="/v1/attestations",'
            assert prometheus.value(bucket + 'status="2xx",le="+Inf"}') == 4
            assert prometheus.value("trusthook_database_errors_total") is None  # none: no series

            # every scrape parsed: the target is up with no error, no sample was dropped
            prometheus.wait('up{job="trusthook"}', equal(1), "the last scrape")
            (target,) = prometheus.get("/api/v1/targets")["data"]["activeTargets"]
            assert target["health"] == "up" and target["lastError"] == "", target
            assert (prometheus.value('scrape_samples_scraped{job="trusthook"}') or 0) > 50
            for dropped in (
                "prometheus_target_scrapes_sample_duplicate_timestamp_total",
                "prometheus_target_scrapes_sample_out_of_order_total",
                "prometheus_target_scrapes_sample_out_of_bounds_total",
                "prometheus_target_scrapes_exceeded_sample_limit_total",
            ):
                assert prometheus.own_metric(dropped) == 0, dropped  # None: no such metric


def test_the_agent_textfile_counts_launches_and_status_shows_its_health(
    metered: tuple[Host, Path], bundle_factory: Any
) -> None:
    host, textfile = metered
    wait_textfile(
        textfile, lambda s: 'trusthook_agent_launches_total{result="measured"}' in s, "a start"
    )
    assert stat.S_IMODE(textfile.stat().st_mode) == 0o644
    bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
    result = runc("run", "--bundle", str(bundle), f"metrics-{uuid.uuid4().hex[:8]}")
    assert result.returncode == 0, result.stderr
    refused = host.hook_entry()  # a bundle's own claim of audit mode: the agent refuses it
    refused["args"] = [*refused["args"], "--audit"]
    bundle = bundle_factory(hooks={"createRuntime": [refused]})
    result = runc("run", "--bundle", str(bundle), f"metrics-{uuid.uuid4().hex[:8]}")
    assert result.returncode != 0
    wait_textfile(
        textfile,
        lambda s: (
            s.get('trusthook_agent_launches_total{result="measured"}') == 1
            and s.get('trusthook_agent_launches_total{result="refused"}') == 1
            and s.get("trusthook_agent_hook_duration_seconds_count") == 2
        ),
        "a measured and a refused launch",
    )
    held = samples(textfile)
    assert held['trusthook_agent_hook_duration_seconds_bucket{le="+Inf"}'] == 2
    assert 0 < held["trusthook_agent_hook_duration_seconds_sum"] < 60
    assert held["trusthook_agent_resident_memory_bytes"] > 1 << 20
    assert held["trusthook_agent_threads"] >= 3  # the socket's, the attester's, the writer's
    assert held["trusthook_agent_open_fds"] >= 3
    lint = subprocess.run(
        [PROMTOOL, "check", "metrics"],
        input=textfile.read_bytes(),
        capture_output=True,
        check=False,
        timeout=60,
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr

    assert host.agent.proc is not None
    pid = host.agent.proc.pid
    status = host.cli("status")
    assert status.returncode == 1, status.stderr  # not enrolled
    line = status.stdout.splitlines()[0]
    assert line.startswith(f"agent     pid {pid} since "), line
    assert " MiB resident, " in line and " open files, " in line and line.endswith(" threads")
    agent = json.loads(host.cli("status", "--json").stdout)["agent"]
    assert agent["pid"] == pid and agent["rss_bytes"] > 1 << 20 and agent["threads"] >= 3

    assert host.agent.stop(signal.SIGTERM) == 0
    assert not textfile.exists()  # a stopped agent's counts are not left behind


def test_the_shipped_scrape_config_is_one_prometheus_accepts(tmp_path: Path) -> None:
    shipped = Path(__file__).resolve().parents[2] / "oci-config" / "prometheus.yml"
    for name in ("ca.crt", "prometheus.crt", "prometheus.key"):  # promtool checks they exist
        (tmp_path / name).write_text("")
    config = tmp_path / "prometheus.yml"
    config.write_text(shipped.read_text().replace("/etc/prometheus/trusthook", str(tmp_path)))
    check = subprocess.run(
        [PROMTOOL, "check", "config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert "trusthook-server" in shipped.read_text()


def test_the_gauges_read_the_same_from_postgresql_for_every_replica(postgres: Postgres) -> None:
    url = fresh_database(postgres)
    replicas = [Store(url), Store(url)]
    try:
        replicas[0].create_schema()
        for record, admission, _ in HOSTS:
            _insert(replicas[0], record, admission)
        gauges = []
        for store in replicas:
            counts, size = store.metrics_snapshot(NOW)
            assert size == 0 and sum(c.hosts for c in counts) == len(HOSTS)
            text = ServerMetrics(store).exposition(NOW).decode()
            gauges.append(
                [line for line in text.splitlines() if line.startswith("trusthook_hosts")]
            )
        assert gauges[0] == gauges[1]
        assert 'trusthook_hosts{state="stale",group="lab"} 2' in gauges[0]
        assert 'trusthook_hosts{state="untrusted",group="lab"} 3' in gauges[0]
        assert 'trusthook_hosts{state="trusted",group="lab"} 1' in gauges[0]
    finally:
        for store in replicas:
            store.dispose()
