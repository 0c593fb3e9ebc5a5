"""Real parts for integration tests: swtpm, the agent, busybox bundles, runc."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from tests.support.postgres import Postgres
from tests.support.shim import shim_env, shim_program
from trusthook._devenv.agentproc import AgentProcess, write_agent_config
from trusthook._devenv.bundle import build_rootfs, write_bundle_config
from trusthook._devenv.serverproc import ServerProcess, swtpm_ek_bundle, write_server_config
from trusthook._devenv.swtpm import Swtpm, free_port_pair
from trusthook.agent.serverclient import tls_context
from trusthook.common.config import Config
from trusthook.common.eventlog import Record, parse_record
from trusthook.common.protocol import OP_SNAPSHOT, call
from trusthook.server.admin import Decision, HostAdmin
from trusthook.server.config import load_server_config
from trusthook.server.run import operator_certificate
from trusthook.server.store import Store

BIN = Path(sys.executable).parent
HOOK = BIN / "trusthook-hook"
SHIM = shim_program()

# The tests' agents never attest on their own between start-up and a test's request: an
# enrolled agent attests once as it starts (AgentProcess.start_attested waits that out), then
# only after this interval. A test of the periodic loop sets a short one itself.
NO_PERIODIC_ATTESTATION = 86400.0
# Bounds on one hook run (runc's hook timeout, the hook's wait for the agent): generous, for
# twenty concurrent starts on a loaded two-core machine.
HOOK_TIMEOUT = 30.0

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def _root_only() -> None:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (runc, swtpm state, the agent socket)")


# Loopback ports. A port that is chosen free and bound later by a child can be taken in
# between: above all by the kernel, as the source port of any outgoing connection or for a bind
# to port 0, which it draws from the ephemeral range. A reservation closes that gap.

_reservations: list[socket.socket] = []


def reserve_port() -> int:
    """A loopback port held until the test ends: bound with SO_REUSEADDR and never listened on.
    The kernel hands it to no outgoing connection and no bind to port 0, and a plain bind of it
    fails, while a server that binds it with SO_REUSEADDR (uvicorn, PostgreSQL) still can,
    again after every restart; while none listens, connecting is refused as on a free port."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    _reservations.append(sock)
    return int(sock.getsockname()[1])


@contextlib.contextmanager
def holding_port(port: int) -> Iterator[None]:
    """Hold ``port``, which its server has just released, until the block ends (its restart
    on the same port goes inside the block)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        yield


@pytest.fixture(autouse=True)
def _release_reserved_ports() -> Iterator[None]:
    """Autouse, so set up before and torn down after the fixtures whose servers use them."""
    yield
    while _reservations:
        _reservations.pop().close()


def _port_pair_outside_ephemeral_range() -> int:
    """A free loopback pair p, p+1 below the kernel's ephemeral range: no outgoing connection
    or bind to port 0 takes it between now and swtpm's bind, or between a stop and a restart
    (swtpm's bind is a plain one: a reservation would keep swtpm itself out)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    if low <= 10002:
        return free_port_pair()
    for _ in range(100):
        port = random.randrange(10000, low - 1)  # noqa: S311 - spreads concurrent runs, no secret
        with contextlib.ExitStack() as stack:
            try:
                for p in (port, port + 1):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", p))
            except OSError:
                continue
        return port
    return free_port_pair()


def new_swtpm(state: Path) -> Swtpm:
    """A Swtpm (not started) on a port pair outside the ephemeral range; it keeps that pair
    across restarts, so a TCTI written into a config stays right."""
    tpm = Swtpm(state)
    tpm.port = _port_pair_outside_ephemeral_range()
    return tpm


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
    with new_swtpm(state) as tpm:
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
        return {**os.environ, **shim_env(self.config_path)}

    def snapshot(self) -> tuple[list[Record], bytes]:
        result = call(str(self.config.socket), OP_SNAPSHOT, timeout=30)
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
            "timeout": int(HOOK_TIMEOUT),
        }

    def run_hook(self, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [str(HOOK), *self.config.hook_args], input=stdin, capture_output=True, check=False
        )


def make_host(
    swtpm: Swtpm,
    root: Path,
    mode: str = "enforce",
    attest_interval: float = NO_PERIODIC_ATTESTATION,
) -> Host:
    config_path = root / "trusthook.toml"
    config = write_agent_config(
        config_path,
        tcti=swtpm.tcti,
        state_dir=root / "state",
        hook=HOOK,
        mode=mode,
        attest_interval=attest_interval,
        hook_timeout=HOOK_TIMEOUT,
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

    def approve(self, host_id: str, group: str, attributes: dict[str, str] | None = None) -> None:
        """The operator admits the pending host into ``group`` with ``attributes`` (trusthook
        server hosts approve), on the server's database."""
        config = load_server_config(self.config_path)
        store = Store(config.database_url)
        try:
            decided = Decision(by="the tests' operator", reason="", now=time.time())
            HostAdmin(config, store).approve(
                host_id, group=group, attributes=attributes or {}, decision=decided
            )
        finally:
            store.dispose()


def make_server(
    root: Path,
    ek_bundle: Path,
    database: str = "",
    backend: str = "sqlite",
    extra_toml: str = "",
    **options: Any,
) -> AttestServer:
    """A server config (``extra_toml`` appended: sections write_server_config has no option
    for) and its process, initialised, not started."""
    root.mkdir(parents=True, exist_ok=True)
    config_path = root / "server.toml"
    write_server_config(
        config_path,
        state_dir=root / "state",
        port=reserve_port(),
        ek_ca_bundle=ek_bundle,
        database=database,
        **options,
    )
    if extra_toml:
        config_path.write_text(config_path.read_text() + extra_toml)
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
