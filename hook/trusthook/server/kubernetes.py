"""What the server answers Kubernetes (docs/kubernetes.md): the kube-scheduler extender's
filter and prioritize calls, and the validating admission webhook's AdmissionReview. Pure: the
wire bodies, the policy in force and the hosts' trust in; the answers out.

Wire formats (no kube-apiserver runs here, so they are followed exactly as the Go types
marshal them): ``ExtenderArgs{Pod, Nodes, NodeNames}`` and ``ExtenderFilterResult{Nodes,
NodeNames, FailedNodes, FailedAndUnresolvableNodes, Error}`` and ``HostPriority{Host, Score}``
from k8s.io/kube-scheduler/extender/v1 (no json tags: Go field names as keys; the ``Pod`` and
``Nodes`` inside are core/v1 objects with their usual lower-case keys); ``AdmissionReview`` of
admission.k8s.io/v1.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from trusthook.common.digest import is_digest
from trusthook.common.eventlog import Identity
from trusthook.common.oci import WORKLOAD_ANNOTATION
from trusthook.errors import RequestError
from trusthook.policy.appraise import HostPlace, identity_text
from trusthook.policy.manifest import Action, Manifest, Workload

NODE_ATTRIBUTE = "kubernetes.node"  # an admission attribute naming the host's node
MAX_PRIORITY = 10  # extender v1 MaxExtenderPriority
_DIGEST_IN_IMAGE = re.compile(r"@(sha256:[0-9a-f]{64})$")


@dataclass(frozen=True, slots=True, kw_only=True)
class Container:
    name: str
    image: str

    @property
    def image_digest(self) -> str | None:
        """The manifest digest an image reference pins (``name@sha256:…``), if it does."""
        m = _DIGEST_IN_IMAGE.search(self.image)
        return m[1] if m and is_digest(m[1]) else None


@dataclass(frozen=True, slots=True, kw_only=True)
class Pod:
    namespace: str
    name: str
    annotations: Mapping[str, str]
    containers: tuple[Container, ...]

    def identity(self, container: Container) -> str | None:
        """The workload identity its runtime will record for ``container`` (docs/policy.md
        §3): the explicit annotation, else namespace/pod/container."""
        explicit = self.annotations.get(WORKLOAD_ANNOTATION) or None
        kubernetes = (self.namespace, self.name, container.name) if self.name else None
        return identity_text(Identity(workload=explicit, kubernetes=kubernetes))


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeHost:
    """A node the scheduler offers, and the trusthook host it is (None: none)."""

    node: str
    trusted: bool
    place: HostPlace | None
    why_untrusted: str = ""


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RequestError(f"{where}: got {type(value).__name__}, expected an object")
    return value


def _text(value: Any, where: str, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not empty):
        raise RequestError(f"{where}: got {value!r:.80}, expected a string")
    return value


def parse_pod(value: Any, where: str) -> Pod:
    pod = _object(value, where)
    meta = _object(pod.get("metadata") or {}, f"{where}.metadata")
    spec = _object(pod.get("spec"), f"{where}.spec")
    annotations = _object(meta.get("annotations") or {}, f"{where}.metadata.annotations")
    for key, text in annotations.items():
        _text(text, f"{where}.metadata.annotations[{key!r:.80}]", empty=True)
    entries = []
    for key in ("initContainers", "containers"):
        listed = spec.get(key) or []
        if not isinstance(listed, list):
            raise RequestError(f"{where}.spec.{key}: got {type(listed).__name__}, expected a list")
        entries.extend(listed)
    if not entries:
        raise RequestError(f"{where}.spec.containers: expected a non-empty list")
    containers = []
    for i, entry in enumerate(entries):
        c = _object(entry, f"{where}.spec.containers[{i}]")
        containers.append(
            Container(
                name=_text(c.get("name"), f"{where}.spec.containers[{i}].name"),
                image=_text(c.get("image"), f"{where}.spec.containers[{i}].image"),
            )
        )
    # A pod not yet named (generateName) has no name: its identity is then the annotation's.
    return Pod(
        namespace=_text(meta.get("namespace") or "default", f"{where}.metadata.namespace"),
        name=_text(meta.get("name") or "", f"{where}.metadata.name", empty=True),
        annotations=annotations,
        containers=tuple(containers),
    )


def extender_nodes(args: Any) -> tuple[Pod, list[str], bool]:
    """The pod and candidate node names of an ``ExtenderArgs``; whether it named them by
    ``NodeNames`` (a node-cache-capable extender) rather than ``Nodes``."""
    body = _object(args, "ExtenderArgs")
    pod = parse_pod(body.get("Pod"), "ExtenderArgs.Pod")
    if body.get("NodeNames") is not None:
        names = body["NodeNames"]
        if not isinstance(names, list):
            raise RequestError("ExtenderArgs.NodeNames: expected a list of strings")
        return pod, [_text(n, "ExtenderArgs.NodeNames[]") for n in names], True
    nodes = _object(body.get("Nodes"), "ExtenderArgs.Nodes")
    items = nodes.get("items") or []
    if not isinstance(items, list):
        raise RequestError("ExtenderArgs.Nodes.items: expected a list")
    names = []
    for i, item in enumerate(items):
        where = f"ExtenderArgs.Nodes.items[{i}]"
        meta = _object(_object(item, where).get("metadata"), f"{where}.metadata")
        names.append(_text(meta.get("name"), f"ExtenderArgs.Nodes.items[{i}].metadata.name"))
    return pod, names, False


@dataclass(frozen=True, slots=True, kw_only=True)
class Placement:
    """Where a pod may go: each node that may not, and whether waiting could change it."""

    passed: tuple[str, ...]
    failed: Mapping[str, str]  # the host may turn trusted again
    unresolvable: Mapping[str, str]  # the policy or the node itself rules it out


def workloads_of(manifest: Manifest | None, pod: Pod) -> list[tuple[Container, Workload | None]]:
    if manifest is None:
        return []
    return [(c, manifest.workload(pod.identity(c), c.image_digest)) for c in pod.containers]


def place(manifest: Manifest | None, pod: Pod, nodes: Sequence[NodeHost]) -> Placement:
    """Which of ``nodes`` may run ``pod``: a trusted trusthook host inside the placement and
    groups of every workload the pod's containers are; an unknown container, under
    ``unknown_launch = "untrust"``, fits no node (its launch would untrust the host)."""
    workloads = workloads_of(manifest, pod)
    passed: list[str] = []
    failed: dict[str, str] = {}
    unresolvable: dict[str, str] = {}
    for node in nodes:
        if node.place is None:
            unresolvable[node.node] = "not a trusthook host (no enrolled host has this node name)"
            continue
        rule = _first_rule_broken(manifest, workloads, node.place)
        if rule:
            unresolvable[node.node] = rule
        elif not node.trusted:
            failed[node.node] = f"the host is not trusted: {node.why_untrusted}"
        else:
            passed.append(node.node)
    return Placement(passed=tuple(passed), failed=failed, unresolvable=unresolvable)


def _first_rule_broken(
    manifest: Manifest | None,
    workloads: Sequence[tuple[Container, Workload | None]],
    host: HostPlace,
) -> str:
    for container, workload in workloads:
        if workload is None:
            if manifest is not None and manifest.unknown_launch is Action.UNTRUST:
                return (
                    f"container {container.name} ({container.image}) is no workload of the"
                    " policy manifest, and an unknown launch untrusts the host"
                )
            continue
        if workload.groups and host.group not in workload.groups:
            return (
                f"workload {workload.name} may not run in host group {host.group or '(none)'}"
                f" (expected one of {', '.join(sorted(workload.groups))})"
            )
        for selector in workload.placement_failures(host.attributes):
            return f"workload {workload.name}: {selector.explain(host.attributes)}"
    return ""


def filter_result(placement: Placement, by_names: bool, nodes: Any) -> dict[str, Any]:
    """The ``ExtenderFilterResult``: the passing nodes in the form they came in."""
    result: dict[str, Any] = {
        "FailedNodes": dict(placement.failed),
        "FailedAndUnresolvableNodes": dict(placement.unresolvable),
        "Error": "",
    }
    if by_names:
        result["NodeNames"] = list(placement.passed)
        return result
    kept = set(placement.passed)
    items = (nodes or {}).get("items") or []
    result["Nodes"] = {
        **{k: v for k, v in (nodes or {}).items() if k != "items"},
        "items": [n for n in items if n["metadata"]["name"] in kept],
    }
    return result


def priorities(placement: Placement, candidates: Sequence[str]) -> list[dict[str, Any]]:
    """``HostPriorityList``: a trusted host inside the placement scores the most."""
    kept = set(placement.passed)
    return [{"Host": n, "Score": MAX_PRIORITY if n in kept else 0} for n in candidates]


def review_pod(manifest: Manifest | None, pod: Pod, nodes: Sequence[NodeHost]) -> str:
    """Why the admission webhook refuses ``pod`` ("" to allow): a container whose image the
    manifest does not know (a workload listing images needs the image pinned by digest), or
    a pod no trusted host may run."""
    if manifest is None:
        return ""
    for container, workload in workloads_of(manifest, pod):
        if workload is None:
            return (
                f"container {container.name}: image {container.image} is no workload of the"
                " policy manifest (pin a listed image by digest, or name the workload)"
            )
        if workload.images and container.image_digest not in workload.images:
            pinned = container.image_digest or "no digest (pin it: name@sha256:...)"
            return (
                f"container {container.name} of workload {workload.name}: image"
                f" {container.image} has {pinned}, not one the workload allows"
            )
    if not place(manifest, pod, nodes).passed:
        return "no trusted host satisfies the groups and placement of the pod's workloads"
    return ""


def admission_response(review: Any, refusal: str) -> dict[str, Any]:
    """The ``AdmissionReview`` answer: the request's uid echoed, allowed or refused (403)."""
    request = _object(_object(review, "AdmissionReview").get("request"), "AdmissionReview.request")
    uid = _text(request.get("uid"), "AdmissionReview.request.uid")
    response: dict[str, Any] = {"uid": uid, "allowed": not refusal}
    if refusal:
        response["status"] = {"code": 403, "message": refusal}
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def review_pod_object(review: Any) -> Pod | None:
    """The pod an ``AdmissionReview`` asks about (None: not a pod create or update)."""
    body = _object(review, "AdmissionReview")
    if body.get("apiVersion") != "admission.k8s.io/v1" or body.get("kind") != "AdmissionReview":
        raise RequestError(
            "AdmissionReview: expected apiVersion admission.k8s.io/v1, kind AdmissionReview"
        )
    request = _object(body.get("request"), "AdmissionReview.request")
    kind = _object(request.get("kind") or {}, "AdmissionReview.request.kind")
    if kind.get("kind") != "Pod" or request.get("operation") not in ("CREATE", "UPDATE"):
        return None
    return parse_pod(request.get("object"), "AdmissionReview.request.object")


def node_hosts(
    names: Sequence[str], hosts: Sequence[tuple[str, bool, HostPlace, str]]
) -> list[NodeHost]:
    """Each node name with the host it is: the admitted host whose ``kubernetes.node``
    attribute, else whose hostname, is that name (``hosts``: node name, trusted, place, why
    not trusted); two hosts claiming one node make it no trusthook host."""
    by_node: dict[str, list[tuple[str, bool, HostPlace, str]]] = {}
    for host in hosts:
        by_node.setdefault(host[0], []).append(host)
    found = []
    for name in names:
        claims = by_node.get(name, [])
        if len(claims) != 1:
            found.append(NodeHost(node=name, trusted=False, place=None))
            continue
        _, trusted, place_, why = claims[0]
        found.append(NodeHost(node=name, trusted=trusted, place=place_, why_untrusted=why))
    return found
