"""The attestation server's configuration (TOML; example in oci-config/trusthook-server.toml)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trusthook.attest.appraise import Expectations
from trusthook.common.config import check_keys, check_table, read_toml
from trusthook.common.digest import is_digest
from trusthook.errors import ConfigError

_HEX32 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_PCR_KEY = re.compile(r"[0-9]{1,2}")  # ASCII: str.isdigit() takes "²", which int() refuses
ANY_PROFILE = "any"  # launch_profiles = ["any"]: every launch profile, an explicit opt-in


@dataclass(frozen=True, kw_only=True)
class ReleaseRule:
    """One ``[[release]]`` entry, ``name``d by its place (``release[0]``): this image's layer
    keys may go to these groups' hosts, for launches with one of these launch profiles (none
    listed: no launch), or with any profile if ``any_profile`` (``launch_profiles = ["any"]``)."""

    name: str
    image: str
    groups: frozenset[str]
    launch_profiles: frozenset[str]
    any_profile: bool = False


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Every setting ``trusthook server`` reads."""

    state_dir: Path = Path("/var/lib/trusthook-server")
    host: str = "127.0.0.1"
    port: int = 8443
    hostnames: tuple[str, ...] = ("localhost", "127.0.0.1")  # names in the server's certificate
    database: str = ""  # SQLAlchemy URL; empty: SQLite in state_dir
    ek_ca_bundle: Path = Path("/etc/trusthook/ek-ca.pem")
    # SHA-256 (hex) of bundle certificates that are trust anchors although not self-signed
    ek_ca_anchors: frozenset[str] = frozenset()
    container_pcr: int = 23
    nonce_ttl: float = 60.0
    enrollment_ttl: float = 300.0
    validity: float = 180.0  # how long a passing attestation keeps a host trusted
    max_body: int = 4 << 20
    groups: Mapping[str, Expectations] = field(default_factory=dict)
    releases: tuple[ReleaseRule, ...] = ()
    # The group every unknown EK is admitted to without an operator (labs only); None: off
    auto_admit: str | None = None

    @property
    def image_key_dir(self) -> Path:
        """Where ``trusthook server keys`` keeps the key-encryption private keys."""
        return self.state_dir / "image-keys"

    @property
    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.state_dir / 'trusthook.db'}"

    def expectations(self, group: str) -> Expectations:
        found = self.groups.get(group)
        if found is None:
            raise ConfigError(f"unknown host group {group!r}; configured: {sorted(self.groups)}")
        return found


_SERVER_KEYS: dict[str, type | tuple[type, ...]] = {
    "state_dir": str,
    "host": str,
    "port": int,
    "hostnames": list,
    "database": str,
    "ek_ca_bundle": str,
    "ek_ca_anchors": list,
}
_ATTEST_KEYS: dict[str, type | tuple[type, ...]] = {
    "container_pcr": int,
    "nonce_ttl": (int, float),
    "enrollment_ttl": (int, float),
    "validity": (int, float),
    "max_body": int,
}


def _parse_group(name: str, body: Any, container_pcr: int, where: str) -> Expectations:
    if not _NAME.fullmatch(name):
        raise ConfigError(f"group name {name!r}{where} must match {_NAME.pattern}")
    check_table(body, f"groups.{name}", {"pcrs": dict}, where)
    golden: dict[int, frozenset[bytes]] = {}
    for key, listed in body.get("pcrs", {}).items():
        if not _PCR_KEY.fullmatch(key) or not 0 <= int(key) <= 23 or int(key) == container_pcr:
            raise ConfigError(
                f"groups.{name}.pcrs{where}: key {key!r} must be a boot PCR 0..23 other than"
                f" the container PCR {container_pcr}"
            )
        values = [listed] if isinstance(listed, str) else listed
        if not isinstance(values, list) or not values:
            raise ConfigError(f"groups.{name}.pcrs.{key}{where} must list known-good values")
        for value in values:
            if not isinstance(value, str) or not _HEX32.fullmatch(value.lower()):
                raise ConfigError(
                    f"groups.{name}.pcrs.{key}{where}: got {value!r}, expected 64 hex digits"
                )
        golden[int(key)] = frozenset(bytes.fromhex(v) for v in values)
    return Expectations(container_pcr=container_pcr, golden=golden)


