"""The scene every campaign runs in: swtpm, a host and its agent, the attestation server holding
an encrypted image's key, and a cleanup that stops what it started (by PID) and unmounts what
is left before anything is removed.

Everything lives under one work directory; only the campaigns' own processes are stopped.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from sqlalchemy import create_engine, select
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool
from tpm2_pytss import ESAPI, TPM2_CAP, TPM2_HC

from tests.faults.proxy import Relay
from tests.integration.conftest import (
    BIN,
    AttestServer,
    Host,
    make_host,
    make_server,
    new_swtpm,
)
from trusthook._devenv.bundle import build_rootfs
from trusthook._devenv.ociimage import Entry, ImageSpec, build_image, busybox_entries, tar_bytes
from trusthook._devenv.serverproc import swtpm_ek_bundle, write_server_config
from trusthook._devenv.swtpm import Swtpm
from trusthook.agent.logstore import LogStore, read_boot_id
from trusthook.agent.tpm import Tpm
from trusthook.common.protocol import OP_ENROLL, call
from trusthook.image.layout import Layout
from trusthook.server.admin import Decision, HostAdmin
from trusthook.server.admission import ek_sha256_of
from trusthook.server.config import load_server_config
from trusthook.server.schema import admissions, audit, enrollments, hosts, nonces
from trusthook.server.store import Store, nonce_hash

GROUP = "lab"
IMAGE_REF = "app"
APP_FILE = "/app/secret.txt"
MNT_DETACH = 2
ENROLL_TIMEOUT = 120.0
NONCE_TTL = 600.0  # a nonce issued before an outage must outlive it


def _cli(*args: str) -> str:
    """``trusthook ARGS`` (no host configuration); its stdout, or an AssertionError."""
    result = subprocess.run(
        [str(BIN / "trusthook"), *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise AssertionError(f"trusthook {' '.join(args)}: {result.stderr.strip()}")
    return result.stdout


# mounts


def _unescape(field: str) -> str:
    return field.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below ``path`` in this process's mount namespace, deepest first."""
    prefix = str(path).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split(" ")
            if len(fields) < 5:
                continue
            point = _unescape(fields[4])
            if point == str(path) or point.startswith(prefix):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount(path: Path) -> None:
    """Unmount ``path`` (a mount this campaign or its shim made); detached if it is busy."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.umount2(os.fsencode(path), 0) == 0:
        return
    if libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"cannot unmount {path}: {os.strerror(err)}")


@contextlib.contextmanager
def tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's size=) at ``path``, unmounted when the block ends."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        check=True,
        capture_output=True,
    )
    try:
        yield path
    finally:
        unmount(path)


def remove_tree(path: Path) -> None:
    """``rm -rf path``, refused while anything is mounted below it."""
    if mounts_under(path):
        raise RuntimeError(f"not removing {path}: mounts remain under it ({mounts_under(path)})")
    shutil.rmtree(path, ignore_errors=True)


# the TPM


def transient_objects(tcti: str) -> list[int]:
    """The handles of the transient objects loaded in the TPM (read while no agent runs)."""
    with ESAPI(tcti) as ectx:
        _, data = ectx.get_capability(TPM2_CAP.HANDLES, TPM2_HC.TRANSIENT_FIRST, 64)
        return [int(h) for h in data.data.handles]


def flush_transient_objects(tcti: str) -> int:
    """Flush every transient object from the TPM, as a resource manager (/dev/tpmrm0) does
    for a process that exits; run only while no agent runs. How many there were."""
    with ESAPI(tcti) as ectx:
        _, data = ectx.get_capability(TPM2_CAP.HANDLES, TPM2_HC.TRANSIENT_FIRST, 64)
        handles = [int(h) for h in data.data.handles]
        for handle in handles:
            ectx.flush_context(ectx.tr_from_tpmpublic(handle))
    return len(handles)


# the database, read directly for the invariants


class Db:
    """Read-only looks into the server's database (schema: trusthook/server/schema.py)."""

    def __init__(self, url: str) -> None:
        self._engine: Engine = create_engine(url, poolclass=NullPool)  # survives a restart

    def close(self) -> None:
        self._engine.dispose()

    def host(self, host_id: str) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            row = conn.execute(select(hosts).where(hosts.c.host_id == host_id)).first()
        return None if row is None else dict(row._mapping)

    def admission(self, ek_sha256: str) -> dict[str, Any] | None:
        with self._engine.connect() as conn:
            row = conn.execute(
                select(admissions).where(admissions.c.ek_sha256 == ek_sha256)
            ).first()
        return None if row is None else dict(row._mapping)

    def audit_rows(self, host_id: str, after_id: int = 0) -> list[dict[str, Any]]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(audit)
                .where(audit.c.host_id == host_id, audit.c.id > after_id)
                .order_by(audit.c.id)
            ).all()
        return [dict(r._mapping) for r in rows]

    def last_audit_id(self) -> int:
        with self._engine.connect() as conn:
            row = conn.execute(select(audit.c.id).order_by(audit.c.id.desc()).limit(1)).first()
        return 0 if row is None else int(row[0])

    def enrollment_ids(self) -> set[str]:
        """The pending enrollments (challenges issued, not yet answered)."""
        with self._engine.connect() as conn:
            return {str(r[0]) for r in conn.execute(select(enrollments.c.enrollment_id))}

    def nonce_hashes(self, host_id: str) -> set[bytes]:
        """The (hashed) nonces the server holds for ``host_id``."""
        with self._engine.connect() as conn:
            rows = conn.execute(select(nonces.c.nonce_hash).where(nonces.c.host_id == host_id))
            return {bytes(r[0]) for r in rows}

    def nonce_used(self, nonce: bytes) -> bool | None:
        """Whether the nonce is recorded as spent; None if the server has no record of it."""
        with self._engine.connect() as conn:
            row = conn.execute(
                select(nonces.c.used).where(nonces.c.nonce_hash == nonce_hash(nonce))
            ).first()
        return None if row is None else bool(row[0])


