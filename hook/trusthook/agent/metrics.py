"""The node agent's Prometheus metrics (docs/metrics.md): container launches, the hook's round
trip, attestations and why they failed, TPM errors, key-release requests, and the agent's own
health (psutil). ``Textfile`` writes them for node_exporter's textfile collector
(``[agent] metrics_textfile``); ``trusthook status`` shows the health (``AgentHealth``).

Counters are this agent process's own: they start at 0 when it starts.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from pathlib import Path

import psutil

from trusthook.common.clock import iso_from_timestamp
from trusthook.common.files import write_atomic
from trusthook.common.messages import AgentHealth, HostStatus
from trusthook.common.metrics import Registry
from trusthook.common.protocol import OP_ATTEST, OP_ENROLL, OP_HOOK, OP_SNAPSHOT, OP_STATUS
from trusthook.errors import (
    ServerRefusedError,
    ServerUnavailableError,
    TPMError,
    TrusthookError,
)
from trusthook.measure.native import CacheStats

log = logging.getLogger(__name__)
# seconds: a hook answered from the digest cache takes milliseconds, an encrypted launch with a
# key release over the network and a hardware TPM seconds; HOOK_TIMEOUT-like bounds at the top
HOOK_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
LAUNCH_RESULTS = ("measured", "unmeasured", "refused")
ATTESTATION_RESULTS = ("trusted", "untrusted", "failed")
RELEASE_RESULTS = ("released", "refused", "failed")
OPS = (OP_HOOK, OP_SNAPSHOT, OP_ENROLL, OP_ATTEST, OP_STATUS)
_CHECK = re.compile(r"[a-z][a-z0-9_]{0,63}")  # the server's check names: a label, bounded
TEXTFILE_MODE = 0o644  # node_exporter runs as another user
MIN_INTERVAL = 1.0  # seconds: the textfile is rewritten at most this often
REFRESH = 10.0  # seconds: and at least this often (health moves without events; mtime = alive)


def failure_check(error: TrusthookError) -> str:
    """The ``check`` label of an attestation that got no verdict."""
    if isinstance(error, ServerUnavailableError):
        return "server_unavailable"
    if isinstance(error, ServerRefusedError):
        return "server_refused"
    if isinstance(error, TPMError):
        return "tpm"
    return "agent"


def check_label(check: str) -> str:
    """A check name the server sent, as a label value: "other" unless it looks like one."""
    return check if _CHECK.fullmatch(check) else "other"


class AgentMetrics:
    """One agent's metrics; thread-safe. ``changed`` is set by every count (``Textfile``
    waits on it)."""

    def __init__(self, *, digest_cache: Callable[[], CacheStats | None] | None = None) -> None:
        """``digest_cache``: the hasher's ``cache_stats``, read with the process's health."""
        self.changed = threading.Event()
        self._process = psutil.Process()
        self._digest_cache = digest_cache
        r = self.registry = Registry(on_change=self.changed.set)
        self._launches = r.counter(
            "trusthook_agent_launches_total",
            "Container launches the hook asked about: measured (recorded and extended),"
            " unmeasured (audit mode let it start) or refused (it did not start).",
            ("result",),
        )
        for result in LAUNCH_RESULTS:
            self._launches.declare(result=result)
        self._hook = r.histogram(
            "trusthook_agent_hook_duration_seconds",
            "Round trip of a hook request: from accepting its connection to writing the answer.",
            buckets=HOOK_BUCKETS,
        )
        self._attestations = r.counter(
            "trusthook_agent_attestations_total",
            "Attestation attempts of this agent, periodic and asked for: the server's verdict,"
            " or failed (no verdict).",
            ("result",),
        )
        for result in ATTESTATION_RESULTS:
            self._attestations.declare(result=result)
        self._failures = r.counter(
            "trusthook_agent_attestation_failures_total",
            "Why attestations did not pass: the check of each reason of an untrusted verdict,"
            " or for an attempt without one server_unavailable, server_refused, tpm or agent.",
            ("check",),
        )
        self._trusted = r.gauge(
            "trusthook_agent_trusted",
            "1 if the last verdict said this host is trusted, else 0; absent until one came.",
        )
        self._forked = r.gauge(
            "trusthook_agent_server_log_rewritten",
            "1 if the last check found the server's audit log rewritten or forked, 0 if it was"
            " consistent; absent until checked.",
        )
        for gauge in (self._trusted, self._forked):
            gauge.replace(())  # no series until there is something to say
        self._tpm_errors = r.counter(
            "trusthook_agent_tpm_errors_total",
            "Requests and periodic attestations that failed with a TPM error, by operation.",
            ("op",),
        )
        self._releases = r.counter(
            "trusthook_agent_release_requests_total",
            "Key-release requests to the server for encrypted images: released, refused by"
            " the server, or failed (no answer, a TPM error).",
            ("result",),
        )
        for result in RELEASE_RESULTS:
            self._releases.declare(result=result)
        self._rss = r.gauge(
            "trusthook_agent_resident_memory_bytes", "Resident memory of the agent process."
        )
        self._cpu = r.counter(
            "trusthook_agent_cpu_seconds_total", "User and system CPU time of the agent process."
        )
        self._fds = r.gauge(
            "trusthook_agent_open_fds", "File descriptors the agent process has open."
        )
        self._threads = r.gauge("trusthook_agent_threads", "Threads of the agent process.")
        self._started = r.gauge(
            "trusthook_agent_start_time_seconds", "When the agent process started, Unix time."
        )
        self._cache_lookups = r.counter(
            "trusthook_agent_digest_cache_lookups_total",
            "Regular files the native hasher looked up in its digest cache: hit (not read) or"
            " miss (hashed).",
            ("result",),
        )
        self._cache_entries = r.gauge(
            "trusthook_agent_digest_cache_entries",
            "File digests the digest cache holds now; absent without a cache.",
        )
        self._cache_entries.replace(())

    # counted by the listener, the service and the attester

    def launch(self, result: str) -> None:
        self._launches.inc(result=result)

    def hook_answered(self, seconds: float) -> None:
        self._hook.observe(seconds)

    def attested(self, verdict: HostStatus, log_rewritten: bool | None) -> None:
        """A verdict; ``log_rewritten``: what the audit-log check found (None: not checked)."""
        self._attestations.inc(result="trusted" if verdict.trusted else "untrusted")
        for reason in verdict.reasons:
            self._failures.inc(check=check_label(reason.check))
        self._trusted.set(1 if verdict.trusted else 0)
        if log_rewritten is not None:
            self._forked.set(1 if log_rewritten else 0)

    def attest_failed(self, error: TrusthookError) -> None:
        self._attestations.inc(result="failed")
        self._failures.inc(check=failure_check(error))

    def tpm_error(self, op: object) -> None:
        self._tpm_errors.inc(op=op if isinstance(op, str) and op in OPS else "other")

    def release(self, result: str) -> None:
        self._releases.inc(result=result)

    # the process

    def health(self) -> AgentHealth | None:
        """The agent process's health now, also set into its gauges; None if psutil cannot
        read it (logged)."""
        try:
            with self._process.oneshot():
                rss = self._process.memory_info().rss
                times = self._process.cpu_times()
                fds = self._process.num_fds()
                threads = self._process.num_threads()
                started = self._process.create_time()
        except psutil.Error as e:
            log.warning("cannot read the agent's own health: %s", e)
            return None
        cpu = times.user + times.system
        self._rss.set(rss)
        self._cpu.set_total(max(cpu, self._cpu.value()))  # rounding may not make it go down
        self._fds.set(fds)
        self._threads.set(threads)
        self._started.set(started)
        cache = self._digest_cache() if self._digest_cache is not None else None
        if cache is not None:
            self._cache_lookups.set_total(cache.hits, result="hit")
            self._cache_lookups.set_total(cache.misses, result="miss")
            self._cache_entries.set(cache.entries)
        return AgentHealth(
            pid=self._process.pid,
            started_at=iso_from_timestamp(started),
            rss_bytes=rss,
            cpu_ms=round(cpu * 1000),
            open_fds=fds,
            threads=threads,
        )


class Textfile:
    """Keeps the agent's metrics in ``path`` for node_exporter's textfile collector: written
    atomically (a temporary file renamed over it, mode 0644), at most once a second after a
    change and at least every ``REFRESH`` seconds; removed when the agent stops."""

    def __init__(
        self,
        path: Path,
        metrics: AgentMetrics,
        *,
        min_interval: float = MIN_INTERVAL,
        refresh: float = REFRESH,
    ) -> None:
        self._path = path
        self._metrics = metrics
        self._min_interval = min_interval
        self._refresh = refresh
        self._failing: str | None = None

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` (set ``metrics.changed`` after it to end a wait at once)."""
        changed = self._metrics.changed
        while not stop.is_set():
            self._metrics.health()
            changed.clear()  # a count from here on is in this write or wakes the next one
            self.write()
            if stop.wait(self._min_interval):
                break
            changed.wait(self._refresh)
        try:
            self._path.unlink(missing_ok=True)
        except OSError as e:
            log.warning("cannot remove the metrics textfile %s: %s", self._path, e.strerror)

    def write(self) -> None:
        """Write the file now; a failure is logged once, until a write succeeds again."""
        try:
            self._path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            write_atomic(self._path, self._metrics.registry.body(), TEXTFILE_MODE)
        except OSError as e:
            message = f"{e.strerror or e}"
            if message != self._failing:
                log.warning("cannot write the metrics textfile %s: %s", self._path, message)
            self._failing = message
            return
        if self._failing is not None:
            log.info("writing the metrics textfile %s again", self._path)
            self._failing = None
