"""The scheduler extender's and admission webhook's decisions (server/kubernetes.py), purely,
on the Kubernetes wire formats: which nodes pass, fail for now or for good, and why; which pods
are refused; malformed bodies are one-line 400s."""

from __future__ import annotations

from typing import Any

import pytest

from trusthook.errors import RequestError
from trusthook.policy.appraise import HostPlace
from trusthook.policy.manifest import parse_manifest
from trusthook.server import kubernetes

IMAGE = "sha256:" + "5e" * 32
MANIFEST = parse_manifest(
    (
        'format = 1\n[[workload]]\nname = "shop/pay"\n'
        f'images = ["{IMAGE}"]\ngroups = ["pci"]\nplacement = ["region in [eu-1, eu-2]"]\n'
    ).encode(),
    "p.toml",
)
EU = HostPlace(group="pci", attributes={"region": "eu-1"})


def pod(image: str = f"r.example/pay@{IMAGE}", **meta: Any) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "shop", "name": "pay-1", **meta},
        "spec": {"containers": [{"name": "pay", "image": image}]},
    }


def hosts() -> list[tuple[str, bool, HostPlace, str]]:
    return [
        ("a", True, EU, ""),
        ("b", False, EU, "event_log: the log does not reach the PCR"),
        ("c", True, HostPlace(group="lab", attributes={"region": "eu-1"}), ""),
        ("d", True, HostPlace(group="pci", attributes={}), ""),
        ("twin", True, EU, ""),
        ("twin", True, EU, ""),
    ]


def test_each_node_passes_or_fails_with_its_reason() -> None:
    args = {"Pod": pod(), "NodeNames": ["a", "b", "c", "d", "twin", "none"]}
    parsed, names, by_names = kubernetes.extender_nodes(args)
    placement = kubernetes.place(MANIFEST, parsed, kubernetes.node_hosts(names, hosts()))
    assert by_names and placement.passed == ("a",)
    assert placement.failed == {
        "b": "the host is not trusted: event_log: the log does not reach the PCR"
    }
    assert placement.unresolvable == {
        "c": "workload shop/pay may not run in host group lab (expected one of pci)",
        "d": "workload shop/pay: placement 'region in [eu-1, eu-2]': the host's region is not set",
        "twin": "not a trusthook host (no enrolled host has this node name)",
        "none": "not a trusthook host (no enrolled host has this node name)",
    }
    result = kubernetes.filter_result(placement, True, None)
    assert result["NodeNames"] == ["a"] and result["Error"] == ""
    assert kubernetes.priorities(placement, names)[:2] == [
        {"Host": "a", "Score": 10},
        {"Host": "b", "Score": 0},
    ]


def test_without_a_policy_only_trust_counts() -> None:
    parsed = kubernetes.parse_pod(pod("busybox:1.36"), "Pod")
    nodes = kubernetes.node_hosts(["a", "b", "c"], hosts())
    assert kubernetes.place(None, parsed, nodes).passed == ("a", "c")
    assert kubernetes.review_pod(None, parsed, nodes) == ""


@pytest.mark.parametrize(
    ("image", "meta", "refusal"),
    [
        (f"r.example/pay@{IMAGE}", {}, ""),
        ("r.example/other@sha256:" + "11" * 32, {}, "is no workload of the policy manifest"),
        (
            "r.example/pay:3",
            {"annotations": {"org.trusthook.workload": "shop/pay"}},
            "image r.example/pay:3 has no digest (pin it",
        ),
    ],
)
def test_the_webhook_refuses_images_the_manifest_does_not_know(
    image: str, meta: dict[str, Any], refusal: str
) -> None:
    nodes = kubernetes.node_hosts(["a"], hosts())
    found = kubernetes.review_pod(MANIFEST, kubernetes.parse_pod(pod(image, **meta), "Pod"), nodes)
    assert (refusal in found) if refusal else found == ""


def test_a_review_echoes_the_uid_and_lets_other_objects_through() -> None:
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "u-1", "kind": {"kind": "ConfigMap"}, "operation": "CREATE"},
    }
    assert kubernetes.review_pod_object(review) is None
    assert kubernetes.admission_response(review, "no") == {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": "u-1", "allowed": False, "status": {"code": 403, "message": "no"}},
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([], "ExtenderArgs: got list, expected an object"),
        ({"Pod": {"spec": {}}, "NodeNames": []}, "ExtenderArgs.Pod.spec.containers: expected"),
        # found by the kubernetes_body fuzzer: a TypeError unpacking a number
        (
            {"Pod": {"spec": {"containers": 7}}, "NodeNames": []},
            "ExtenderArgs.Pod.spec.containers: got int, expected a list",
        ),
        (
            {"Pod": {"spec": {"initContainers": "x", "containers": []}}, "NodeNames": []},
            "ExtenderArgs.Pod.spec.initContainers: got str, expected a list",
        ),
        ({"Pod": pod(), "NodeNames": "a"}, "ExtenderArgs.NodeNames: expected a list"),
        ({"Pod": pod(), "Nodes": {"items": [{}]}}, r"items\[0\].metadata: got NoneType"),
        ({"Pod": pod(), "NodeNames": [7]}, "ExtenderArgs.NodeNames\\[\\]: got 7"),
    ],
)
def test_malformed_extender_args_are_refused(body: Any, message: str) -> None:
    with pytest.raises(RequestError, match=message):
        kubernetes.extender_nodes(body)


def test_malformed_reviews_are_refused() -> None:
    with pytest.raises(RequestError, match="expected apiVersion admission.k8s.io/v1"):
        kubernetes.review_pod_object({"apiVersion": "admission.k8s.io/v1beta1"})
    with pytest.raises(RequestError, match="request.uid: got None"):
        kubernetes.admission_response({"request": {}}, "")