# the scene


@dataclass
class Rig:
    """An enrolled (or enrollable) host, the server, an encrypted image both know about."""

    work: Path
    host: Host
    server: AttestServer
    layout: Path
    image: str  # its manifest digest
    secret: bytes  # the content of APP_FILE in the image
    rootfs: Path  # busybox, for containers from an ordinary image
    out: Path  # bound into every container at /out: a container that ran leaves a file here
    runc_root: Path  # runc --root: this campaign's containers only
    host_id: str
    database_url: str
    relay: Relay  # the agent reaches the server through it

    @property
    def roots(self) -> Path:
        """Where trusthook-runtime mounts the tmpfs roots of encrypted-image containers."""
        return self.host.config.image_roots

    @property
    def log_store(self) -> LogStore:
        return LogStore(self.host.config.state_dir / "eventlog", read_boot_id())

    def db(self) -> Db:
        return Db(self.database_url)

    def enroll(self, *, reenroll: bool, timeout: float = ENROLL_TIMEOUT) -> dict[str, Any]:
        """Ask the running agent to enroll (as ``trusthook enroll`` does)."""
        params = {
            "server": self.relay.url,
            "server_ca": str(self.server.ca_cert),
            "hostname": "fault-host",
            "note": "",
            "reenroll": reenroll,
        }
        return call(str(self.host.config.socket), OP_ENROLL, timeout=timeout, params=params)

    def client_serial(self) -> str | None:
        """The serial of the client certificate the agent holds, or None."""
        path = self.host.config.state_dir / "attest" / "client.crt"
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
        except FileNotFoundError:
            return None
        return format(cert.serial_number, "x")

    def kill_server(self) -> None:
        """SIGKILL the server process this rig started."""
        self.server.process.stop(signal.SIGKILL)

    def kill_agent(self) -> None:
        """SIGKILL the agent process this rig started."""
        self.host.agent.stop(signal.SIGKILL)


