"""Run ``trusthook server`` as a child process over TLS on loopback, for development and tests."""

from __future__ import annotations

import http.client
import ssl
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from trusthook._devenv.child import ChildProcess
from trusthook.errors import ServiceError
from trusthook.server.config import ServerConfig, load_server_config

SWTPM_LOCALCA = Path("/var/lib/swtpm-localca")
ZERO_PCR = "00" * 32


def swtpm_ek_bundle(path: Path) -> Path:
    """The CA bundle that swtpm_setup's EK certificates chain to (its local root and issuer)."""
    certs = sorted(SWTPM_LOCALCA.glob("*cert*.pem"))
    if not certs:
        raise ServiceError(f"no swtpm local CA certificates in {SWTPM_LOCALCA}; run swtpm_setup")
    path.write_bytes(b"".join(c.read_bytes() for c in certs))
    return path


def write_server_config(
    path: Path,
    *,
    state_dir: Path,
    port: int,
    ek_ca_bundle: Path,
    database: str = "",
    groups: Mapping[str, Mapping[int, Sequence[str]]] | None = None,
    validity: float = 180.0,
    nonce_ttl: float = 60.0,
    max_body: int = 4 << 20,
    releases: Sequence[tuple[str, Sequence[str], Sequence[str]]] = (),
    auto_admit: str | None = None,
) -> ServerConfig:
    """A server config file; by default one group "lab" whose PCRs 0-7 are swtpm's zeros.
    ``auto_admit``: admit every unknown EK into that group (for benchmarks only)."""
    groups = groups if groups is not None else {"lab": {i: [ZERO_PCR] for i in range(8)}}
    lines = [
        "[server]",
        f'state_dir = "{state_dir}"',
        'host = "127.0.0.1"',
        f"port = {port}",
        'hostnames = ["localhost", "127.0.0.1"]',
        f'database = "{database}"',
        f'ek_ca_bundle = "{ek_ca_bundle}"',
        "[attestation]",
        f"validity = {validity}",
        f"nonce_ttl = {nonce_ttl}",
        f"max_body = {max_body}",
    ]
    for name, pcrs in groups.items():
        lines.append(f"[groups.{name}.pcrs]")
        lines.extend(
            f"{index} = [{', '.join(repr(v) for v in values)}]".replace("'", '"')
            for index, values in pcrs.items()
        )
        if not pcrs:
            lines[-1] = f"[groups.{name}]"
    for image, release_groups, profiles in releases:  # (image, groups, launch profiles)
        lines += [
            "[[release]]",
            f'image = "{image}"',
            "groups = [" + ", ".join(f'"{g}"' for g in release_groups) + "]",
            "launch_profiles = [" + ", ".join(f'"{p}"' for p in profiles) + "]",
        ]
    if auto_admit is not None:
        lines += ["[admission]", f'auto_admit = "{auto_admit}"']
    path.write_text("\n".join(lines) + "\n")
    return load_server_config(path)


class ServerProcess(ChildProcess):
    """``trusthook server run`` with a given config; ``init`` it first."""

    def __init__(self, config_path: Path, log_path: Path) -> None:
        super().__init__(log_path)
        self.config_path = config_path
        self.config = load_server_config(config_path)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.config.port}"

    @property
    def ca_cert(self) -> Path:
        return self.config.state_dir / "ca" / "ca.crt"

    def init(self) -> None:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "trusthook.cli",
                "server",
                "init",
                "--config",
                str(self.config_path),
            ],
            check=True,
            capture_output=True,
        )

    def start(self, timeout: float = 30.0) -> ServerProcess:
        context = ssl.create_default_context(cafile=str(self.ca_cert))

        def healthy() -> bool:
            conn = http.client.HTTPSConnection(
                "127.0.0.1", self.config.port, context=context, timeout=2
            )
            try:
                conn.request("GET", "/v1/health")
                return conn.getresponse().status == 200
            except OSError:
                return False
            finally:
                conn.close()

        argv = [sys.executable, "-m", "trusthook.cli", "server", "run"]
        self._start(
            [*argv, "--config", str(self.config_path)], healthy, "trusthook server", timeout
        )
        return self
