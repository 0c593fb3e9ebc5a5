"""The server's HTTP contract and configuration, without a network."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from trusthook.errors import ConfigError
from trusthook.server import api
from trusthook.server.app import create_app, openapi_document
from trusthook.server.ca import CertificateAuthority
from trusthook.server.config import ServerConfig, parse_server_config
from trusthook.server.service import ServerService
from trusthook.server.store import Store

DOC = Path(__file__).parents[2] / "docs" / "openapi.json"


def served_openapi(directory: Path) -> str:
    service = ServerService(
        config=ServerConfig(groups={}),
        store=Store(f"sqlite:///{directory / 'db'}"),
        ca=CertificateAuthority.create("test", datetime.now(UTC)),
        ek_roots=(),
    )
    return openapi_document(create_app(service, max_body=1024))


def test_openapi_document_in_docs_is_what_the_server_serves(tmp_path: Path) -> None:
    served = served_openapi(tmp_path)
    assert DOC.read_text() == served, (
        "docs/openapi.json is out of date; regenerate it: .venv/bin/python -m tests.unit."
        "test_server_api > docs/openapi.json"
    )
    paths = json.loads(served)["paths"]
    assert set(paths) == {
        "/v1/health",
        "/metrics",
        "/v1/enrollments",
        "/v1/enrollments/{enrollment_id}/activation",
        "/v1/nonces",
        "/v1/attestations",
        "/v1/releases",
        "/v1/hosts",
        "/v1/hosts/{host_id}",
        "/v1/audit/checkpoint",
        "/v1/audit/consistency",
        "/v1/audit/entries",
        "/v1/audit/inclusion",
        "/v1/audit/report",
        "/v1/hosts/{host_id}/launches",
        "/v1/workloads",
        "/v1/workloads/{name}",
        "/v1/kubernetes/scheduler/filter",
        "/v1/kubernetes/scheduler/prioritize",
        "/v1/kubernetes/admission",
        "/v1/checkpoints",
        "/v1/restores",
    }


GOOD: dict[str, Any] = {
    "server": {"port": 9443, "hostnames": ["verifier.example"]},
    "attestation": {"validity": 120, "container_pcr": 23},
    "groups": {"lab": {"pcrs": {"0": ["00" * 32, "ff" * 32], "7": "aa" * 32}}},
}


def test_server_config_parses() -> None:
    config = parse_server_config(GOOD)
    expect = config.expectations("lab")
    assert expect.pcrs == (0, 7, 23)
    assert expect.golden[7] == frozenset({bytes.fromhex("aa" * 32)})
    assert config.validity == 120.0 and config.hostnames == ("verifier.example",)
    assert config.database_url.startswith("sqlite:////var/lib/trusthook-server/")
    with pytest.raises(ConfigError, match="unknown host group 'prod'"):
        config.expectations("prod")


def test_admission_and_anchor_settings_are_parsed() -> None:
    anchor = "AB" * 32
    config = parse_server_config(
        {
            **GOOD,
            "server": {**GOOD["server"], "ek_ca_anchors": [anchor]},
            "admission": {"auto_admit": "lab"},
        }
    )
    assert config.auto_admit == "lab"
    assert config.ek_ca_anchors == frozenset({anchor.lower()})
    defaults = parse_server_config(GOOD)
    assert defaults.auto_admit is None and defaults.ek_ca_anchors == frozenset()


def test_an_enrollment_request_names_no_group_and_no_control_characters() -> None:
    request = {
        "hostname": "node-1",
        "ek_certificate": "",
        "ek_public": "",
        "ak_public": "",
        "csr": "",
    }
    assert api.EnrollmentRequest.model_validate(request).note == ""
    with pytest.raises(ValidationError, match="got a 'group', expected none: the operator"):
        api.EnrollmentRequest.model_validate({**request, "group": "payments"})
    for field in ("hostname", "note"):
        with pytest.raises(ValidationError, match=field):
            api.EnrollmentRequest.model_validate({**request, field: "x\x1b[2Jy"})


def test_release_rules_are_parsed() -> None:
    image, profile = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    config = parse_server_config(
        {**GOOD, "release": [{"image": image, "groups": ["lab"], "launch_profiles": [profile]}]}
    )
    (rule,) = config.releases
    assert (rule.image, rule.groups, rule.launch_profiles) == (
        image,
        frozenset({"lab"}),
        frozenset({profile}),
    )


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"extra": {}}, "unknown section"),
        ({"server": {"prot": 1}}, "unknown key server.prot"),
        ({"server": {"port": "x"}}, "server.port"),
        ({"server": {"port": 70000}}, "expected 0..65535"),
        ({"attestation": {"validity": 0}}, "attestation.validity"),
        ({"attestation": {"container_pcr": 24}}, "container_pcr"),
        ({"groups": {}}, "at least one host group"),
        ({"groups": {"bad name": {}}}, "group name"),
        ({"groups": {"lab": {"pcrs": {"23": ["00" * 32]}}}}, "other than the container PCR"),
        ({"groups": {"lab": {"pcrs": {"x": ["00" * 32]}}}}, "boot PCR"),
        ({"groups": {"lab": {"pcrs": {"0": ["00"]}}}}, "64 hex digits"),
        ({"groups": {"lab": {"pcrs": {"0": []}}}}, "known-good values"),
        ({"groups": {"lab": {"other": 1}}}, "unknown key groups.lab.other"),
        ({"release": {"image": "x"}}, r"array of tables: \[\[release\]\]"),
        ({"release": [{"image": "sha256:00", "groups": ["lab"]}]}, "image manifest digest"),
        ({"release": [{"image": "sha256:" + "0" * 64, "groups": ["nope"]}]}, "configured groups"),
        ({"release": [{"image": "sha256:" + "0" * 64, "groups": []}]}, "configured groups"),
        (
            {
                "release": [
                    {"image": "sha256:" + "0" * 64, "groups": ["lab"], "launch_profiles": ["x"]}
                ]
            },
            "launch_profiles",
        ),
        ({"release": [{"image": "sha256:" + "0" * 64, "groups": ["lab"], "x": 1}]}, "unknown key"),
        ({"admission": {"auto_admit": "prod"}}, "got 'prod', expected a configured group"),
        ({"admission": {"auto": "lab"}}, "unknown key admission.auto"),
        ({"admission": {"auto_admit": True}}, "admission.auto_admit"),
        ({"server": {"ek_ca_anchors": ["00"]}}, "expected SHA-256 fingerprints"),
        ({"server": {"ek_ca_anchors": "00"}}, "server.ek_ca_anchors"),
    ],
)
def test_server_config_refuses(change: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_server_config({**GOOD, **change})


if __name__ == "__main__":  # regenerate docs/openapi.json
    import sys
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        sys.stdout.write(served_openapi(Path(d)))
