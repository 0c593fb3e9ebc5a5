"""What the agent does for each request: validate it, measure, record. Transport-free."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from trusthook.agent import bundles
from trusthook.agent.attester import Attester
from trusthook.agent.launch import EncryptedLaunch, image_annotations
from trusthook.agent.metrics import AgentMetrics
from trusthook.agent.restore import RESTORED_STATUS, RestoreGate
from trusthook.agent.writer import MeasuredLog
from trusthook.common.clock import iso, utc_now
from trusthook.common.digest import digest_string
from trusthook.common.eventlog import LaunchEvent
from trusthook.common.messages import (
    CheckpointParams,
    EnrollParams,
    PrepareParams,
    PrepareResult,
    RestoreParams,
    SnapshotResult,
)
from trusthook.common.oci import (
    ContainerState,
    identity_of,
    image_of,
    parse_state,
    read_config,
    rootfs_path,
)
from trusthook.common.protocol import (
    OP_ATTEST,
    OP_ENROLL,
    OP_HOOK,
    OP_PREPARE,
    OP_SNAPSHOT,
    OP_STATUS,
    PROTOCOL_VERSION,
)
from trusthook.common.wire import STAGES
from trusthook.errors import PolicyRefusedError, RequestError, TPMError, TrusthookError
from trusthook.measure.profile import config_digest, launch_profile_digest
from trusthook.measure.walk import RootfsMeasurement

log = logging.getLogger(__name__)


class AgentService:
    """Handles decoded requests; the server turns results and errors into responses."""

    def __init__(
        self,
        *,
        log: MeasuredLog,
        attester: Attester,
        launch: EncryptedLaunch,
        boot_id: str,
        measure_rootfs: Callable[[str | os.PathLike[str]], RootfsMeasurement],
        metrics: AgentMetrics | None = None,
        audit: bool = False,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._metrics = metrics if metrics is not None else AgentMetrics()
        self._log = log
        self._attester = attester
        self._launch = launch
        self._boot_id = boot_id
        self._measure_rootfs = measure_rootfs
        self._audit = audit
        self._clock = clock
        self._restores = RestoreGate(attester=attester, own_hook=lambda: launch.own_hook)

    def handle(self, request: dict[str, Any], body: bytes) -> dict[str, Any]:
        try:
            return self._dispatch(request, body)
        except TPMError:
            self._metrics.tpm_error(request.get("op"))
            raise

    def _dispatch(self, request: dict[str, Any], body: bytes) -> dict[str, Any]:
        version = request.get("version")
        if type(version) is not int or version != PROTOCOL_VERSION:
            raise RequestError(
                f"protocol version {request.get('version')!r}, expected {PROTOCOL_VERSION}"
            )
        op = request.get("op")
        if op == OP_HOOK:
            stage = request.get("stage")
            if stage not in STAGES:
                raise RequestError(f"'stage' must be one of {STAGES}, got {stage!r}")
            self._check_mode(request.get("audit"))
            return self._hook(parse_state(body), stage)
        if op == OP_SNAPSHOT:
            snap = self._log.snapshot()
            return SnapshotResult(
                pcr=self._log.pcr, pcr_value=snap.pcr_value, records=tuple(snap.records)
            ).to_json()
        if op == OP_ENROLL:
            return self._attester.enroll(EnrollParams.from_json(request.get("params"))).to_json()
        if op == OP_ATTEST:
            return self._attester.attest().to_json()
        if op == OP_STATUS:
            status = self._attester.status()
            return dataclasses.replace(status, agent=self._metrics.health()).to_json()
        if op == OP_PREPARE:  # trusthook-runtime, before create, run, checkpoint, restore
            return self.prepare(PrepareParams.from_json(request.get("params"))).to_json()
        ops = (OP_HOOK, OP_SNAPSHOT, OP_ENROLL, OP_ATTEST, OP_STATUS, OP_PREPARE)
        raise RequestError(f"unknown op {op!r}; expected one of {', '.join(ops)}")

    def prepare(self, params: PrepareParams) -> PrepareResult:
        """The bundle work before the real runtime runs (``bundles``): trusthook's hook in
        config.json, a tmpfs root for an encrypted image; for a checkpoint or a restore, the
        server's word first (docs/policy.md §8). Raises if refused: the runtime does not run."""
        container = bundles.check_container_name(params.container_id)
        own_hook = dict(self._launch.own_hook)
        roots = self._launch.roots_dir
        if params.command == "checkpoint":
            if os.path.lexists(roots / container):
                raise PolicyRefusedError(
                    "it runs from an encrypted image, and its memory would be written to disk"
                    " in plaintext (encrypted checkpoints are not built)"
                )
            self._restores.checkpoint(CheckpointParams(container_id=container))
            return PrepareResult(root=None)
        if params.bundle is None:  # PrepareParams allows it only for a checkpoint
            raise RequestError(f"{params.command} needs a bundle")
        if params.command == "restore":
            directory = os.path.abspath(params.bundle)
            bundles.prepare_restore(Path(directory, "config.json"), directory, own_hook)
            self._restores.restore(RestoreParams(container_id=container, bundle=Path(directory)))
            return PrepareResult(root=None)
        bundle = str(params.bundle)
        root = bundles.prepare_bundle(
            Path(bundle, "config.json"), bundle, container, roots, own_hook
        )
        if root is not None:
            log.info("container %s gets the tmpfs root %s", container, root)
        return PrepareResult(root=root)

    def _check_mode(self, audit: object) -> None:
        """The hook's mode must be the host's: a bundle cannot choose audit mode for itself."""
        if type(audit) is not bool:
            raise RequestError(f"'audit' must be true or false, got {audit!r}")
        if audit != self._audit:
            mine, theirs = ("audit", "enforce") if self._audit else ("enforce", "audit")
            raise RequestError(
                f"the hook runs in {theirs} mode, this host in {mine} mode (hook.mode): its"
                " entry was not written by trusthook-runtime from this host's configuration;"
                " refusing the container"
            )

    def _hook(self, state: ContainerState, stage: str) -> dict[str, Any]:
        """``measure``; in audit mode a plain container whose measurement fails is answered
        as unmeasured (it starts), never an encrypted one (it has no plaintext root)."""
        if not self._audit:
            return self.measure(state, stage)
        try:
            return self.measure(state, stage)
        except TrusthookError as e:
            if self._encrypted(state):
                raise
            if isinstance(e, TPMError):  # answered, not raised: counted here
                self._metrics.tpm_error(OP_HOOK)
            log.warning("audit mode: container %s starts unmeasured: %s", state.id, e)
            return {"unmeasured": str(e)}

    @staticmethod
    def _encrypted(state: ContainerState) -> bool:
        try:
            return image_annotations(read_config(state.bundle)) is not None
        except TrusthookError:
            return False

    def measure(self, state: ContainerState, stage: str) -> dict[str, Any]:
        """Measure the container ``state`` names and record it; for an encrypted image,
        release its keys and decrypt it first (``EncryptedLaunch``)."""
        container_id, bundle = state.id, state.bundle
        restore = state.status == RESTORED_STATUS  # runc restore runs the hooks so
        if restore:
            self._restores.take(state)  # refused unless this agent allowed this restore
        config = read_config(bundle)
        root = rootfs_path(bundle, config)
        encrypted = image_annotations(config)
        if restore and encrypted is not None:
            raise PolicyRefusedError(
                f"container {container_id} is a restore of an encrypted image's container:"
                " its checkpoint was plaintext (encrypted checkpoints are not built)"
            )
        if encrypted is None:
            self._launch.check_plain()
        identity = identity_of(state.annotations)  # refused before the walk if too long
        image_ref, image_digest = image_of(state.annotations)
        rootfs = self._measure_rootfs(root)
        event = LaunchEvent(
            identity=identity,
            encrypted=encrypted is not None,
            container_id=container_id,
            bundle=bundle,
            image_reference=image_ref,
            image_digest=image_digest,
            rootfs_digest=digest_string(rootfs.digest),
            rootfs_entries=rootfs.entries,
            config_digest=config_digest(config),
            launch_profile_digest=launch_profile_digest(
                config, container_id, own_hook=self._launch.own_hook
            ),
            stage=stage,
            time=iso(self._clock()),
            boot_id=self._boot_id,
            restore=restore,
        )
        if encrypted is not None:
            record = self._launch.run(config=config, annotations=encrypted, root=root, event=event)
        else:
            record = self._log.append(event)
        log.info("measured container %s (%s) as record %d", container_id, stage, record.recnum)
        return {"recnum": record.recnum, "record": record.to_json()}
