"""Real parts for integration tests: swtpm, the agent, busybox bundles, runc."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from trusthook.config import Config
from trusthook.devenv.agentproc import AgentProcess, write_config
from trusthook.devenv.bundle import build_rootfs
from trusthook.devenv.bundle import write_config as write_bundle_config
from trusthook.devenv.swtpm import Swtpm
from trusthook.eventlog import Record, parse_record
from trusthook.protocol import OP_SNAPSHOT, call

BIN = Path(sys.executable).parent
HOOK = BIN / "trusthook-hook"
SHIM = BIN / "trusthook-runtime"

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _root_only() -> None:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (runc, swtpm state, the agent socket)")


@pytest.fixture(scope="session")
def tpm_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One manufactured TPM state (EK and platform certificates); each test starts a copy."""
    state = tmp_path_factory.mktemp("tpm-template")
    Swtpm(state).setup()
    return state


@pytest.fixture
def swtpm(tpm_template: Path, tmp_path: Path) -> Iterator[Swtpm]:
    state = tmp_path / "tpm"
    shutil.copytree(tpm_template, state)
    with Swtpm(state) as tpm:
        yield tpm


@dataclass
class Host:
    """A development host: swtpm, a config file, the agent (started or not)."""

    tpm: Swtpm
    config_path: Path
    config: Config
    agent: AgentProcess
    root: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "TRUSTHOOK_CONFIG": str(self.config_path)}

    def snapshot(self) -> tuple[list[Record], bytes]:
        result = call(str(self.config.socket), OP_SNAPSHOT, timeout=10)
        records = [parse_record(r, f"record {i}") for i, r in enumerate(result["records"])]
        return records, bytes.fromhex(result["pcr_value"])

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "trusthook"), "--trusthook-config", str(self.config_path), *args],
            capture_output=True,
            text=True,
            check=False,
        )

    def hook_entry(self) -> dict[str, Any]:
        return {
            "path": str(HOOK),
            "args": ["trusthook-hook", *self.config.hook_args],
            "timeout": 10,
        }

    def run_hook(self, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(HOOK), *self.config.hook_args], input=stdin, capture_output=True, check=False
        )


def make_host(swtpm: Swtpm, root: Path, mode: str = "enforce") -> Host:
    config_path = root / "trusthook.toml"
    config = write_config(
        config_path, tcti=swtpm.tcti, state_dir=root / "state", hook=HOOK, mode=mode
    )
    return Host(
        swtpm, config_path, config, AgentProcess(config_path, config, root / "agent.log"), root
    )


@pytest.fixture
def host(swtpm: Swtpm, tmp_path: Path) -> Iterator[Host]:
    """A host whose agent is running."""
    h = make_host(swtpm, tmp_path)
    h.agent.start()
    yield h
    h.agent.stop()


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_rootfs(tmp_path_factory.mktemp("busybox") / "rootfs")


@pytest.fixture
def bundle_factory(tmp_path: Path, busybox_rootfs: Path) -> Iterator[Any]:
    """Make bundles that share the session's busybox rootfs (read-only) by absolute path."""

    def make(
        args: list[str] | None = None,
        *,
        hooks: dict[str, Any] | None = None,
        mounts: list[dict[str, Any]] | None = None,
        name: str | None = None,
    ) -> Path:
        bundle = tmp_path / (name or f"bundle-{uuid.uuid4().hex[:8]}")
        bundle.mkdir()
        config = write_bundle_config(bundle, args or ["/bin/true"])
        config["root"]["path"] = str(busybox_rootfs)
        if hooks:
            config["hooks"] = hooks
        if mounts:
            config["mounts"] += mounts
        (bundle / "config.json").write_text(json.dumps(config, indent=2))
        return bundle

    yield make


def runc(
    *args: str, env: dict[str, str] | None = None, binary: str = "runc"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary, *args], capture_output=True, text=True, check=False, env=env, timeout=120
    )
