"""The one typed configuration, loaded at each entry point and passed down.

Standard library only (``tomllib``): the hook and the shim load it on every container start.
The file format is documented in ``oci-config/trusthook.toml``.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from trusthook.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/trusthook/config.toml")
CONFIG_ENV = "TRUSTHOOK_CONFIG"
HASHER_ENV = "TRUSTHOOK_HASHER"
HASHERS = ("auto", "native", "python")
_INT64 = range(-(1 << 63), 1 << 63)


class Mode(Enum):
    """What the hook does when measurement fails."""

    ENFORCE = "enforce"  # the container does not start
    AUDIT = "audit"  # the failure is logged and the container starts


@dataclass(frozen=True, kw_only=True)
class Config:
    """Every setting trusthook reads. Defaults suit a production host with a kernel TPM."""

    tcti: str = "device:/dev/tpmrm0"
    pcr: int = 23
    socket: Path = Path("/run/trusthook/agent.sock")
    state_dir: Path = Path("/var/lib/trusthook")
    hasher: str = "auto"
    hash_threads: int = 0  # 0: one per CPU; more helps when rootfs files are not in the page cache
    mode: Mode = Mode.ENFORCE
    hook_timeout: float = 30.0
    runtime: str = "runc"
    hook_path: Path | None = None
    attest_interval: float = 60.0  # seconds between attestations once enrolled
    attest_timeout: float = 30.0  # seconds for one exchange with the attestation server
    attest_keep_alive: bool = True  # hold the server connection from one attestation to the next
    image_policy: Path = Path("/etc/trusthook/image-policy.toml")  # docs/images.md
    image_roots: Path = Path("/run/trusthook/roots")  # the shim's per-container tmpfs roots
    metrics_textfile: Path | None = None  # node_exporter textfile (docs/metrics.md); None: off

    @property
    def hook_args(self) -> list[str]:
        """The hook's arguments (after argv[0]) that carry this configuration."""
        args = ["--socket", str(self.socket), "--timeout", f"{self.hook_timeout:g}"]
        return [*args, "--audit"] if self.mode is Mode.AUDIT else args


Schema = Mapping[str, type | tuple[type, ...]]
_SCHEMA: dict[str, Schema] = {
    "tpm": {"tcti": str, "pcr": int},
    "agent": {
        "socket": str,
        "state_dir": str,
        "hasher": str,
        "hash_threads": int,
        "metrics_textfile": str,
    },
    "hook": {"mode": str, "timeout": (int, float)},
    "runtime": {"path": str, "hook": str},
    "attestation": {"interval": (int, float), "timeout": (int, float), "keep_alive": bool},
    "images": {"policy": str, "roots": str},
}


def check_keys(data: Mapping[str, Any], name: str | None, known: Iterable[str], where: str) -> None:
    """Refuse a key that is not in ``known``: of table ``name``, of a document of keys
    (``name`` empty) or of a document of sections (``name`` None)."""
    allowed = sorted(known)
    for key in data:
        if key not in allowed:
            what = (
                f"key {name}.{key}" if name else f"key {key}" if name == "" else f"section [{key}]"
            )
            raise ConfigError(f"unknown {what}{where}; expected one of {allowed}")


def check_table(data: Any, name: str, schema: Schema, where: str) -> dict[str, Any]:
    """``data`` if it is a table of the keys in ``schema`` with values of their types (a
    boolean is never a number); else a ConfigError naming the first bad key."""
    if not isinstance(data, dict):
        raise ConfigError(f"[{name}]{where} must be a table")
    check_keys(data, name, schema, where)
    for key, value in data.items():
        kind = schema[key]
        if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise ConfigError(f"{name}.{key}{where}: got {value!r}, wrong type")
    return data


