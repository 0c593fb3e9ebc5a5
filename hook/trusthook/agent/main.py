"""Start the agent: TPM, writer lock, log recovery, socket; stop cleanly on SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import stat
import threading
from pathlib import Path
from types import FrameType

from trusthook.agent.attester import Attester
from trusthook.agent.bundles import own_hook_entry, resolve
from trusthook.agent.imagepolicy import load_policy
from trusthook.agent.launch import EncryptedLaunch
from trusthook.agent.listener import AgentServer
from trusthook.agent.logstore import LogStore, read_boot_id
from trusthook.agent.metrics import AgentMetrics, Textfile
from trusthook.agent.service import AgentService
from trusthook.agent.tpm import RELEASE_SECRET_SIZE, Tpm
from trusthook.agent.writer import MeasuredLog
from trusthook.common.config import Config, Mode
from trusthook.common.files import write_atomic
from trusthook.errors import ConfigError, LogDivergedError, RuntimeShimError, StateError
from trusthook.measure.backend import select_hasher
from trusthook.measure.native import DEFAULT_CACHE_ENTRIES

log = logging.getLogger(__name__)


def _notify_systemd(state: str) -> None:
    """sd_notify(3) for Type=notify units; a no-op outside systemd."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(state.encode(), address)


def release_secret(path: Path) -> bytes:
    """The agent's release-key secret (docs/attestation.md, "The release key"): random bytes
    made on first start, readable by the agent's user only."""
    try:
        secret = path.read_bytes()
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        secret = secrets.token_bytes(RELEASE_SECRET_SIZE)
        write_atomic(path, secret, 0o600)
        return secret
    except OSError as e:
        raise StateError(f"cannot read the release-key secret {path}: {e.strerror}") from e
    if stat.S_IMODE(mode) & 0o077:
        raise StateError(
            f"{path} has mode {stat.S_IMODE(mode):04o}, expected 0600: others may have read the"
            " release-key secret; remove it (a new one makes a new release key)"
        )
    if len(secret) != RELEASE_SECRET_SIZE:
        raise StateError(
            f"{path} holds {len(secret)} bytes, expected {RELEASE_SECRET_SIZE}; remove it"
            " (a new one makes a new release key)"
        )
    return secret


SHIM_FILE_SUFFIX = ".runtime"  # beside the socket: native/trusthook_runtime.c reads it


def shim_file_path(config: Config) -> Path:
    return config.socket.with_name(config.socket.name + SHIM_FILE_SUFFIX)


def shim_file(config: Config) -> bytes:
    """What ``trusthook-runtime`` reads beside the socket (docs/api.md §1.1): the real
    runtime's absolute path (``[runtime] path`` looked up in the agent's PATH; as configured if
    it is not found, which the shim then refuses), the tmpfs roots' directory, and the seconds
    to wait for a ``prepare`` answer (a restore attests and asks the server: three exchanges)."""
    try:
        runtime = resolve(config.runtime, "runtime")
    except RuntimeShimError as e:
        log.warning("%s: trusthook-runtime will refuse every command", e)
        runtime = config.runtime
    timeout = max(config.hook_timeout, 3 * config.attest_timeout)
    lines = [("version", "1"), ("runtime", runtime), ("roots", str(config.image_roots))]
    lines.append(("timeout", f"{timeout:g}"))
    for key, value in lines:
        if "\n" in value or "\0" in value or not value:
            raise ConfigError(f"the {key} {value!r} cannot be written for trusthook-runtime")
    return "".join(f"{key} {value}\n" for key, value in lines).encode()


def _start_threads(
    server: AgentServer,
    attester: Attester,
    metrics: AgentMetrics,
    textfile: Path | None,
    stop: threading.Event,
) -> list[threading.Thread]:
    """The socket's, the attester's and (``[agent] metrics_textfile``) the metrics textfile
    writer's threads, started."""
    threads = [
        threading.Thread(target=server.serve_forever, name="agent-socket"),
        threading.Thread(target=attester.run, args=(stop,), name="attester"),
    ]
    if textfile is not None:
        writer = Textfile(textfile, metrics)
        threads.append(threading.Thread(target=writer.run, args=(stop,), name="metrics"))
    for thread in threads:
        thread.start()
    return threads


def run_agent(config: Config) -> None:
    """Serve until SIGTERM or SIGINT."""
    # one digest cache for the agent's lifetime, used by every measurement
    hasher = select_hasher(
        config.hasher, threads=config.hash_threads or None, cache_entries=DEFAULT_CACHE_ENTRIES
    )
    boot_id = read_boot_id()
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    store = LogStore(config.state_dir / "eventlog", boot_id)
    lock_fd = store.lock()
    try:
        secret = release_secret(config.state_dir / "release-key.secret")
        with Tpm(config.tcti, release_secret=secret) as tpm:
            stale = tpm.flush_stale_objects()  # the log lock is ours: so is the TPM
            if stale:
                log.warning("flushed %d transient TPM objects a previous agent left", stale)
            measured = MeasuredLog(store=store, tpm=tpm, pcr=config.pcr)
            try:
                for note in measured.recover():
                    log.warning("event log repaired: %s", note)
            except LogDivergedError as e:  # serve on: attestation shows the break, launches fail
                log.error("event log diverges from PCR %d: %s", config.pcr, e)
            metrics = AgentMetrics(digest_cache=hasher.cache_stats)
            attester = Attester(
                log=measured,
                state_dir=config.state_dir,
                boot_id=boot_id,
                interval=config.attest_interval,
                metrics=metrics,
                timeout=config.attest_timeout,
                keep_alive=config.attest_keep_alive,
            )
            launch = EncryptedLaunch(
                log=measured,
                attester=attester,
                policy=lambda: load_policy(config.image_policy),
                roots_dir=config.image_roots,
                measure_rootfs=hasher.measure_rootfs,
                own_hook=own_hook_entry(config),
            )
            service = AgentService(
                log=measured,
                attester=attester,
                launch=launch,
                boot_id=boot_id,
                measure_rootfs=hasher.measure_rootfs,
                metrics=metrics,
                audit=config.mode is Mode.AUDIT,
            )
            server = AgentServer(
                config.socket, service, metrics=metrics, io_timeout=config.hook_timeout
            )
            config.image_roots.mkdir(mode=0o700, parents=True, exist_ok=True)  # the shim's roots
            write_atomic(shim_file_path(config), shim_file(config), 0o644)  # kept at stop
            stop = threading.Event()

            def on_signal(signum: int, _frame: FrameType | None) -> None:
                log.info("signal %d: stopping", signum)
                stop.set()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
            threads = _start_threads(server, attester, metrics, config.metrics_textfile, stop)
            log.info(
                "listening on %s (PCR %d, log %s, %s hasher)",
                config.socket,
                config.pcr,
                store.path,
                hasher.backend,
            )
            _notify_systemd("READY=1")
            try:
                stop.wait()
            finally:
                _notify_systemd("STOPPING=1")
                server.shutdown()
                metrics.changed.set()  # ends the textfile writer's wait
                for thread in threads:
                    thread.join()
                server.server_close()
                config.socket.unlink(missing_ok=True)
    finally:
        os.close(lock_fd)
