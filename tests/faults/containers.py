"""Container starts under real runc with the hook: from the ordinary busybox image (runc with
trusthook's hook entry, or through trusthook-runtime) and from the encrypted image (through
trusthook-runtime, which gives it a tmpfs root). Each container's process leaves a file named
after the container in the rig's ``out`` directory: proof that it ran."""

from __future__ import annotations

import copy
import hashlib
import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.faults.rig import APP_FILE, IMAGE_REF, Rig, remove_tree
from tests.integration.conftest import SHIM
from trusthook._devenv.bundle import write_bundle_config
from trusthook.common.oci import IMAGE_LAYOUT_ANNOTATION, IMAGE_REF_ANNOTATION

RUN_TIMEOUT = 180.0
# What the hook says when it cannot reach the agent (trusthook/common/wire.py): the agent was
# not there, or went away before it answered.
UNREACHABLE = (
    "is the trusthook agent running?",
    "closed the connection unanswered",
    "cannot talk to the trusthook agent",
    "did not answer within",
)


@dataclass(frozen=True)
class Start:
    cid: str
    bundle: Path
    encrypted: bool
    via_shim: bool


@dataclass(frozen=True)
class Outcome:
    start: Start
    returncode: int | None  # None: runc did not finish within RUN_TIMEOUT
    stderr: str
    seconds: float
    ran: bool  # the container's process left its file
    saw: bytes  # what it wrote

    @property
    def unreachable(self) -> bool:
        return any(phrase in self.stderr for phrase in UNREACHABLE)


class Launcher:
    """Makes one bundle per container (its own config.json) and runs it."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig
        self._bundles = rig.work / "bundles"
        self._bundles.mkdir(exist_ok=True)
        template = rig.work / "bundle-template"
        template.mkdir(exist_ok=True)
        self._config = write_bundle_config(template, ["/bin/true"])
        self._config["mounts"].append(
            {"destination": "/out", "type": "bind", "source": str(rig.out), "options": ["rbind"]}
        )
        digest = hashlib.sha256(rig.secret).hexdigest()
        self.encrypted_marker = f"{digest}  {APP_FILE}\n".encode()

    def _bundle(self, cid: str, config: dict[str, Any]) -> Path:
        bundle = self._bundles / cid
        bundle.mkdir()
        (bundle / "config.json").write_text(json.dumps(config, indent=2))
        return bundle

    def plain(self, cid: str, *, via_shim: bool) -> Start:
        config = copy.deepcopy(self._config)
        config["process"]["args"] = ["/bin/touch", f"/out/{cid}"]
        config["root"]["path"] = str(self.rig.rootfs)
        if not via_shim:
            config["hooks"] = {"createRuntime": [self.rig.host.hook_entry()]}
        return Start(cid, self._bundle(cid, config), encrypted=False, via_shim=via_shim)

    def encrypted(self, cid: str) -> Start:
        config = copy.deepcopy(self._config)
        config["process"]["args"] = ["/bin/sh", "-c", f"sha256sum {APP_FILE} > /out/{cid}"]
        config["annotations"] = {
            IMAGE_LAYOUT_ANNOTATION: str(self.rig.layout),
            IMAGE_REF_ANNOTATION: IMAGE_REF,
        }
        bundle = self._bundle(cid, config)
        (bundle / "rootfs").mkdir()
        return Start(cid, bundle, encrypted=True, via_shim=True)

    def run(self, start: Start) -> Outcome:
        binary = str(SHIM) if start.via_shim else "runc"
        argv = [binary, "--root", str(self.rig.runc_root), "run", "--bundle", str(start.bundle)]
        began = time.monotonic()
        try:
            result = subprocess.run(
                [*argv, start.cid],
                capture_output=True,
                text=True,
                check=False,
                env=self.rig.host.env,
                timeout=RUN_TIMEOUT,
                stdin=subprocess.DEVNULL,
            )
            code: int | None = result.returncode
            stderr = result.stderr
        except subprocess.TimeoutExpired as e:
            code, stderr = None, str(e.stderr or "")
        marker = self.rig.out / start.cid
        saw = marker.read_bytes() if marker.exists() else b""
        return Outcome(start, code, stderr, time.monotonic() - began, marker.exists(), saw)

    def leftover_containers(self) -> list[str]:
        """Containers runc still knows about in this campaign's root (an attached ``runc
        run`` deletes its container when it ends, and a failed one never leaves one)."""
        result = subprocess.run(
            ["runc", "--root", str(self.rig.runc_root), "list", "-q"],
            capture_output=True,
            text=True,
            check=True,
        )
        return result.stdout.split()

    def delete(self, cid: str) -> None:
        subprocess.run(
            ["runc", "--root", str(self.rig.runc_root), "delete", "--force", cid],
            capture_output=True,
            check=False,
        )

    def clean(self, starts: list[Start]) -> None:
        """Remove the bundles and the files of finished containers."""
        for start in starts:
            remove_tree(start.bundle)
            (self.rig.out / start.cid).unlink(missing_ok=True)