def parse_config(data: Mapping[str, Any], *, source: Path | None = None) -> Config:
    """Build a Config from parsed TOML, refusing unknown sections, keys and wrong types."""
    where = f" in {source}" if source else ""
    check_keys(data, None, _SCHEMA, where)
    for section, body in data.items():
        check_table(body, section, _SCHEMA[section], where)
    tpm = data.get("tpm", {})
    agent = data.get("agent", {})
    hook = data.get("hook", {})
    runtime = data.get("runtime", {})
    attestation = data.get("attestation", {})
    images = data.get("images", {})
    for key in ("interval", "timeout"):
        if key in attestation and not 0 < attestation[key] < 1e9:
            raise ConfigError(
                f"attestation.{key}{where}: got {attestation[key]}, expected seconds > 0"
            )
    pcr = tpm.get("pcr", 23)
    if not 0 <= pcr <= 23:
        raise ConfigError(f"tpm.pcr{where}: got {pcr}, expected a PCR index 0..23")
    try:
        mode = Mode(hook.get("mode", "enforce"))
    except ValueError:
        raise ConfigError(
            f"hook.mode{where}: got {hook['mode']!r}, expected 'enforce' or 'audit'"
        ) from None
    timeout = float(hook.get("timeout", 30.0))
    if not 0 < timeout < 1e9:  # also refuses nan and inf, as the hook does
        raise ConfigError(f"hook.timeout{where}: got {timeout}, expected seconds > 0")
    hook_path = runtime.get("hook")
    hasher = _hasher(agent.get("hasher", "auto"), f"agent.hasher{where}")
    hash_threads = agent.get("hash_threads", 0)
    if not 0 <= hash_threads <= 1024:
        raise ConfigError(f"agent.hash_threads{where}: got {hash_threads}, expected 0..1024")
    textfile = agent.get("metrics_textfile", "")
    if textfile and (
        not textfile.startswith("/") or not textfile.endswith(".prom") or "\0" in textfile
    ):
        raise ConfigError(
            f"agent.metrics_textfile{where}: got {textfile!r}, expected an absolute path ending"
            " in .prom (node_exporter's textfile collector reads only those), or empty for none"
        )
    return Config(
        tcti=tpm.get("tcti", Config.tcti),
        pcr=pcr,
        socket=Path(agent.get("socket", Config.socket)),
        state_dir=Path(agent.get("state_dir", Config.state_dir)),
        hasher=hasher,
        hash_threads=hash_threads,
        mode=mode,
        hook_timeout=timeout,
        runtime=runtime.get("path", Config.runtime),
        hook_path=Path(hook_path) if hook_path else None,
        attest_interval=float(attestation.get("interval", Config.attest_interval)),
        attest_timeout=float(attestation.get("timeout", Config.attest_timeout)),
        attest_keep_alive=bool(attestation.get("keep_alive", Config.attest_keep_alive)),
        image_policy=Path(images.get("policy", Config.image_policy)),
        image_roots=Path(images.get("roots", Config.image_roots)),
        metrics_textfile=Path(textfile) if textfile else None,
    )


def _hasher(value: str, what: str) -> str:
    if value not in HASHERS:
        raise ConfigError(f"{what}: got {value!r}, expected one of {', '.join(HASHERS)}")
    return value


def load_config(path: str | Path | None = None, environ: Mapping[str, str] | None = None) -> Config:
    """Load the configuration: explicit path, else $TRUSTHOOK_CONFIG, else the default file;
    then the environment overrides ($TRUSTHOOK_HASHER).

    The default file may be absent (built-in defaults apply); a named file must exist.
    """
    env = os.environ if environ is None else environ
    config = _load_file(path, env)
    if env.get(HASHER_ENV):
        config = dataclasses.replace(config, hasher=_hasher(env[HASHER_ENV], HASHER_ENV))
    return config


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The TOML document in ``path``; ConfigError naming ``what`` if it cannot be read or
    parsed. A missing file raises FileNotFoundError: whether that is an error is the caller's."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from e
    return parse_toml(raw, f"{what} {path}")


def parse_toml(raw: bytes, what: str) -> dict[str, Any]:
    """The TOML document in ``raw``; ConfigError naming ``what`` if it is not one, or if it
    holds an integer beyond 64 bits (TOML 1.0 asks for the error; Python would carry it on
    into every message and conversion)."""
    try:
        document = tomllib.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as e:  # bad UTF-8 or TOML, a huge decimal, too deep
        raise ConfigError(f"{what} is not valid TOML: {e}") from e
    pending: list[object] = [document]
    while pending:  # iterative: the document may be as deep as tomllib could nest it
        value = pending.pop()
        if isinstance(value, dict):
            pending.extend(value.values())
        elif isinstance(value, list):
            pending.extend(value)
        elif isinstance(value, int) and not _INT64.start <= value < _INT64.stop:
            raise ConfigError(
                f"{what} is not valid TOML: got an integer of {value.bit_length()} bits,"
                " expected 64-bit integers"
            )
    return document


def _load_file(path: str | Path | None, env: Mapping[str, str]) -> Config:
    explicit = path if path is not None else env.get(CONFIG_ENV)
    target = Path(explicit) if explicit else DEFAULT_CONFIG_PATH
    try:
        data = read_toml(target, "config file")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"config file {target} does not exist") from None
        return Config()
    return parse_config(data, source=target)