def _encrypted_image(work: Path, server: AttestServer, secret: bytes) -> tuple[Path, str]:
    config = str(server.config_path)
    _cli("server", "keys", "create", "images", "--config", config)
    public = work / "images.pub.pem"
    public.write_text(_cli("server", "keys", "public", "images", "--config", config))
    app = [
        Entry(name="app/", kind=b"5", mode=0o755),
        Entry(name=APP_FILE.lstrip("/"), data=secret, mode=0o644),
    ]
    plain = work / "plain-image"
    build_image(
        plain,
        IMAGE_REF,
        ImageSpec(
            layers=[tar_bytes(busybox_entries()), tar_bytes(app)],
            compression="gzip",
            cmd=("/bin/cat", APP_FILE),
            user="0:0",
        ),
    )
    layout = work / "encrypted-image"
    _cli(
        "image",
        "encrypt",
        f"{plain}:{IMAGE_REF}",
        f"{layout}:{IMAGE_REF}",
        "--recipient",
        str(public),
    )
    remove_tree(plain)
    return layout, Layout.open(layout).resolve(IMAGE_REF).digest


def _admit(tpm: Swtpm, server: AttestServer) -> str:
    """Pre-register the host's EK into GROUP (``trusthook server hosts admit --ek-cert``), so
    its first enrollment goes straight through; the host id."""
    with Tpm(tpm.tcti) as t:
        certificate = x509.load_der_x509_certificate(t.ek_certificate())
    host_id = ek_sha256_of(certificate)
    config = load_server_config(server.config_path)
    store = Store(config.database_url)
    try:
        decision = Decision(by="fault campaign", reason="pre-registered", now=time.time())
        HostAdmin(config, store).admit(
            ek_sha256=host_id,
            group=GROUP,
            attributes={},
            decision=decision,
            certificate=certificate,
        )
    finally:
        store.dispose()
    return host_id


@contextlib.contextmanager
def open_rig(
    work: Path,
    *,
    tpm_template: Path | None = None,
    ek_bundle: Path | None = None,
    database: str = "",
    backend: str = "sqlite",
    enroll: bool = True,
) -> Iterator[Rig]:
    """Start swtpm, the server (its image key, the image's release rule) and the agent, the EK
    pre-admitted; with ``enroll`` the host is enrolled. Everything is stopped afterwards, and
    any mount left under ``work`` is unmounted (the caller reports it: ``mounts_under``)."""
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        state = work / "tpm"
        if tpm_template is not None:
            shutil.copytree(tpm_template, state)
        tpm = new_swtpm(state)
        tpm.start()
        stack.callback(tpm.stop)
        bundle = ek_bundle or swtpm_ek_bundle(work / "ek-ca.pem")
        server = make_server(work / "server", bundle, database, backend)
        secret = b"fault campaign secret " + uuid.uuid4().hex.encode()
        layout, image = _encrypted_image(work, server, secret)
        write_server_config(
            server.config_path,
            state_dir=server.process.config.state_dir,
            port=server.process.config.port,
            ek_ca_bundle=bundle,
            database=database,
            releases=[(image, [GROUP], ["any"])],
            nonce_ttl=NONCE_TTL,
        )
        server.process.start()
        stack.callback(server.process.stop)

        def kill_server() -> None:
            server.process.stop(signal.SIGKILL)

        relay = stack.enter_context(Relay(server.process.config.port, kill_server))
        host_id = _admit(tpm, server)
        (work / "host").mkdir(exist_ok=True)
        host = make_host(tpm, work / "host")
        policy = host.config.state_dir / "image-policy.toml"
        policy.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        policy.write_text(f'mode = "enforce"\n[[image]]\nmanifest = "{image}"\n')
        rootfs = build_rootfs(work / "busybox" / "rootfs")
        (rootfs / "out").mkdir(exist_ok=True)  # the mount point, made once, not by each runc
        out = work / "out"
        out.mkdir()
        runc_root = work / "runc"
        runc_root.mkdir(mode=0o700)
        stack.callback(_unmount_left, work)
        host.agent.start()
        stack.callback(host.agent.stop)
        rig = Rig(
            work=work,
            host=host,
            server=server,
            layout=layout,
            image=image,
            secret=secret,
            rootfs=rootfs,
            out=out,
            runc_root=runc_root,
            host_id=host_id,
            database_url=load_server_config(server.config_path).database_url,
            relay=relay,
        )
        if enroll:
            rig.enroll(reenroll=False)
        yield rig


def _unmount_left(work: Path) -> None:
    for point in mounts_under(work):
        with contextlib.suppress(OSError):
            unmount(point)
