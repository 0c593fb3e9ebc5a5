"""Checkpoint and restore decisions (docs/policy.md §8, points 1 and 2): ``POST /v1/checkpoints``
and ``POST /v1/restores``, asked by a host's agent for its runtime shim before the real runtime
runs. Each request is signed by the host's TPM request key over a fresh single-use nonce
(docs/attestation.md §10); the host must be trusted now; the rules are ``policy.restore``'s.
Every decision, allowed or refused, is audited (``checkpoint_allowed``, ``checkpoint_refused``,
``restore_allowed``, ``restore_refused``) naming the policy version.

No ``from __future__ import annotations``: FastAPI reads the models at run time.
"""

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from trusthook.attest.verdict import Reason
from trusthook.common.eventlog import Identity
from trusthook.errors import AttestationError
from trusthook.policy.appraise import identity_text
from trusthook.policy.restore import (
    CHECKPOINT,
    RESTORE,
    RestoreClaim,
    VerifiedLaunch,
    check_checkpoint,
    check_restore,
)
from trusthook.server import api
from trusthook.server.policy import Policies, last_compliant, place_of
from trusthook.server.records import HostRecord
from trusthook.server.service import ServerService, SignedRequest
from trusthook.server.status import status_of
from trusthook.server.store import Store

log = logging.getLogger(__name__)
# How far back a host's launches are searched for the container's last one (newest first).
LAUNCH_SEARCH = 1000
_CONTAINER = r"^[^\x00-\x1f/\x7f]{1,1024}$"  # an OCI container id (common.oci)


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CheckpointRequest(_Body):
    nonce: str = Field(description="a nonce from POST /v1/nonces, base64", max_length=128)
    container: str = Field(description="the container id to checkpoint", pattern=_CONTAINER)


class KubernetesName(_Body):
    namespace: str = Field(max_length=1024)
    pod: str = Field(max_length=1024)
    container: str = Field(max_length=1024)


class IdentityBody(_Body):
    """The identity of docs/policy.md §3, as the event log's content carries it."""

    workload: str | None = Field(default=None, max_length=1024)
    kubernetes: KubernetesName | None = None


class RestoreRequest(_Body):
    nonce: str = Field(description="a nonce from POST /v1/nonces, base64", max_length=128)
    container: str = Field(description="the restored container's id", pattern=_CONTAINER)
    identity: IdentityBody = Field(description="from the restored config.json's annotations")
    image_digest: str | None = Field(
        default=None, max_length=1024, description="the image digest the engine annotated"
    )
    encrypted: bool = Field(description="whether the restored config.json names an encrypted image")


class Decision(_Body):
    """An allowed checkpoint or restore (a refusal is a 403 with check ``checkpoint`` or
    ``restore``, or the check that failed before the policy was asked)."""

    container: str
    identity: str
    workload: str
    policy_version: int
    checkpoint_host: str | None = Field(
        default=None,
        description="restore: the host the identity's last compliant launch ran on, which the"
        " restore is judged a move from",
    )


