"""``trusthook doctor``: check a host the way a support engineer would, one ``Check`` per line
(docs/deploy.md lists them). The checks run in order and later ones use what earlier ones
found: the PCR, the log, the enrollment and the server are read through the agent, so while
the agent does not answer they are skipped, each saying why, and one broken part gives one
failing line. Nothing here changes the host: the agent is asked only ``status`` and
``snapshot``, the server only ``GET /v1/health``.
"""

from __future__ import annotations

import http.client
import os
import shutil
import socket
import ssl
import stat
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

from trusthook.common.clock import iso, utc_now
from trusthook.common.config import Config
from trusthook.common.eventlog import verify_against_pcr
from trusthook.common.messages import SnapshotResult, StatusResult
from trusthook.common.protocol import OP_SNAPSHOT, OP_STATUS, call
from trusthook.common.wire import check_socket_directory
from trusthook.errors import (
    AgentUnavailableError,
    ConfigError,
    EventLogError,
    NativeUnavailableError,
    TrusthookError,
)
from trusthook.hostsetup.choices import Engine
from trusthook.hostsetup.configure import EngineFile, engine_files, read_text
from trusthook.hostsetup.engines import HooksJson, Registration
from trusthook.hostsetup.probes import (
    TIMEOUT,
    device_problem,
    expiry_note,
    health,
    kernel_clock_synced,
    program_problem,
    unsafe,
)
from trusthook.hostsetup.report import Check, Report, Status

CLOCK_FLOOR = datetime(2025, 1, 1, tzinfo=UTC)  # a clock before this trusthook is wrong
CLOCK_WARN = 5.0  # seconds of difference from the server's clock worth a mention
CLOCK_FAIL = 60.0  # seconds past which nonces and certificates go wrong
CERT_WARN_DAYS = 14
ENGINE_BINARY = {
    Engine.DOCKER: "dockerd",
    Engine.CONTAINERD: "containerd",
    Engine.PODMAN: "podman",
    Engine.CRIO: "crio",
}
START_AGENT = (
    "start the agent: systemctl start trusthook-agent (journalctl -u trusthook-agent says why"
    " it stopped)"
)


def _ok(name: str, detail: str) -> Check:
    return Check(name=name, status=Status.OK, detail=detail)


def _warn(name: str, detail: str, fix: str) -> Check:
    return Check(name=name, status=Status.WARN, detail=detail, fix=fix)


def _fail(name: str, detail: str, fix: str) -> Check:
    return Check(name=name, status=Status.FAIL, detail=detail, fix=fix)


def _skip(name: str, why: str) -> Check:
    return Check(name=name, status=Status.SKIP, detail=f"skipped: {why}")