def _parse_release(
    index: int, body: Any, groups: Mapping[str, Expectations], where: str
) -> ReleaseRule:
    name = f"release[{index}]"
    check_table(body, name, {"image": str, "groups": list, "launch_profiles": list}, where)
    image = body.get("image")
    if not isinstance(image, str) or not is_digest(image):
        raise ConfigError(f"{name}.image{where}: got {image!r}, expected an image manifest digest")
    chosen = body.get("groups", [])
    if not chosen or not all(isinstance(g, str) and g in groups for g in chosen):
        raise ConfigError(
            f"{name}.groups{where}: got {chosen!r}, expected configured groups {sorted(groups)}"
        )
    profiles = body.get("launch_profiles", [])
    any_profile = profiles == [ANY_PROFILE]
    if not any_profile and not all(is_digest(p) for p in profiles):
        raise ConfigError(
            f"{name}.launch_profiles{where}: got {profiles!r}, expected sha256:<hex> launch"
            f' profile digests, or ["{ANY_PROFILE}"] to allow every launch profile'
        )
    return ReleaseRule(
        name=name,
        image=image,
        groups=frozenset(chosen),
        launch_profiles=frozenset() if any_profile else frozenset(profiles),
        any_profile=any_profile,
    )


def parse_server_config(data: Mapping[str, Any], *, source: Path | None = None) -> ServerConfig:
    """Build a ServerConfig from parsed TOML, refusing unknown keys and bad values."""
    where = f" in {source}" if source else ""
    check_keys(data, None, ("server", "attestation", "groups", "release", "admission"), where)
    server = check_table(data.get("server", {}), "server", _SERVER_KEYS, where)
    admission = check_table(data.get("admission", {}), "admission", {"auto_admit": str}, where)
    attest = check_table(data.get("attestation", {}), "attestation", _ATTEST_KEYS, where)
    defaults = ServerConfig()
    pcr = attest.get("container_pcr", defaults.container_pcr)
    if not 0 <= pcr <= 23:
        raise ConfigError(f"attestation.container_pcr{where}: got {pcr}, expected 0..23")
    for key in ("nonce_ttl", "enrollment_ttl", "validity"):
        if key in attest and not 0 < attest[key] < 1e9:
            raise ConfigError(f"attestation.{key}{where}: got {attest[key]}, expected seconds > 0")
    port = server.get("port", defaults.port)
    if not 0 <= port <= 65535:
        raise ConfigError(f"server.port{where}: got {port}, expected 0..65535")
    hostnames = server.get("hostnames", list(defaults.hostnames))
    if not hostnames or not all(isinstance(h, str) and h for h in hostnames):
        raise ConfigError(f"server.hostnames{where} must be a non-empty list of names")
    groups_data = data.get("groups", {})
    if not isinstance(groups_data, dict) or not groups_data:
        raise ConfigError(f"[groups]{where}: configure at least one host group")
    groups = {name: _parse_group(name, body, pcr, where) for name, body in groups_data.items()}
    release_data = data.get("release", [])
    if not isinstance(release_data, list):
        raise ConfigError(f"release{where} must be an array of tables: [[release]]")
    releases = tuple(_parse_release(i, b, groups, where) for i, b in enumerate(release_data))
    auto_admit = admission.get("auto_admit")
    if auto_admit is not None and auto_admit not in groups:
        raise ConfigError(
            f"admission.auto_admit{where}: got {auto_admit!r}, expected a configured group"
            f" {sorted(groups)} (or no auto_admit: every host waits for an operator)"
        )
    anchors = server.get("ek_ca_anchors", [])
    if not all(isinstance(a, str) and _HEX32.fullmatch(a.lower()) for a in anchors):
        raise ConfigError(
            f"server.ek_ca_anchors{where}: got {anchors!r}, expected SHA-256 fingerprints"
            " (64 hex digits) of certificates in the EK CA bundle"
        )
    return ServerConfig(
        state_dir=Path(server.get("state_dir", defaults.state_dir)),
        host=server.get("host", defaults.host),
        port=port,
        hostnames=tuple(hostnames),
        database=server.get("database", ""),
        ek_ca_bundle=Path(server.get("ek_ca_bundle", defaults.ek_ca_bundle)),
        ek_ca_anchors=frozenset(a.lower() for a in anchors),
        container_pcr=pcr,
        nonce_ttl=float(attest.get("nonce_ttl", defaults.nonce_ttl)),
        enrollment_ttl=float(attest.get("enrollment_ttl", defaults.enrollment_ttl)),
        validity=float(attest.get("validity", defaults.validity)),
        max_body=attest.get("max_body", defaults.max_body),
        groups=groups,
        releases=releases,
        auto_admit=auto_admit,
    )


def load_server_config(path: Path) -> ServerConfig:
    try:
        data = read_toml(path, "server config")
    except FileNotFoundError:
        raise ConfigError(f"cannot read server config {path}: no such file") from None
    return parse_server_config(data, source=path)
