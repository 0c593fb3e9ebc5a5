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
from trusthook.errors import LogDivergedError, StateError
from trusthook.measure.backend import select_hasher
from trusthook.measure.native import DEFAULT_CACHE_ENTRIES
from trusthook.startpath.bundle import own_hook_entry

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
