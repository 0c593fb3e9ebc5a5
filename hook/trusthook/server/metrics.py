"""The attestation server's Prometheus metrics (docs/metrics.md), served at ``GET /metrics`` on
the server's own mutual-TLS port to operator certificates only.

Counters and the latency histogram are this process's own (each replica counts the requests it
answered; sum them in PromQL). The gauges are read from the database when scraped, so every
replica reports the same hosts and the same audit log. ``host_state`` is how a host's trust
status (``status.status_of``) sorts it into trusted, untrusted or stale.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trusthook.common.metrics import Registry
from trusthook.errors import AttestationError

if TYPE_CHECKING:
    from trusthook.server import api
    from trusthook.server.store import Store

HOST_STATES = ("trusted", "untrusted", "stale")
ATTESTATION_RESULTS = ("trusted", "untrusted")
OTHER_ROUTE = "other"  # no route matched (404), or refused before routing (413)


@dataclass(frozen=True, slots=True, kw_only=True)
class HostCount:
    """How many hosts of one group are in one combination of what their status depends on
    (``Store.metrics_snapshot``)."""

    group: str
    admitted: bool
    trusted: bool  # the stored verdict
    expired: bool  # valid_until has passed
    attested: bool  # at least once since enrollment
    hosts: int


def host_state(count: HostCount) -> str:
    """``trusted``, ``untrusted`` or ``stale``, as ``status_of`` would say of such a host: not
    admitted is untrusted whatever its verdict; never attested, or trusted but past its
    ``valid_until``, is stale; otherwise its verdict."""
    if not count.admitted:
        return "untrusted"
    if not count.attested or (count.trusted and count.expired):
        return "stale"
    return "trusted" if count.trusted else "untrusted"


def host_gauges(counts: Iterable[HostCount]) -> dict[tuple[str, str], int]:
    """Hosts by (state, group); every state of each group that has a host, 0 included."""
    totals: dict[tuple[str, str], int] = {}
    for count in counts:
        for state in HOST_STATES:
            totals.setdefault((state, count.group), 0)
        totals[host_state(count), count.group] += count.hosts
    return totals


def route_of(scope: Scope) -> str:
    """The template of the route that answered (``/v1/hosts/{host_id}``), never the path a
    client sent: label values stay a fixed set."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else OTHER_ROUTE


def status_class(status: int) -> str:
    return f"{status // 100}xx"


class ServerMetrics:
    """The server's metrics; ``store`` (None: no gauges) is read when scraped."""

    def __init__(self, store: Store | None = None) -> None:
        self._store = store
        r = self.registry = Registry()
        self._attestations = r.counter(
            "trusthook_attestations_total",
            "Appraisals of POST /v1/attestations answered by this process, by verdict.",
            ("result",),
        )
        for result in ATTESTATION_RESULTS:
            self._attestations.declare(result=result)
        self._reasons = r.counter(
            "trusthook_attestation_reasons_total",
            "Reasons of untrusted verdicts of POST /v1/attestations, by the check that failed.",
            ("check",),
        )
        self._releases = r.counter(
            "trusthook_releases_total",
            "Key-release requests (POST /v1/releases) answered by this process: released, or"
            " refused by a check.",
            ("result", "check"),
        )
        self._releases.declare(result="released", check="")
        self._refused = r.counter(
            "trusthook_requests_refused_total",
            "Requests answered 403 by this process, by route and the check that refused them.",
            ("route", "check"),
        )
        self._database_errors = r.counter(
            "trusthook_database_errors_total",
            "Requests answered 503 by this process because the database failed, by route.",
            ("route",),
        )
        self._latency = r.histogram(
            "trusthook_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route template and"
            " status class.",
            ("route", "status"),
        )
        self._hosts = r.gauge(
            "trusthook_hosts",
            "Enrolled hosts by trust state (stale: never attested, or its valid_until passed)"
            " and group, read from the database at scrape time.",
            ("state", "group"),
        )
        self._audit_size = r.gauge(
            "trusthook_audit_log_entries",
            "Entries in the audit log (its Merkle tree size), read from the database at scrape"
            " time.",
        )

    # counted by the HTTP layer (app.py)

    def attested(self, status: api.HostStatus) -> api.HostStatus:
        """Count the verdict ``status`` answers an attestation with; ``status``."""
        self._attestations.inc(result="trusted" if status.trusted else "untrusted")
        for reason in status.reasons:
            self._reasons.inc(check=reason.check)
        return status

    @contextmanager
    def releasing(self) -> Iterator[None]:
        """Count the key release in the block: released if it ends, refused by the check of
        the AttestationError it raises (other errors are no decision: not counted)."""
        try:
            yield
        except AttestationError as e:
            self._releases.inc(result="refused", check=e.check)
            raise
        self._releases.inc(result="released", check="")

    def error_answered(self, route: str, status: int, check: str) -> None:
        """Count an error answer: a 403 is a refused request, a 503 a failed database (the
        only 503 is StorageError's)."""
        if status == 403:
            self._refused.inc(route=route, check=check)
        elif status == 503:
            self._database_errors.inc(route=route)

    def request(self, route: str, status: int, seconds: float) -> None:
        self._latency.observe(seconds, route=route, status=status_class(status))

    # scraped

    def exposition(self, now: float) -> bytes:
        """Every metric, the gauges read from the database now (StorageError if it fails)."""
        if self._store is not None:
            counts, size = self._store.metrics_snapshot(now)
            self._hosts.replace(
                ({"state": state, "group": group}, hosts)
                for (state, group), hosts in host_gauges(counts).items()
            )
            self._audit_size.set(size)
        return self.registry.body()


class RequestMetrics:
    """ASGI middleware: times every HTTP request, from its arrival to the end of its answer
    (or to the exception no handler answered: a 500), into ``ServerMetrics.request``."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self._app = app
        self._metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self._app(scope, receive, sending)
        finally:
            self._metrics.request(route_of(scope), status, time.perf_counter() - started)
