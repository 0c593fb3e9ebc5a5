"""Checkpoint and restore, the agent's part (docs/policy.md §8, points 1 to 3).

``trusthook-runtime`` asks before it lets the real runtime checkpoint or restore a container
(ops ``checkpoint`` and ``restore``). The agent attests first, so the server has verified every
launch recorded so far, then asks the server with a request signed by the TPM request key over
a fresh nonce (``POST /v1/checkpoints``, ``POST /v1/restores``); the server decides and audits.
An allowed restore is remembered here, for the container and bundle it was asked for: the
restored container's ``createRuntime`` hook (OCI state status ``stopped``) is measured only if
this agent allowed that restore a moment before (``take``), and its record is marked a restore.
A hook with status ``stopped`` that no allowed restore announced (podman restoring an archive
whose recorded hooks include trusthook's, a restore that bypassed the shim) is refused.

Any failure (no enrollment, no server, a refusal) refuses: the shim then never runs the
runtime.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from trusthook.agent.attester import Attester
from trusthook.agent.bundles import HOOK_STAGE
from trusthook.agent.launch import image_annotations
from trusthook.common.jcs import canonicalize
from trusthook.common.messages import (
    CheckpointParams,
    CheckpointRequest,
    NonceResponse,
    RestoreDecision,
    RestoreParams,
    RestoreRequest,
)
from trusthook.common.oci import ContainerState, identity_of, image_of, read_config
from trusthook.errors import BundleError, ConfigError, PolicyRefusedError, ServerRefusedError
from trusthook.policy.appraise import identity_text

log = logging.getLogger(__name__)
RESTORED_STATUS = "stopped"  # the OCI state runc gives a restored container's hooks
PENDING_SECONDS = 600.0  # from the allowed restore to its hook: CRIU restores memory first


@dataclass(frozen=True, slots=True)
class _Pending:
    bundle: str
    decision: RestoreDecision
    deadline: float


class RestoreGate:
    """The agent's checkpoint and restore decisions, and the restores it allowed."""

    def __init__(
        self,
        *,
        attester: Attester,
        own_hook: Callable[[], Mapping[str, Any]],
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._attester = attester
        self._own_hook = own_hook
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._pending: dict[str, _Pending] = {}

    def checkpoint(self, params: CheckpointParams) -> RestoreDecision:
        """The server's word on checkpointing ``params.container_id``; raises if refused."""
        decision = self._ask(
            "/v1/checkpoints",
            lambda nonce: CheckpointRequest(nonce=nonce, container=params.container_id).to_json(),
        )
        if decision.container != params.container_id:
            raise ServerRefusedError(
                f"attestation server allowed the checkpoint of container {decision.container},"
                f" expected {params.container_id}"
            )
        log.info("checkpoint of %s allowed (workload %s)", decision.container, decision.workload)
        return decision

    def restore(self, params: RestoreParams) -> RestoreDecision:
        """The server's word on restoring ``params.container_id`` from the bundle, whose
        config.json must carry trusthook's own hook; an allowed restore is remembered for its
        hook (``take``)."""
        bundle = str(params.bundle)
        config = read_config(bundle)
        self._check_own_hook(config, bundle)
        encrypted = image_annotations(config) is not None
        annotations = _annotations(config, bundle)
        identity = identity_of(annotations)
        _, image_digest = image_of(annotations)
        decision = self._ask(
            "/v1/restores",
            lambda nonce: RestoreRequest(
                nonce=nonce,
                container=params.container_id,
                identity=identity.to_content(),
                image_digest=image_digest,
                encrypted=encrypted,
            ).to_json(),
        )
        if decision.container != params.container_id or decision.identity != identity_text(
            identity
        ):
            raise ServerRefusedError(
                f"attestation server allowed the restore of container {decision.container}"
                f" ({decision.identity}), expected {params.container_id}"
                f" ({identity_text(identity)})"
            )
        with self._lock:
            now = self._monotonic()
            self._pending = {k: p for k, p in self._pending.items() if p.deadline > now}
            self._pending[params.container_id] = _Pending(
                os.path.realpath(bundle), decision, now + PENDING_SECONDS
            )
        log.info(
            "restore of %s allowed (workload %s, checkpointed on %s)",
            decision.container,
            decision.workload,
            (decision.checkpoint_host or "?")[:16],
        )
        return decision

    def take(self, state: ContainerState) -> RestoreDecision:
        """The allowed restore the hook of restored container ``state`` belongs to, which it
        uses up; PolicyRefusedError if there is none (or it expired, or was for another bundle
        or identity)."""
        with self._lock:
            pending = self._pending.pop(state.id, None)
        refused = "refusing the restored container"
        if pending is None or pending.deadline <= self._monotonic():
            raise PolicyRefusedError(
                f"container {state.id} arrives with OCI status {RESTORED_STATUS!r}, a restore,"
                " and no restore of it was allowed through trusthook-runtime (a restore must be"
                f" asked for first: docs/policy.md §8); {refused}"
            )
        if os.path.realpath(state.bundle) != pending.bundle:
            raise PolicyRefusedError(
                f"the restore of container {state.id} was allowed for bundle {pending.bundle},"
                f" got {state.bundle}; {refused}"
            )
        identity = identity_text(identity_of(state.annotations))
        if identity != pending.decision.identity:
            raise PolicyRefusedError(
                f"the restore of container {state.id} was allowed as"
                f" {pending.decision.identity}, and its state's annotations say {identity};"
                f" {refused}"
            )
        return pending.decision

    def _check_own_hook(self, config: Mapping[str, Any], bundle: str) -> None:
        hooks = config.get("hooks")
        entries = hooks.get(HOOK_STAGE) if isinstance(hooks, dict) else None
        own = canonicalize(self._own_hook())
        if not isinstance(entries, list) or not any(canonicalize(h) == own for h in entries):
            raise BundleError(
                f"{bundle}/config.json has no trusthook {HOOK_STAGE} hook: the restored"
                " container would run unmeasured; restore it with trusthook-runtime"
            )

    def _ask(self, path: str, body: Callable[[bytes], dict[str, Any]]) -> RestoreDecision:
        """Attest (the server then has every launch so far), then post ``body`` with a fresh
        nonce, signed by the request key; the server's decision."""
        enrollment = self._attester.enrollment()
        if enrollment is None:
            raise ConfigError(
                "checkpoint and restore need an enrolled host: run 'trusthook enroll --server URL'"
            )
        self._attester.attest()
        with self._attester.client(enrollment) as client:
            nonce = NonceResponse.from_json(client.post("/v1/nonces")).nonce
            return RestoreDecision.from_json(client.post(path, body(nonce), signed=True))


def _annotations(config: Mapping[str, Any], bundle: str) -> dict[str, str]:
    annotations = config.get("annotations") or {}
    if not isinstance(annotations, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in annotations.items()
    ):
        raise BundleError(f"{bundle}/config.json: 'annotations' must map strings to strings")
    return annotations