class Decisions:
    """The two decisions over the server's store."""

    def __init__(
        self,
        *,
        store: Store,
        policies: Policies,
        check_signed: Callable[[HostRecord, SignedRequest], None],
        clock: Callable[[], datetime],
    ) -> None:
        self._store = store
        self._check_signed = check_signed
        self._clock = clock
        self._policies = policies

    @classmethod
    def of(cls, service: ServerService) -> "Decisions":
        """Over ``service``'s store, policy versions, request-signature check and clock."""
        return cls(
            store=service.store,
            policies=service.policies,
            check_signed=service.check_signed,
            clock=service.clock,
        )

    def checkpoint(
        self, host: HostRecord, req: CheckpointRequest, signed: SignedRequest
    ) -> Decision:
        current, version = self._begin(host, req.nonce, signed)
        try:
            self._check_trusted(current, CHECKPOINT, req.container)
            policy = self._policies.in_force()
            launch = self._last_launch(current, req.container)
            workload = check_checkpoint(
                None if policy is None else policy.manifest, version, launch, req.container
            )
        except AttestationError as e:
            self._refused(host, "checkpoint_refused", req.container, version, e)
            raise
        assert launch is not None and launch.identity is not None  # noqa: S101 - checked
        self._audit(
            host,
            "checkpoint_allowed",
            container=req.container,
            identity=launch.identity,
            workload=workload.name,
            policy_version=version,
        )
        log.info("host %s: checkpoint of %s allowed", host.host_id[:16], req.container)
        return Decision(
            container=req.container,
            identity=launch.identity,
            workload=workload.name,
            policy_version=version or 0,
        )

    def restore(self, host: HostRecord, req: RestoreRequest, signed: SignedRequest) -> Decision:
        current, version = self._begin(host, req.nonce, signed)
        identity = identity_text(identity_of_body(req.identity))
        try:
            self._check_trusted(current, RESTORE, req.container)
            policy = self._policies.in_force()
            claim = RestoreClaim(
                container_id=req.container,
                identity=identity,
                image_digest=req.image_digest,
                encrypted=req.encrypted,
            )
            manifest = None if policy is None else policy.manifest
            workload = check_restore(manifest, version, claim, place_of(current))
            assert identity is not None  # noqa: S101 - check_restore requires one
            checkpointed = last_compliant(self._store, identity, workload.name)
            if checkpointed is None:
                raise AttestationError(
                    RESTORE,
                    f"restore of container {req.container} ({identity}) of workload"
                    f" {workload.name} refused: no compliant launch of {identity} was verified,"
                    f" so there is no checkpoint it can be restored from (policy version"
                    f" {version})",
                    expected="a compliant launch of the identity",
                    got="none",
                )
        except AttestationError as e:
            self._refused(host, "restore_refused", req.container, version, e, identity=identity)
            raise
        self._audit(
            host,
            "restore_allowed",
            container=req.container,
            identity=identity,
            workload=workload.name,
            policy_version=version,
            checkpoint_host=checkpointed.host_id,
        )
        log.info("host %s: restore of %s allowed", host.host_id[:16], req.container)
        return Decision(
            container=req.container,
            identity=identity,
            workload=workload.name,
            policy_version=version or 0,
            checkpoint_host=checkpointed.host_id,
        )

    def _begin(
        self, host: HostRecord, nonce: str, signed: SignedRequest
    ) -> tuple[HostRecord, int | None]:
        """Check the signature (audited by the service), spend the nonce; the host as stored
        now and the policy version in force."""
        self._check_signed(host, signed)
        refused = self._store.spend_nonce(
            host_id=host.host_id, nonce=api.field_bytes(nonce, "nonce"), now=self._now()
        )
        if refused is not None:
            raise AttestationError(refused.check, refused.message)
        current = self._store.get_host(host.host_id) or host
        policy = self._policies.in_force()
        return current, None if policy is None else policy.version

    def _check_trusted(self, host: HostRecord, check: str, container: str) -> None:
        status = status_of(host, self._now(), operator=False)
        if not host.admitted or not status.trusted:
            why = "; ".join(f"{r.check}: {r.message}" for r in status.reasons) or "not admitted"
            raise AttestationError(
                check,
                f"{check} of container {container} refused: the host is not trusted ({why})",
                expected="trusted",
                got="untrusted",
            )

    def _last_launch(self, host: HostRecord, container: str) -> VerifiedLaunch | None:
        for row in self._store.host_launches(host.host_id, LAUNCH_SEARCH):
            if row.container == container:
                return VerifiedLaunch(
                    container_id=row.container,
                    identity=row.identity,
                    workload=row.workload,
                    compliant=row.compliant,
                    encrypted=row.encrypted,
                    policy_version=row.policy_version,
                    in_this_boot=row.boot_id == host.state.boot_id,
                )
        return None

    def _refused(
        self,
        host: HostRecord,
        event: str,
        container: str,
        version: int | None,
        error: AttestationError,
        **more: Any,
    ) -> None:
        reason = Reason.of(error)
        self._audit(
            host, event, container=container, policy_version=version, **more, **reason.to_json()
        )
        log.warning("host %s: %s", host.host_id[:16], error.message)

    def _audit(self, host: HostRecord, event: str, **detail: Any) -> None:
        self._store.record_event(
            host_id=host.host_id, event_name=event, detail=detail, now=self._now()
        )

    def _now(self) -> float:
        return self._clock().timestamp()


def identity_of_body(body: IdentityBody) -> Identity:
    """The identity a restore request names, as the event log holds one."""
    kubernetes = None
    if body.kubernetes is not None:
        k = body.kubernetes
        kubernetes = (k.namespace, k.pod, k.container)
    return Identity(workload=body.workload or None, kubernetes=kubernetes)
