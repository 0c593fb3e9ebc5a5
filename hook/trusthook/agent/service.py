"""What the agent does for each request: validate it, measure, record. Transport-free."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from trusthook.agent.attester import Attester
from trusthook.agent.launch import EncryptedLaunch, image_annotations
from trusthook.agent.writer import MeasuredLog
from trusthook.common.clock import iso, utc_now
from trusthook.common.digest import digest_string
from trusthook.common.eventlog import LaunchEvent
from trusthook.common.oci import ContainerState, image_of, parse_state, read_config, rootfs_path
from trusthook.common.protocol import (
    OP_ATTEST,
    OP_ENROLL,
    OP_HOOK,
    OP_SNAPSHOT,
    OP_STATUS,
    PROTOCOL_VERSION,
)
from trusthook.common.wire import STAGES
from trusthook.errors import RequestError
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
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._log = log
        self._attester = attester
        self._launch = launch
        self._boot_id = boot_id
        self._measure_rootfs = measure_rootfs
        self._clock = clock

    def handle(self, request: dict[str, Any], body: bytes) -> dict[str, Any]:
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
            return self.measure(parse_state(body), stage)
        if op == OP_SNAPSHOT:
            snap = self._log.snapshot()
            return {
                "pcr": self._log.pcr,
                "pcr_value": snap.pcr_value.hex(),
                "records": [r.to_json() for r in snap.records],
            }
        if op == OP_ENROLL:
            return self._attester.enroll(**parse_enroll_params(request.get("params")))
        if op == OP_ATTEST:
            return self._attester.attest()
        if op == OP_STATUS:
            return self._attester.status()
        ops = (OP_HOOK, OP_SNAPSHOT, OP_ENROLL, OP_ATTEST, OP_STATUS)
        raise RequestError(f"unknown op {op!r}; expected one of {', '.join(ops)}")

    def measure(self, state: ContainerState, stage: str) -> dict[str, Any]:
        """Measure the container ``state`` names and record it; for an encrypted image,
        release its keys and decrypt it first (``EncryptedLaunch``)."""
        container_id, bundle = state.id, state.bundle
        config = read_config(bundle)
        root = rootfs_path(bundle, config)
        encrypted = image_annotations(config)
        if encrypted is None:
            self._launch.check_plain()
        rootfs = self._measure_rootfs(root)
        image_ref, image_digest = image_of(state.annotations)
        event = LaunchEvent(
            container_id=container_id,
            bundle=bundle,
            image_reference=image_ref,
            image_digest=image_digest,
            rootfs_digest=digest_string(rootfs.digest),
            rootfs_entries=rootfs.entries,
            config_digest=config_digest(config),
            launch_profile_digest=launch_profile_digest(config, container_id),
            stage=stage,
            time=iso(self._clock()),
            boot_id=self._boot_id,
        )
        if encrypted is not None:
            record = self._launch.run(annotations=encrypted, root=root, event=event)
        else:
            record = self._log.append(event)
        log.info("measured container %s (%s) as record %d", container_id, stage, record.recnum)
        return {"recnum": record.recnum, "record": record.to_json()}


def parse_enroll_params(params: Any) -> dict[str, Any]:
    """The enroll request's parameters, checked: server URL, server CA file, names, flag."""
    if not isinstance(params, dict) or set(params) != _ENROLL_PARAMS:
        raise RequestError(f"enroll needs exactly the params {sorted(_ENROLL_PARAMS)}")
    for key in ("server", "server_ca", "hostname", "group"):
        if not isinstance(params[key], str) or not params[key]:
            raise RequestError(f"enroll param {key!r} must be a non-empty string")
    if not isinstance(params["reenroll"], bool):
        raise RequestError("enroll param 'reenroll' must be true or false")
    if not os.path.isabs(params["server_ca"]):
        raise RequestError("enroll param 'server_ca' must be an absolute path")
    return {**params, "server_ca": Path(params["server_ca"])}


_ENROLL_PARAMS = {"server", "server_ca", "hostname", "group", "reenroll"}
