"""The Kubernetes scheduler extender and admission webhook (issue 11 §7, docs/kubernetes.md)
against a real server process over real mTLS, with two real swtpm hosts in two regions.

No kube-apiserver or kube-scheduler can run here, so the requests are their exact wire formats:
``ExtenderArgs`` as kube-scheduler marshals k8s.io/kube-scheduler/extender/v1 (Go field names,
no json tags; a core/v1 Pod and NodeList inside), and an admission.k8s.io/v1 AdmissionReview as
kube-apiserver sends it."""

from __future__ import annotations

import http.client
import json
import subprocess
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.attesting import attest, enroll, host_client
from tests.integration.conftest import BIN, AttestServer, Host, make_host, new_swtpm
from trusthook.agent.serverclient import ServerClient
from trusthook.errors import ServerRefusedError

pytestmark = pytest.mark.integration
IMAGE = "sha256:" + "5e" * 32
UNKNOWN = "sha256:" + "0d" * 32


def pod(image: str, *, name: str = "pay-7d9f", workload: str | None = "shop/pay") -> dict[str, Any]:
    annotations = {} if workload is None else {"org.trusthook.workload": workload}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": "shop", "name": name, "annotations": annotations},
        "spec": {"containers": [{"name": "pay", "image": f"registry.example/pay@{image}"}]},
    }


def nodes(*names: str) -> dict[str, Any]:
    return {
        "kind": "NodeList",
        "apiVersion": "v1",
        "metadata": {"resourceVersion": "42"},
        "items": [
            {"metadata": {"name": n, "labels": {"kubernetes.io/hostname": n}}} for n in names
        ],
    }


def post_list(server: AttestServer, path: str, body: dict[str, Any]) -> Any:
    """POST over mTLS with an operator certificate, for an answer that is a JSON list (the
    client the agent uses reads objects only)."""
    url = urllib.parse.urlsplit(server.url)
    conn = http.client.HTTPSConnection(
        url.hostname or "", url.port, context=server.operator("kube-scheduler")
    )
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        answer = conn.getresponse()
        assert answer.status == 200, answer.read()
        return json.loads(answer.read())
    finally:
        conn.close()


def review(obj: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    uid = str(uuid.uuid4())
    return uid, {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid,
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:shop:deployer"},
            "object": obj,
            "dryRun": False,
        },
    }


def test_the_extender_and_the_webhook_follow_the_policy(
    host: Host, attest_server: AttestServer, tmp_path: Path
) -> None:
    enroll(host, attest_server, attributes={"region": "eu-1", "kubernetes.node": "node-a"})
    assert attest(host)[0] == 0
    policy = tmp_path / "policy.toml"
    policy.write_text(
        'format = 1\n[defaults]\nunknown_launch = "untrust"\n'
        f'[[workload]]\nname = "shop/pay"\nimages = ["{IMAGE}"]\nplacement = ["region = eu-1"]\n'
        f'[[workload]]\nname = "shop/far"\nimages = ["{UNKNOWN}"]\nplacement = ["region = ap-1"]\n'
    )
    applied = subprocess.run(
        [
            *(str(BIN / "trusthook"), "server", "policy", "apply", str(policy)),
            *("--config", str(attest_server.config_path)),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert applied.returncode == 0, applied.stderr
    b_tpm = new_swtpm(tmp_path / "tpm-b")
    (tmp_path / "b").mkdir()
    with b_tpm:
        b = make_host(b_tpm, tmp_path / "b")
        with b.agent:
            enroll(b, attest_server, attributes={"region": "us-2", "kubernetes.node": "node-b"})
            assert attest(b)[0] == 0
            with ServerClient(attest_server.url, attest_server.operator("kube-scheduler")) as k8s:
                args = {"Pod": pod(IMAGE), "Nodes": nodes("node-a", "node-b", "node-c")}
                result = k8s.post("/v1/kubernetes/scheduler/filter", args)
                assert [n["metadata"]["name"] for n in result["Nodes"]["items"]] == ["node-a"]
                assert result["Nodes"]["metadata"] == {"resourceVersion": "42"}
                assert result["FailedNodes"] == {}
                assert result["FailedAndUnresolvableNodes"] == {
                    "node-b": "workload shop/pay: placement 'region = eu-1': the host's region"
                    " is us-2",
                    "node-c": "not a trusthook host (no enrolled host has this node name)",
                }
                assert result["Error"] == ""
                by_name = {"Pod": pod(IMAGE), "NodeNames": ["node-b", "node-a"]}
                result = k8s.post("/v1/kubernetes/scheduler/filter", by_name)
                assert result["NodeNames"] == ["node-a"] and "Nodes" not in result
                scores = post_list(attest_server, "/v1/kubernetes/scheduler/prioritize", by_name)
                assert scores == [{"Host": "node-b", "Score": 0}, {"Host": "node-a", "Score": 10}]
                stranger = {"Pod": pod(UNKNOWN, workload=None), "NodeNames": ["node-a"]}
                result = k8s.post("/v1/kubernetes/scheduler/filter", stranger)
                assert result["NodeNames"] == []
                assert (
                    "shop/far: placement 'region = ap-1'"
                    in (result["FailedAndUnresolvableNodes"]["node-a"])
                )

                uid, body = review(pod(IMAGE))
                assert k8s.post("/v1/kubernetes/admission", body) == {
                    "apiVersion": "admission.k8s.io/v1",
                    "kind": "AdmissionReview",
                    "response": {"uid": uid, "allowed": True},
                }
                uid, body = review(pod("sha256:" + "77" * 32, workload=None))
                answer = k8s.post("/v1/kubernetes/admission", body)["response"]
                assert answer["uid"] == uid and answer["allowed"] is False
                assert answer["status"]["code"] == 403
                assert "is no workload of the policy manifest" in answer["status"]["message"]
                _, body = review(pod(UNKNOWN, workload=None))  # shop/far: no host in ap-1
                answer = k8s.post("/v1/kubernetes/admission", body)["response"]
                assert answer["status"]["message"] == (
                    "no trusted host satisfies the groups and placement of the pod's workloads"
                )
                tagged = pod("latest", workload="shop/pay")
                tagged["spec"]["containers"][0]["image"] = "registry.example/pay:latest"
                _, body = review(tagged)
                answer = k8s.post("/v1/kubernetes/admission", body)["response"]
                assert "has no digest (pin it: name@sha256:...)" in answer["status"]["message"]
            with host_client(host, attest_server) as as_host:
                with pytest.raises(ServerRefusedError, match="are for operators"):
                    as_host.post("/v1/kubernetes/scheduler/filter", args)
                with pytest.raises(ServerRefusedError, match="are for operators"):
                    as_host.post("/v1/kubernetes/admission", review(pod(IMAGE))[1])
