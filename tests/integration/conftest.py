"""Real parts for integration tests: swtpm, the agent, busybox bundles, runc."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from tests.support.postgres import Postgres
from trusthook._devenv.agentproc import AgentProcess, write_agent_config
from trusthook._devenv.bundle import build_rootfs, write_bundle_config
from trusthook._devenv.serverproc import ServerProcess, swtpm_ek_bundle, write_server_config
from trusthook._devenv.swtpm import Swtpm, free_port_pair
from trusthook.agent.serverclient import tls_context
from trusthook.common.config import Config
from trusthook.common.eventlog import Record, parse_record
from trusthook.common.protocol import OP_SNAPSHOT, call
from trusthook.server.run import operator_certificate

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


def make_host(
    swtpm: Swtpm, root: Path, mode: str = "enforce", attest_interval: float = 60.0
) -> Host:
    config_path = root / "trusthook.toml"
    config = write_agent_config(
        config_path,
        tcti=swtpm.tcti,
        state_dir=root / "state",
        hook=HOOK,
        mode=mode,
        attest_interval=attest_interval,
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


# The attestation server: SQLite, or PostgreSQL (one private cluster per session, one database
# per test).


@pytest.fixture(scope="session")
def ek_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return swtpm_ek_bundle(tmp_path_factory.mktemp("ek-ca") / "ek-ca.pem")


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    pg = Postgres(Path(tempfile.mkdtemp(prefix="trusthook-pg-")))
    pg.start()
    yield pg
    pg.stop()
    pg.cleanup()


def fresh_database(pg: Postgres) -> str:
    """A new empty database in the session's cluster; its SQLAlchemy URL."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    engine = sqlalchemy.create_engine(pg.url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    engine.dispose()
    return f"{pg.url.rsplit('/', 1)[0]}/{name}"


@dataclass
class AttestServer:
    """A server config and its process (started by the fixture)."""

    config_path: Path
    process: ServerProcess
    backend: str
    root: Path

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def ca_cert(self) -> Path:
        return self.process.ca_cert

    def operator(self, name: str = "scheduler") -> ssl.SSLContext:
        """A TLS context presenting an operator certificate from this server's CA."""
        out = self.root / "operators"
        key, cert = operator_certificate(self.process.config, name, out)
        return tls_context(self.ca_cert, cert, key)


def make_server(
    root: Path,
    ek_bundle: Path,
    database: str = "",
    backend: str = "sqlite",
    **options: Any,
) -> AttestServer:
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "server.toml"
    write_server_config(
        config_path,
        state_dir=root / "state",
        port=free_port_pair(),
        ek_ca_bundle=ek_bundle,
        database=database,
        **options,
    )
    process = ServerProcess(config_path, root / "server.log")
    process.init()
    return AttestServer(config_path, process, backend, root)


@pytest.fixture(params=["sqlite", "postgresql"])
def server_backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database(server_backend: str, request: pytest.FixtureRequest) -> str:
    if server_backend == "sqlite":
        return ""
    return fresh_database(request.getfixturevalue("postgres"))


@pytest.fixture
def attest_server(
    tmp_path: Path, ek_bundle: Path, database: str, server_backend: str
) -> Iterator[AttestServer]:
    server = make_server(tmp_path / "server", ek_bundle, database, server_backend)
    server.process.start()
    yield server
    server.process.stop()