class Doctor:
    """The checks of one host: its ``config``, the engine files to look at (``files``), and
    what the checks read from the world, replaceable for tests."""

    def __init__(
        self,
        config: Config,
        *,
        files: Mapping[Engine, list[EngineFile]] | None = None,
        which: Callable[[str], str | None] = shutil.which,
        now: Callable[[], datetime] = utc_now,
        clock_synced: Callable[[], bool | None] = kernel_clock_synced,
    ) -> None:
        self.config = config
        self.files = files if files is not None else {e: engine_files(e) for e in Engine}
        self._which, self._now, self._clock_synced = which, now, clock_synced
        self._tpm_ok = False
        self._status: StatusResult | None = None
        self._agent_down = "agent not running"
        self._snapshot: SnapshotResult | None = None
        self._server_date: datetime | None = None

    def run(self) -> Report:
        checks = (
            ("tpm", self.tpm),
            ("agent", self.agent),
            ("agent-socket", self.agent_socket),
            ("pcr-bank", self.pcr_bank),
            ("pcr-log", self.pcr_log),
            ("hook", self.hook),
            ("shim", self.shim),
            ("engines", self.engines),
            ("native-hasher", self.native_hasher),
            ("enrollment", self.enrollment),
            ("server", self.server),
            ("clock", self.clock),
        )
        results = []
        for name, check in checks:
            try:
                results.append(check(name))
            except TrusthookError as e:
                results.append(_fail(name, str(e), "fix what the message names"))
        return Report(checks=tuple(results))

    # the TPM

    def tpm(self, name: str) -> Check:
        kind, _, conf = self.config.tcti.partition(":")
        if kind == "device":
            result = self._tpm_device(name, Path(conf or "/dev/tpm0"))
        elif kind in ("swtpm", "mssim"):
            result = self._tpm_simulator(name, kind, conf)
        else:
            result = _warn(
                name,
                f"TCTI {self.config.tcti!r}: doctor cannot check it",
                "none needed if it works",
            )
        self._tpm_ok = result.status is not Status.FAIL
        return result

    def _tpm_device(self, name: str, path: Path) -> Check:
        problem = device_problem(path)
        if problem is not None:
            return _fail(name, *problem)
        if not path.name.startswith("tpmrm"):
            return _warn(
                name,
                f"{path} without the kernel resource manager: no other program may use the TPM",
                f'set [tpm] tcti = "device:{path.with_name(path.name.replace("tpm", "tpmrm"))}"',
            )
        return _ok(name, f"{path} (the kernel's TPM resource manager)")

    def _tpm_simulator(self, name: str, kind: str, conf: str) -> Check:
        options = dict(o.partition("=")[::2] for o in conf.split(",") if o)
        host, port = options.get("host", "localhost"), int(options.get("port", "2321"))
        try:
            socket.create_connection((host, port), timeout=TIMEOUT).close()
        except OSError as e:
            return _fail(
                name,
                f"no TPM: nothing answers for {kind} at {host}:{port} ({e.strerror or e})",
                f"start the {kind} simulator, or set [tpm] tcti to the host's TPM",
            )
        return _warn(
            name,
            f"a software TPM ({kind} at {host}:{port}): for development only",
            'a production host uses its TPM: [tpm] tcti = "device:/dev/tpmrm0"',
        )

    # the agent

    def agent(self, name: str) -> Check:
        socket_path = str(self.config.socket)
        if not os.path.lexists(socket_path):
            return _fail(
                name, f"no agent socket at {socket_path}: the agent is not running", START_AGENT
            )
        try:
            raw = call(socket_path, OP_STATUS, timeout=TIMEOUT)
        except AgentUnavailableError as e:
            return _fail(name, str(e), START_AGENT)
        except TrusthookError as e:
            self._agent_down = "the agent does not answer"
            return _fail(name, str(e), "see the agent's log: journalctl -u trusthook-agent")
        self._status = StatusResult.from_json(raw)
        return _ok(name, f"answers on {socket_path}")

    def agent_socket(self, name: str) -> Check:
        path = self.config.socket
        try:
            st = path.lstat()
        except FileNotFoundError:
            return _skip(name, f"no socket at {path} ({self._agent_down})")
        if not stat.S_ISSOCK(st.st_mode):
            return _fail(name, f"{path} is not a socket", "remove it and restart the agent")
        problems = []
        try:
            check_socket_directory(str(path))
        except AgentUnavailableError as e:
            problems.append(str(e))
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid != 0:
            problems.append(f"socket {path} is owned by uid {st.st_uid}, expected root")
        if mode & 0o077:
            problems.append(f"socket {path} has mode {mode:04o}, expected 0600 (root only)")
        if problems:
            return _fail(
                name,
                "; ".join(problems),
                "restart the agent: it makes the socket 0600 in a directory only root can"
                " write (RuntimeDirectoryMode=0700 in trusthook-agent.service)",
            )
        return _ok(name, f"{path}: mode 0600, root's, in a directory only root can write")

    def pcr_bank(self, name: str) -> Check:
        pcr = self.config.pcr
        if not self._tpm_ok:
            return _skip(name, "no usable TPM")
        if self._status is None:
            return _skip(name, self._agent_down)
        try:
            snapshot = SnapshotResult.from_json(
                call(str(self.config.socket), OP_SNAPSHOT, timeout=TIMEOUT)
            )
        except TrusthookError as e:
            return _fail(
                name,
                f"the agent cannot read PCR {pcr} of the SHA-256 bank: {e}",
                "allocate the SHA-256 bank (tpm2_getcap pcrs; tpm2_pcrallocate) and see the"
                " agent's log",
            )
        self._snapshot = snapshot
        return _ok(name, f"PCR {pcr} of the SHA-256 bank reads {snapshot.pcr_value.hex()[:16]}…")

    def pcr_log(self, name: str) -> Check:
        snap = self._snapshot
        if snap is None:
            return _skip(name, "the PCR could not be read")
        try:
            verify_against_pcr(snap.records, snap.pcr, snap.pcr_value)
        except EventLogError as e:
            return _fail(
                name,
                f"the event log does not match PCR {snap.pcr}: {e}",
                "'trusthook log verify' names the first bad record; the server holds this host"
                " untrusted until an operator clears it (docs/eventlog.md)",
            )
        count = len(snap.records)
        return _ok(name, f"{count} record{'s' if count != 1 else ''} replay to PCR {snap.pcr}")

    # what the engines run

    def hook(self, name: str) -> Check:
        from trusthook.agent.bundles import hook_entry, own_hook_entry  # noqa: PLC0415

        problems = []
        try:
            entry = own_hook_entry(self.config)
        except TrusthookError as e:
            problems.append(f"the hook the shim adds: {e}")
            entry = hook_entry(self.config, self.config.hook_path or Path("trusthook-hook"))
        else:
            problems += filter(None, [unsafe(Path(entry["path"]))])
        hooks = self._registrations(Engine.PODMAN)
        for path, found in hooks:
            wanted = tuple(entry["args"])
            problem = program_problem(found.program, f"the hook {path} runs")
            if problem:
                problems.append(problem)
            elif found.args != wanted:
                problems.append(
                    f"{path} runs the hook with {list(found.args)}, expected {list(wanted)}"
                    " (the agent refuses another socket or mode)"
                )
        if problems:
            return _fail(
                name,
                "; ".join(problems),
                "install trusthook (its trusthook-hook), or set [runtime] hook; then run"
                " 'trusthook runtime configure' again for podman and CRI-O",
            )
        where = f"; {hooks[0][0]} runs it" if hooks else ""
        return _ok(name, f"{entry['path']}{where}")

    def shim(self, name: str) -> Check:
        from trusthook.agent.bundles import resolve  # noqa: PLC0415

        problems, found = [], []
        for engine in (Engine.DOCKER, Engine.CONTAINERD, Engine.CRIO):
            for path, registration in self._registrations(engine):
                problem = program_problem(registration.program, f"the runtime {path} names")
                if problem:
                    problems.append(problem)
                else:
                    found.append(f"{engine.value} runs {registration.program}")
        try:
            runtime = resolve(self.config.runtime, "the real runtime ([runtime] path)")
        except TrusthookError as e:
            problems.append(str(e))
            runtime = self.config.runtime
        if problems:
            return _fail(
                name,
                "; ".join(problems),
                "install trusthook (its trusthook-runtime) and the real runtime, then run"
                " 'trusthook runtime configure' again",
            )
        engines = "; ".join(found) if found else "no engine runs the shim"
        return _ok(name, f"{engines}; it execs {runtime}")

    def _registrations(self, engine: Engine) -> list[tuple[Path, Registration]]:
        """What ``engine``'s files register for trusthook: the hooks.d file for podman, the
        engine's own file for the others. A file that cannot be read counts as none (the
        engines check names it)."""
        found = []
        for f in self.files.get(engine, []):
            if isinstance(f.format, HooksJson) != (engine is Engine.PODMAN):
                continue
            try:
                text = read_text(f.path)
                registration = None if text is None else f.format.registration(text)
            except TrusthookError:
                continue
            if registration is not None:
                found.append((f.path, registration))
        return found

    def _unreadable(self) -> list[str]:
        """Why engine files that exist cannot be read."""
        problems = []
        for f in {f.path: f for files in self.files.values() for f in files}.values():
            try:
                text = read_text(f.path)
                if text is not None:
                    f.format.registration(text)
            except TrusthookError as e:
                problems.append(str(e))
        return problems

    def engines(self, name: str) -> Check:
        configured, missing = [], []
        for engine in Engine:
            registered = self._registrations(engine)
            if registered:
                default = registered[0][1].default
                configured.append(engine.value + (" (trusthook is the default)" if default else ""))
            elif self._which(ENGINE_BINARY[engine]):
                missing.append(engine.value)
        fix = "trusthook runtime configure --runtime " + (missing[0] if missing else "ENGINE")
        unreadable = self._unreadable()
        if unreadable:
            return _fail(name, "; ".join(unreadable), "fix the file; the engine cannot read it")
        if not configured:
            return _fail(
                name,
                "no container engine is configured for trusthook: containers start unmeasured"
                + (f" (installed: {', '.join(missing)})" if missing else ""),
                fix,
            )
        detail = "configured: " + ", ".join(configured)
        if missing:
            return _warn(name, f"{detail}; installed but not configured: {', '.join(missing)}", fix)
        return _ok(name, detail)

    def native_hasher(self, name: str) -> Check:
        from trusthook.measure.native import NativeHasher  # noqa: PLC0415 - loads the .so

        if self.config.hasher == "python":
            return _ok(name, "the Python reference hasher is configured ([agent] hasher)")
        try:
            NativeHasher(threads=1)
        except NativeUnavailableError as e:
            fix = "reinstall trusthook with a C compiler, libssl-dev and cffi present"
            if self.config.hasher == "native":
                return _fail(name, f"{e}; the agent refuses to start ([agent] hasher)", fix)
            return _warn(name, f"{e}; the agent hashes with the slower Python reference", fix)
        return _ok(name, "the native hasher loads")

    # the attestation server

    def enrollment(self, name: str) -> Check:
        status = self._status
        if status is None:
            return _skip(name, self._agent_down)
        if status.enrollment is None:
            return _fail(
                name,
                "this host is not enrolled with an attestation server",
                "trusthook enroll --server URL --server-ca FILE",
            )
        e, attempt = status.enrollment, status.attempt
        detail = f"with {e.server} as host {e.host_id[:16]}… (group {e.group})"
        verdict = None if attempt is None else attempt.last_verdict
        if attempt is None or verdict is None:
            return _warn(name, f"{detail}; not attested yet", "trusthook attest")
        if attempt.error:
            return _warn(
                name, f"{detail}; the last attestation failed: {attempt.error}", "trusthook status"
            )
        if not verdict.trusted:
            return _warn(name, f"{detail}; the server holds it untrusted", "trusthook status")
        return _ok(name, f"{detail}; trusted since {verdict.since}")

    def server(self, name: str) -> Check:
        status = self._status
        if status is None:
            return _skip(name, self._agent_down)
        if status.enrollment is None:
            return _skip(name, "not enrolled")
        return self._server_at(name, status.enrollment.server)

    def _server_at(self, name: str, url: str) -> Check:
        from trusthook.agent.serverclient import tls_context  # noqa: PLC0415

        files = self.config.state_dir / "attest"  # agent.attester keeps them there
        try:
            context = tls_context(
                files / "server-ca.pem", files / "client.crt", files / "client.key"
            )
        except ConfigError as e:
            return _fail(name, str(e), "enroll again: trusthook enroll --reenroll …")
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port or 443
        try:
            code, date, not_after = health(host, port, context)
        except ssl.SSLCertVerificationError as e:
            return _fail(
                name,
                f"{url}: its certificate does not verify against {files / 'server-ca.pem'}"
                f" ({e.verify_message}{expiry_note(host, port, e.verify_code)})",
                "renew the server's certificate (on the server: remove tls/server.crt and"
                " tls/server.key in its state_dir, run 'trusthook server init', restart it);"
                " if it has not expired, fix this host's clock",
            )
        except (OSError, http.client.HTTPException) as e:
            return _fail(
                name,
                f"cannot reach {url}: {e or type(e).__name__}",
                "check that the server runs and that this host reaches it (DNS, firewall)",
            )
        if code != 200:
            return _fail(name, f"{url}/v1/health answered HTTP {code}", "see the server's log")
        self._server_date = date
        detail = f"{url} answers; its certificate is valid until {iso(not_after)}"
        left = (not_after - self._now()).total_seconds() / 86400
        if left < CERT_WARN_DAYS:
            return _warn(name, f"{detail} ({left:.0f} days)", "renew the server's certificate")
        return _ok(name, detail)

    def clock(self, name: str) -> Check:
        synced = None if self._server_date is not None else self._clock_synced()
        return judge_clock(name, self._now(), self._server_date, synced)


def judge_clock(name: str, now: datetime, server: datetime | None, synced: bool | None) -> Check:
    """The clock check: ``now`` against a floor no right clock is below, against the
    attestation server's clock (``server``, from a verified answer) when there is one, else
    what the kernel says of its synchronisation (``synced``; None: unknown)."""
    fix = "set the clock and keep it synchronised (chrony or systemd-timesyncd)"
    if now < CLOCK_FLOOR:
        return _fail(name, f"the clock says {iso(now)}, before {CLOCK_FLOOR.date()}", fix)
    if server is not None:
        skew = (now - server).total_seconds()
        detail = f"{iso(now)}: {abs(skew):.0f}s from the attestation server's clock"
        if abs(skew) > CLOCK_FAIL:
            return _fail(name, detail, fix)
        if abs(skew) > CLOCK_WARN:
            return _warn(name, detail, fix)
        return _ok(name, detail)
    if synced is False:
        return _warn(name, f"{iso(now)}: the kernel says the clock is not synchronised", fix)
    return _ok(name, iso(now) + ("; synchronised" if synced else ""))
