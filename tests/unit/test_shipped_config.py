"""The files platform teams copy from oci-config/ are valid and agree with the code."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

from trusthook.agent.imagepolicy import parse_policy
from trusthook.common.config import Config, parse_config
from trusthook.server.app import openapi_document
from trusthook.server.config import ServerConfig, parse_server_config

OCI_CONFIG = Path(__file__).resolve().parents[2] / "oci-config"


def test_example_config_parses_to_the_defaults() -> None:
    with open(OCI_CONFIG / "trusthook.toml", "rb") as f:
        config = parse_config(tomllib.load(f))
    defaults = Config()
    assert (config.tcti, config.pcr, config.socket, config.state_dir, config.mode) == (
        defaults.tcti,
        defaults.pcr,
        defaults.socket,
        defaults.state_dir,
        defaults.mode,
    )


def test_example_config_names_the_default_image_settings() -> None:
    with open(OCI_CONFIG / "trusthook.toml", "rb") as f:
        config = parse_config(tomllib.load(f))
    assert (config.image_policy, config.image_roots) == (
        Config().image_policy,
        Config().image_roots,
    )


def test_example_image_policy_parses() -> None:
    with open(OCI_CONFIG / "image-policy.toml", "rb") as f:
        policy = parse_policy(tomllib.load(f), " image-policy.toml")
    assert policy.enforce and policy.allow_unencrypted
    assert list(policy.images.values()) == ["example"]


def test_hooks_d_file_follows_schema_1_0_0_and_the_hook_accepts_its_args() -> None:
    hook = json.loads((OCI_CONFIG / "hooks.d" / "trusthook.json").read_text())
    assert hook["version"] == "1.0.0"
    assert hook["stages"] == ["createRuntime"]
    assert hook["when"] == {"always": True}
    argv = hook["hook"]["args"]
    assert argv[0] == "trusthook-hook" and len(argv) % 2 == 1
    args = dict(zip(argv[1::2], argv[2::2], strict=True))
    assert args["--socket"] == str(Config().socket)
    assert args.get("--stage", "createRuntime") == "createRuntime"
    assert hook["hook"]["timeout"] >= float(args.get("--timeout", 30))


def test_docker_snippet_names_the_shim() -> None:
    daemon = json.loads((OCI_CONFIG / "docker-daemon.json").read_text())
    assert daemon["runtimes"]["trusthook"]["path"].endswith("/trusthook-runtime")


def test_containerd_snippet_uses_runc_v2_with_the_shim_binary() -> None:
    with open(OCI_CONFIG / "containerd-config.toml", "rb") as f:
        conf = tomllib.load(f)
    runtime = conf["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["trusthook"]
    assert runtime["runtime_type"] == "io.containerd.runc.v2"
    assert runtime["options"]["BinaryName"].endswith("/trusthook-runtime")


def test_example_server_config_parses() -> None:
    with open(OCI_CONFIG / "trusthook-server.toml", "rb") as f:
        config = parse_server_config(tomllib.load(f), source=OCI_CONFIG / "trusthook-server.toml")
    defaults = ServerConfig()
    assert (config.state_dir, config.port, config.validity, config.nonce_ttl) == (
        defaults.state_dir,
        defaults.port,
        defaults.validity,
        defaults.nonce_ttl,
    )
    assert config.expectations("lab").pcrs == (0, 7, 23)
    assert [r.groups for r in config.releases] == [frozenset({"lab"})]


def test_kubernetes_stanzas_name_the_servers_routes() -> None:
    """The scheduler extender's urlPrefix + verbs and the webhook's url are routes the server
    serves (no YAML parser is a dependency: the values are read from their lines)."""
    paths = json.loads(openapi_document())["paths"]
    scheduler = (OCI_CONFIG / "kube-scheduler-config.yaml").read_text()
    prefix = re.search(r'urlPrefix: "https://[^/]+(/[^"]+)"', scheduler)
    verbs = re.findall(r'(?:filterVerb|prioritizeVerb): "([a-z]+)"', scheduler)
    assert prefix is not None and verbs == ["filter", "prioritize"]
    assert all(f"{prefix[1]}/{verb}" in paths for verb in verbs)
    assert "nodeCacheCapable: true" in scheduler and "ignorable: false" in scheduler
    webhook = (OCI_CONFIG / "validating-webhook.yaml").read_text()
    url = re.search(r'url: "https://[^/]+(/[^"]+)"', webhook)
    assert url is not None and url[1] in paths
    assert 'admissionReviewVersions: ["v1"]' in webhook and "failurePolicy: Fail" in webhook
