"""OCI runtime-spec inputs: the state JSON a hook reads and the bundle it names.

Standard library only: the hook imports this on every container start.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trusthook.common.eventlog import Identity
from trusthook.common.jsonobject import parse_object
from trusthook.errors import BundleError, StateError

MAX_STATE_BYTES = 1 << 20
MAX_CONFIG_BYTES = 16 << 20

# Annotations engines use for the image a container was created from, in order of preference.
IMAGE_REFERENCE_ANNOTATIONS = (
    "org.opencontainers.image.ref.name",
    "io.kubernetes.cri.image-name",
    "io.kubernetes.cri-o.ImageName",
    "io.containerd.image.name",
)
IMAGE_DIGEST_ANNOTATIONS = ("org.opencontainers.image.digest", "io.kubernetes.cri-o.ImageRef")
# Who a launch is (docs/policy.md §3): an explicit workload name, else the Kubernetes pod and
# container, as CRI-O and then containerd's CRI annotate them.
WORKLOAD_ANNOTATION = "org.trusthook.workload"
KUBERNETES_ANNOTATIONS = (
    ("io.kubernetes.pod.namespace", "io.kubernetes.pod.name", "io.kubernetes.container.name"),
    (
        "io.kubernetes.cri.sandbox-namespace",
        "io.kubernetes.cri.sandbox-name",
        "io.kubernetes.cri.container-name",
    ),
)
CRI_CONTAINER_TYPE = "io.kubernetes.cri.container-type"
# The longest annotation value a launch record takes, in UTF-8 bytes: a record, and the audit
# entry of its launch, stay bounded whatever the engine passes (a Kubernetes name is at most
# 253 characters, an image reference with its tag and digest well under 1,024).
MAX_IMAGE_REFERENCE_BYTES = 1024
MAX_NAME_BYTES = 253
# An encrypted image to decrypt at start: an OCI layout on the host and a ref (docs/images.md).
IMAGE_LAYOUT_ANNOTATION = "org.trusthook.image.layout"
IMAGE_REF_ANNOTATION = "org.trusthook.image.ref"


@dataclass(frozen=True, slots=True, kw_only=True)
class ContainerState:
    """The fields of the OCI state that trusthook uses."""

    id: str
    bundle: str
    status: str
    pid: int | None = None
    annotations: dict[str, str] = field(default_factory=dict)


def check_container_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise StateError("state JSON: 'id' must be a non-empty string")
    if len(value) > 1024 or any(ord(c) < 0x20 or c in "/\x7f" for c in value):
        raise StateError(f"state JSON: container id {value[:64]!r} has forbidden characters")
    return value


def parse_state(raw: bytes) -> ContainerState:
    """Parse the OCI state JSON a runtime writes to a hook's stdin."""
    if len(raw) > MAX_STATE_BYTES:
        raise StateError(f"state JSON is {len(raw)} bytes, more than {MAX_STATE_BYTES}")
    if not raw.strip():
        raise StateError("state JSON on stdin is empty; is this running as an OCI hook?")
    data = parse_object(raw, "state JSON on stdin", StateError)
    bundle = data.get("bundle")
    if not isinstance(bundle, str) or not os.path.isabs(bundle):
        raise StateError(f"state JSON: 'bundle' must be an absolute path, got {bundle!r}")
    status = data.get("status")
    if not isinstance(status, str):
        raise StateError("state JSON: 'status' must be a string")
    pid = data.get("pid")
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0):
        raise StateError(f"state JSON: 'pid' must be a positive integer, got {pid!r}")
    annotations = data.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise StateError("state JSON: 'annotations' must map strings to strings")
    return ContainerState(
        id=check_container_id(data.get("id")),
        bundle=bundle,
        status=status,
        pid=pid,
        annotations=annotations,
    )


def read_config(bundle: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and parse ``config.json`` of a bundle, refusing a symlinked or oversized file."""
    path = os.path.join(bundle, "config.json")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ENOENT:
            raise BundleError(f"bundle {bundle} has no config.json") from None
        if e.errno == errno.ELOOP:
            raise BundleError(f"{path} is a symlink; refusing to follow it") from None
        raise BundleError(f"cannot open {path}: {e.strerror}") from None
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise BundleError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    return parse_object(raw, path, BundleError)


def rootfs_path(bundle: str | os.PathLike[str], config: Mapping[str, Any]) -> Path:
    """The rootfs a config names, relative paths taken from the bundle (runtime-spec)."""
    root = config.get("root")
    path = root.get("path") if isinstance(root, dict) else None
    if not isinstance(path, str) or not path:
        raise BundleError(f"config.json of bundle {bundle} has no root.path")
    if ".." in Path(path).parts:
        raise BundleError(f"root.path {path!r} of bundle {bundle} contains '..'; refusing it")
    return Path(bundle, path)


def identity_of(annotations: Mapping[str, str]) -> Identity:
    """What the engine's annotations say the launch is (docs/policy.md §3): the explicit
    workload annotation, and the Kubernetes pod and container as CRI-O or containerd's CRI
    name them (a pod's sandbox container is ``POD``, as CRI-O names it)."""
    workload = _annotation(annotations, WORKLOAD_ANNOTATION, MAX_NAME_BYTES) or None
    for namespace_key, pod_key, container_key in KUBERNETES_ANNOTATIONS:
        namespace = _annotation(annotations, namespace_key, MAX_NAME_BYTES)
        pod = _annotation(annotations, pod_key, MAX_NAME_BYTES)
        if namespace and pod:
            container = _annotation(annotations, container_key, MAX_NAME_BYTES) or (
                "POD" if annotations.get(CRI_CONTAINER_TYPE) == "sandbox" else ""
            )
            return Identity(workload=workload, kubernetes=(namespace, pod, container))
    return Identity(workload=workload)


def image_of(annotations: Mapping[str, str]) -> tuple[str | None, str | None]:
    """The image reference and digest an engine recorded in annotations, if it did."""
    ref = next((k for k in IMAGE_REFERENCE_ANNOTATIONS if k in annotations), None)
    digest = next((k for k in IMAGE_DIGEST_ANNOTATIONS if k in annotations), None)
    return (
        None if ref is None else _annotation(annotations, ref, MAX_IMAGE_REFERENCE_BYTES),
        None if digest is None else _annotation(annotations, digest, MAX_NAME_BYTES),
    )


def _annotation(annotations: Mapping[str, str], key: str, limit: int) -> str | None:
    """The annotation ``key``, refused if it is longer than ``limit`` UTF-8 bytes."""
    value = annotations.get(key)
    size = 0 if value is None else len(value.encode("utf-8", "surrogatepass"))
    if size > limit:
        raise StateError(f"state JSON: annotation {key} is {size} bytes, expected at most {limit}")
    return value
