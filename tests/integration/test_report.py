"""Compliance reports from a real server's audit log (docs/reports.md): a host on swtpm enrolls
(admitted with attributes: its location), runs two containers under runc with the hook (one
whose image name is hostile markup) and attests; then a policy manifest is applied with the
real `trusthook server policy apply` (under `audit`), the operator tags the host (a new
location), and two annotated workloads run — one compliant (it creates its identity), one
outside its placement (a non-compliant launch); the host attests again (still trusted) and
sends evidence without its request-key signature (a violation). ``trusthook report --config``
exports, verifies and writes the bundle and the JSON report; the auditor's ``trusthook report
--bundle`` recomputes the same bytes from that bundle and makes the HTML, which a real browser
(Debian's chromium, headless, in a network namespace of its own, so it cannot reach any
network) renders: the screenshot is not blank, and the DOM holds the JSON report's figures, no
external resource and the hostile name as text. The same report is served to operator
certificates over mutual TLS; a host's gets 403.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shlex
import shutil
import signal
import struct
import subprocess
import time
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.integration.attesting import NEW_EK_PENDING, Forger, host_client, wait_past
from tests.integration.conftest import BIN, AttestServer, Host, make_server, runc
from tests.unit.test_report import Page, page_of
from trusthook.agent.serverclient import ServerClient
from trusthook.common.clock import iso
from trusthook.errors import ServerRefusedError
from trusthook.server.admin import Decision, HostAdmin
from trusthook.server.auditlog import load_signer
from trusthook.server.config import load_server_config
from trusthook.server.run import Paths
from trusthook.server.store import Store

pytestmark = pytest.mark.integration

WEB = "registry.example/web:1.0"
HOSTILE = '<img src=x onerror=alert(1)><script>alert("report")</script>'
ATTRIBUTES = {"country": "DE", "region": "eu-1"}
TAGGED = {**ATTRIBUTES, "zone": "a"}
TRUSTED_RGB = bytes((0x2E, 0x7D, 0x32))  # report_svg.STATE_COLOURS[trusted]
CHROMIUM_TIMEOUT = 240.0  # a loaded two-core machine


@pytest.fixture
def server(tmp_path: Path, ek_bundle: Path) -> Iterator[AttestServer]:
    """One SQLite server: the report reads what the store exports, which test_audit_log
    checks on both backends."""
    s = make_server(tmp_path / "server", ek_bundle)
    s.process.start()
    yield s
    s.process.stop()


def enroll_at(host: Host, server: AttestServer, attributes: dict[str, str]) -> str:
    """Enroll ``host``; the operator approves its EK into group lab with ``attributes``."""
    argv = ("enroll", "--server", server.url, "--server-ca", str(server.ca_cert))
    result = host.cli(*argv)
    queued = NEW_EK_PENDING.search(result.stderr)
    assert result.returncode == 1 and queued, result.stderr
    config = load_server_config(server.config_path)
    store = Store(config.database_url)
    try:
        decided = Decision(by="the tests' operator", reason="rack 4", now=time.time())
        HostAdmin(config, store).approve(
            queued.group(1), group="lab", attributes=attributes, decision=decided
        )
    finally:
        store.dispose()
    result = host.cli(*argv)
    assert result.returncode == 0, result.stderr
    return queued.group(1)


def launch(host: Host, bundle_factory: Any, image: str, identity: str | None = None) -> None:
    bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
    config = json.loads((bundle / "config.json").read_text())
    config["annotations"] = {"io.containerd.image.name": image}
    if identity is not None:
        config["annotations"]["org.trusthook.workload"] = identity
    (bundle / "config.json").write_text(json.dumps(config))
    result = runc("run", "--bundle", str(bundle), f"report-{bundle.name}")
    assert result.returncode == 0, result.stderr


def cli(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "trusthook"), *argv],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=cwd,
    )


def policy(path: Path, rootfs: str) -> Path:
    """Two workloads of ``rootfs``, judged under ``audit`` (the host stays trusted): shop/web
    in country DE, shop/eu only in zone b (which the host is not in)."""
    path.write_text(
        'format = 1\n[defaults]\nunknown_launch = "audit"\nviolation = "audit"\n'
        f'[[workload]]\nname = "shop/web"\nmatch = ["shop/web-*"]\nrootfs = ["{rootfs}"]\n'
        'placement = ["country = DE"]\n'
        f'[[workload]]\nname = "shop/eu"\nmatch = ["shop/eu-*"]\nrootfs = ["{rootfs}"]\n'
        'placement = ["zone = b"]\n'
    )
    return path


def chromium(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[bytes]:
    """Headless chromium in a new network namespace (no interface but a down loopback: it
    cannot reach any network, whatever it tries), with a fresh profile, no proxy and its
    background services off. Started in a process group of its own; only that group is
    stopped if it outlives its run."""
    profile = tmp_path / "chromium-profile"
    command = [
        "unshare",
        "--net",
        "chromium",
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-proxy-server",
        f"--user-data-dir={profile}",
        "--no-first-run",
        "--disable-extensions",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--no-pings",
        "--hide-scrollbars",
        *argv,
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )
    try:
        out, err = process.communicate(timeout=CHROMIUM_TIMEOUT)
    finally:
        with contextlib.suppress(ProcessLookupError):  # its group: what chromium left behind
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    return subprocess.CompletedProcess(command, process.returncode, out, err)


def png_pixels(raw: bytes) -> tuple[int, int, Counter[bytes]]:
    """Width, height and a count of every RGB colour of an 8-bit RGB or RGBA PNG without
    interlacing (what chromium writes), decoded with zlib and struct."""
    assert raw[:8] == b"\x89PNG\r\n\x1a\n", raw[:8]
    pos, chunks, header = 8, [], None
    while pos < len(raw):
        (length,) = struct.unpack(">I", raw[pos : pos + 4])
        kind, data = raw[pos + 4 : pos + 8], raw[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", data)
        elif kind == b"IDAT":
            chunks.append(data)
        elif kind == b"IEND":
            break
    assert header is not None
    width, height, depth, colour, _, _, interlace = header
    assert (depth, interlace) == (8, 0) and colour in (2, 6), header
    bpp = 3 if colour == 2 else 4
    stride = width * bpp
    data = zlib.decompress(b"".join(chunks))
    assert len(data) == height * (stride + 1)
    previous = bytearray(stride)
    colours: Counter[bytes] = Counter()
    for y in range(height):
        start = y * (stride + 1)
        kind, line = data[start], bytearray(data[start + 1 : start + 1 + stride])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b = previous[i]
            c = previous[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 0xFF
            elif kind == 2:
                line[i] = (line[i] + b) & 0xFF
            elif kind == 3:
                line[i] = (line[i] + ((a + b) >> 1)) & 0xFF
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        colours.update(bytes(line[i : i + 3]) for i in range(0, stride, bpp))
        previous = line
    return width, height, colours


def operator_get(server: AttestServer, path: str) -> tuple[int, str, bytes]:
    """A GET with an operator certificate over mutual TLS: status, content type, body."""
    conn = http.client.HTTPSConnection(
        "127.0.0.1", server.process.config.port, context=server.operator("auditor"), timeout=120
    )
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("content-type") or "", response.read()
    finally:
        conn.close()


def test_a_real_servers_log_renders_in_a_browser_with_the_json_figures(
    host: Host, server: AttestServer, bundle_factory: Any, tmp_path: Path
) -> None:
    assert shutil.which("chromium"), "chromium is missing: run scripts/setup"
    since = datetime.now(UTC) - timedelta(seconds=1)
    host_id = enroll_at(host, server, ATTRIBUTES)
    launch(host, bundle_factory, WEB)
    launch(host, bundle_factory, HOSTILE)
    assert host.cli("attest").returncode == 0
    records, _ = host.snapshot()
    config = ["--config", str(server.config_path)]
    manifest = policy(tmp_path / "policy.toml", records[0].event.rootfs_digest)
    applied = cli("server", "policy", "apply", str(manifest), "--reason", "first policy", *config)
    assert applied.returncode == 0, applied.stderr
    tagged = cli("server", "hosts", "tag", host_id, "zone=a", "--reason", "new rack", *config)
    assert tagged.returncode == 0, tagged.stderr
    launch(host, bundle_factory, WEB, "shop/web-1")  # compliant: creates its identity
    launch(host, bundle_factory, WEB, "shop/eu-1")  # outside its placement (zone b)
    assert host.cli("attest").returncode == 0  # under audit: still trusted
    forger = Forger(host, server)
    with host_client(host, server) as client:
        body = forger.evidence(client.post("/v1/nonces"))
        with pytest.raises(ServerRefusedError, match="must be signed by its TPM request key"):
            client.post("/v1/attestations", body)  # unsigned: refused, audited
    until = datetime.now(UTC) + timedelta(seconds=1)
    wait_past(until)
    period = ["--since", iso(since), "--until", iso(until)]

    # the operator: export, verify, write the bundle beside the report
    reference = tmp_path / "report.json"
    made = cli(
        "report", "--config", str(server.config_path), *period, "--format", "json", str(reference)
    )
    assert made.returncode == 0, made.stderr
    bundle = tmp_path / "report.json.bundle.json"
    data = json.loads(reference.read_bytes())
    summary = data["summary"]
    assert (summary["hosts"], summary["launches"], summary["workloads"]) == (1, 4, 4), summary
    assert summary["refused_requests"] == 1 and summary["untrusted_launches"] == 0
    assert (summary["non_compliant_launches"], summary["moves"], summary["policy_versions"]) == (
        1,
        0,
        1,
    )
    assert summary["violations"] == 2 and summary["untrusted_verdicts"] == 0
    (host_row,) = data["hosts"]
    assert host_row["host_id"] == host_id and host_row["attributes"] == TAGGED
    assert host_row["trust"][-1]["state"] == "trusted"
    assert {w["workload"] for w in data["workloads"]} == {WEB, HOSTILE, "shop/web", "shop/eu"}
    appraisal = [
        (x["identity"], x["workload"], x["compliant"], x["policy_version"], x["move"], x["action"])
        for x in data["launches"]
    ]
    assert appraisal[2:] == [
        ("shop/web-1", "shop/web", True, 1, "origin", "audit"),
        ("shop/eu-1", "shop/eu", False, 1, None, "audit"),
    ]
    assert {x[2:5] for x in appraisal[:2]} == {(None, None, None)}  # before the policy
    for launched, where in zip(data["launches"], [ATTRIBUTES] * 2 + [TAGGED] * 2, strict=True):
        assert (launched["group"], launched["attributes"], launched["trusted"]) == (
            "lab",
            where,
            True,
        )
    (outside,) = [v for v in data["violations"] if v["kind"] == "non_compliant_launch"]
    assert (outside["workload"], outside["action"]) == ("shop/eu", "audit")
    assert [r["check"] for r in outside["reasons"]] == ["workload"]
    assert "placement 'zone = b'" in outside["reasons"][0]["message"]
    (version,) = data["policy_versions"]
    assert (version["version"], version["reason"]) == (1, "first policy")
    assert version["digest"].startswith("sha256:")
    (tag,) = [a for a in data["admissions"] if a["event"] == "host_tagged"]
    assert (tag["attributes"], tag["reason"]) == (TAGGED, "new rack")

    # the auditor runs the commands the report names, beside the bundle: it verifies with
    # the log's published key, and the report recomputed from it is the same bytes
    key = load_signer(Paths(load_server_config(server.config_path).state_dir).audit_key)
    vkey = key.verifier_key.encode()
    verify, recompute = data["verification"]["commands"]
    assert verify == f"trusthook audit verify {bundle.name} --key {vkey}"
    for command in (verify, recompute):
        ran = cli(*shlex.split(command)[1:], cwd=tmp_path)
        assert ran.returncode == 0, (command, ran.stderr)
    assert (tmp_path / "recomputed.json").read_bytes() == reference.read_bytes()
    html = tmp_path / "report.html"
    made = cli(*shlex.split(recompute)[1:-3], "--format", "html", str(html), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    one = tmp_path / "shop-eu.json"
    argv = [*shlex.split(recompute)[1:-3], "--workload", "shop/eu", "--format", "json"]
    made = cli(*argv, str(one), cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    only = json.loads(one.read_bytes())
    assert [x["identity"] for x in only["launches"]] == ["shop/eu-1"]
    # its launch's violation, and the refused request of the host that ran it
    assert [v["kind"] for v in only["violations"]] == ["non_compliant_launch", "request_refused"]

    # a real browser renders it
    shot = tmp_path / "report.png"
    url = html.resolve().as_uri()
    assert url.startswith("file:///")
    rendered = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", url)
    assert rendered.returncode == 0, rendered.stderr[-2000:]
    width, height, colours = png_pixels(shot.read_bytes())
    assert (width, height) == (1280, 2000)
    _, most = colours.most_common(1)[0]
    assert most < 0.95 * width * height, "the screenshot is (nearly) blank"
    assert len(colours) > 20
    assert colours[TRUSTED_RGB] > 100, "no trusted segment drawn in the trust chart"
    dumped = chromium(tmp_path, "--dump-dom", url)
    assert dumped.returncode == 0, dumped.stderr[-2000:]
    dom = dumped.stdout.decode()
    page: Page = page_of(dom)
    assert {k: int(v) for k, v in page.figures.items()} == summary
    assert [r["data-host"] for r in page.tables["hosts"]] == [h["host_id"] for h in data["hosts"]]
    assert [r["data-workload"] for r in page.tables["workloads"]] == [
        w["workload"] for w in data["workloads"]
    ]
    assert [r["data-index"] for r in page.tables["launches"]] == [
        str(x["index"]) for x in data["launches"]
    ]
    assert len(page.tables["trust"]) == len(host_row["trust"])
    assert [r["data-index"] for r in page.tables["violations"]] == [
        str(x["index"]) for x in data["violations"]
    ]
    assert [r["data-version"] for r in page.tables["policy_versions"]] == ["1"]
    assert page.tables["moves"] == []
    assert page.charts == ["trust", "workloads", "violations", "moves"]
    assert page.links == [], page.links  # no src or href at all: nothing to load
    assert "<script" not in dom.split("<body", 1)[1] and "<img" not in dom
    assert "&lt;img src=x onerror=alert(1)&gt;&lt;script&gt;" in dom  # the name, as text

    # the server serves the same figures to an operator, and refuses a host
    query = f"/v1/audit/report?since={iso(since)}&until={iso(until)}"
    status, kind, raw = operator_get(server, query + "&format=json")
    assert (status, kind) == (200, "application/json"), raw[:300]
    served = json.loads(raw)
    parts = ("period", "summary", "hosts", "launches", "workloads", "moves", "violations")
    for part in (*parts, "policy_versions", "admissions"):
        assert served[part] == data[part], part
    assert served["verification"]["commands"][0].startswith("trusthook audit export --config")
    status, kind, raw = operator_get(server, query)
    assert (status, kind) == (200, "text/html; charset=utf-8") and raw.startswith(b"<!DOCTYPE")
    status, kind, raw = operator_get(server, query + "&format=csv")
    assert (status, kind) == (200, "text/csv; charset=utf-8") and raw.startswith(b"kind,")
    status, _, raw = operator_get(server, query + "&format=pdf")
    assert status == 400, raw
    with (
        host_client(host, server) as client,
        pytest.raises(ServerRefusedError, match="audit reports are for operators"),
    ):
        client.get(query + "&format=json")
    with (
        ServerClient(server.url, server.operator("auditor")) as operator,
        pytest.raises(ServerRefusedError, match="no audit entries in that time range"),
    ):
        operator.get("/v1/audit/report?since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z")
