"""The HTTP layer: FastAPI routes over ``ServerService``, errors as one JSON shape.

No ``from __future__ import annotations`` here: FastAPI reads the route annotations at run
time, and those naming local dependencies cannot be resolved from strings.

The event loop never waits for the database: a route that touches the store hands all of
its synchronous work (authenticating the client certificate's host, the service call) to one
worker thread of a bounded pool (``Worker``), in one hop per request (a hop costs ~60 µs of
CPU; a dependency of its own would be a second one). So a slow or locked statement holds one
worker and one database connection, not every connection the server has: ``/v1/health``, which
never touches the database, and other hosts' requests go on. The body is read, parsed and
validated on the loop; the request-signature check reads the raw body bytes read there.

Every error answer is ``{"error": {"check": ..., "message": ...}}`` with a status code that says
whose fault it was; the OpenAPI document is served at /openapi.json and kept in docs/.
"""

import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

import anyio
import anyio.to_thread
from cryptography import x509
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response

from trusthook.attest.requestkey import SIGNATURE_HEADER
from trusthook.common.metrics import CONTENT_TYPE
from trusthook.errors import (
    AdmissionError,
    AttestationError,
    AuthError,
    ConflictError,
    EnrollmentError,
    NotFoundError,
    RequestError,
    StorageError,
    TrusthookError,
)
from trusthook.server import api, restores
from trusthook.server.ca import CertificateAuthority
from trusthook.server.config import ServerConfig
from trusthook.server.metrics import RequestMetrics, ServerMetrics, route_of
from trusthook.server.records import HostRecord
from trusthook.server.service import ServerService, SignedRequest
from trusthook.server.store import POOL_SIZE, Store
from trusthook.server.tlsproto import peer_certificate

log = logging.getLogger(__name__)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
T = TypeVar("T")

_STATUS: tuple[tuple[type[TrusthookError], int, str], ...] = (
    (RequestError, 400, "request"),
    (AuthError, 403, "client"),
    (NotFoundError, 404, "not_found"),
    (ConflictError, 409, "conflict"),
    (EnrollmentError, 403, "enrollment"),
    (StorageError, 503, "storage"),
)
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": api.ErrorResponse, "description": text}
    for code, text in (
        (400, "malformed request"),
        (403, "refused: no valid client certificate, not admitted, or evidence refused"),
        (404, "not found"),
        (409, "conflict with stored state"),
        (413, "request body too large"),
        (503, "database unavailable; retry"),
    )
}


_METRICS: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {CONTENT_TYPE.partition(";")[0]: {"schema": {"type": "string"}}},
        "description": "the metrics, Prometheus text exposition format 0.0.4 (docs/metrics.md)",
    }
}


def _error(status: int, check: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"check": check, "message": message}}, status_code=status)


def _answer(exc: TrusthookError) -> tuple[int, str, str]:
    """The status code, check and message ``exc`` is answered with; a 5xx is logged."""
    if isinstance(exc, AttestationError | AdmissionError):  # named by the check it failed
        return 403, exc.check, exc.message
    for kind, status, check in _STATUS:
        if isinstance(exc, kind):
            if status >= 500:
                log.error("%s", exc)
            return status, check, str(exc)
    log.error("unexpected %s: %s", type(exc).__name__, exc)
    return 500, "internal", f"internal error ({type(exc).__name__})"


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes (413) before anything parses them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self._app = app
        self._limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self._app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > self._limit):
                await _error(413, "request", self._message())(scope, receive, send)
                return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self._limit:
                raise _TooLarge
            return message

        try:
            await self._app(scope, limited, send)
        except _TooLarge:
            await _error(413, "request", self._message())(scope, receive, send)

    def _message(self) -> str:
        return f"request body is larger than {self._limit} bytes"


class _TooLarge(Exception):
    pass


class Worker:
    """Runs the routes' synchronous work (database statements, signature checks) on a pool of
    at most ``threads`` worker threads, off the event loop, each request's work on one pooled
    database connection (``Store.connection``: its calls are still transactions of their own).
    As many threads as the store has pooled connections (``store.POOL_SIZE``): a worker never
    waits for a connection while another sits idle, and a request past ``threads`` waits its
    turn here, on the loop, without holding a thread."""

    def __init__(self, threads: int, store: Store) -> None:
        if threads < 1:
            raise ValueError(f"worker threads: got {threads}, expected at least 1")
        self.threads = threads
        self._store = store
        self._limiter = anyio.CapacityLimiter(threads)

    async def run(self, work: Callable[[], T]) -> T:
        return await anyio.to_thread.run_sync(self._connected, work, limiter=self._limiter)

    def _connected(self, work: Callable[[], T]) -> T:
        with self._store.connection():
            return work()


async def _peer(request: Request) -> x509.Certificate:
    """The client certificate the TLS layer verified (AuthError without one); who it names
    is looked up in the store by the route's worker (``ServerService.authenticate``)."""
    certificate = peer_certificate(request.scope)
    if certificate is None:
        raise AuthError("this request needs the client certificate issued at enrollment")
    return certificate


Peer = Annotated[x509.Certificate, Depends(_peer)]


async def _signed(
    request: Request,
    signature: Annotated[
        str | None,
        Header(
            alias=SIGNATURE_HEADER,
            description="the host's TPM request key's marshaled TPMT_SIGNATURE (ECDSA-SHA256),"
            " base64, over SHA-256('trusthook request v1' NUL method NUL path NUL body)"
            " (docs/attestation.md §10)",
        ),
    ] = None,
) -> SignedRequest:
    """The request as the host signed it: method, path as sent, body bytes, signature."""
    raw_path = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else request.url.path
    return SignedRequest(
        method=request.method, path=path, body=await request.body(), signature=signature
    )


def create_app(  # noqa: PLR0915 - every route is defined here, over one service
    service: ServerService,
    *,
    max_body: int,
    metrics: ServerMetrics | None = None,
    threads: int = POOL_SIZE,
) -> FastAPI:
    """The ASGI application; ``max_body`` bounds every request body. ``metrics`` counts what
    it answers and serves /metrics (without one: its own, with no gauges). ``threads``: the
    worker threads that run the routes' database work (``Worker``)."""
    metrics = metrics if metrics is not None else ServerMetrics()
    work = Worker(threads, service.store).run
    app = FastAPI(
        title="trusthook attestation server",
        version="1",
        description="Enrollment, attestation and host trust for trusthook hosts.",
        responses=_ERRORS,
        docs_url=None,
        redoc_url=None,
    )

    @app.exception_handler(TrusthookError)
    async def _trusthook_error(request: Request, exc: TrusthookError) -> JSONResponse:
        status, check, message = _answer(exc)
        metrics.error_answered(route_of(request.scope), status, check)
        return _error(status, check, message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid"}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "body"
        if first.get("type") == "json_invalid":
            return _error(400, "request", "request body is not valid JSON")
        return _error(400, "request", f"{where}: {first.get('msg', 'invalid')}")

    caller = service.authenticate  # on a worker: it reads the host's row

    def as_host(peer: x509.Certificate) -> HostRecord:
        found = service.authenticate(peer)
        if found is None:
            raise AuthError("this request is for enrolled hosts, not operators")
        return found

    Signed = Annotated[SignedRequest, Depends(_signed)]

    @app.get("/v1/health", tags=["server"])
    async def health() -> dict[str, str]:
        """Liveness: answers without touching the database."""
        return {"status": "ok"}

    @app.get("/metrics", tags=["server"], response_class=Response, responses=_METRICS)
    async def scrape(peer: Peer) -> Response:
        """Prometheus metrics, text exposition format 0.0.4 (docs/metrics.md): this process's
        counters and latencies, and host and audit-log gauges read from the database now. For
        operator certificates only (Prometheus scrapes with one); a host's is refused (403)."""

        def exposition() -> bytes:
            if caller(peer) is not None:
                raise AuthError("metrics are for operator certificates, not hosts")
            return metrics.exposition(datetime.now(UTC).timestamp())

        return Response(await work(exposition), media_type=CONTENT_TYPE)

    @app.post("/v1/enrollments", status_code=201, tags=["enrollment"])
    async def begin_enrollment(body: api.EnrollmentRequest) -> api.EnrollmentChallenge:
        """Start enrollment: the EK certificate chain, EK and AK are checked, and a credential
        only the host's TPM can activate is returned. No client certificate needed; the
        request names no group (the operator's admission record of the EK does)."""
        return await work(lambda: service.begin_enrollment(body))

    @app.post("/v1/enrollments/{enrollment_id}/activation", tags=["enrollment"])
    async def finish_enrollment(
        enrollment_id: str, body: api.ActivationRequest
    ) -> api.EnrollmentResult:
        """Answer the credential. The right answer from an admitted host gets its client
        certificate and group; an unknown EK is queued for an operator's approval (403
        ``pending``), a rejected or revoked one refused (403 ``rejected``, ``revoked``)."""
        return await work(lambda: service.finish_enrollment(enrollment_id, body))

    @app.post("/v1/nonces", status_code=201, tags=["attestation"])
    async def nonce(
        peer: Peer, audit_size: Annotated[int | None, Query(ge=0)] = None
    ) -> api.NonceResponse:
        """A fresh single-use nonce, the PCRs to quote and what is already verified; with
        ``audit_size`` (the size of the last audit checkpoint the host holds), also the log's
        checkpoint and the consistency proof to it from that size."""
        return await work(lambda: service.issue_nonce(as_host(peer), audit_size))

    @app.post("/v1/attestations", tags=["attestation"])
    async def attest(peer: Peer, body: api.AttestationRequest, signed: Signed) -> api.HostStatus:
        """Appraise a quote and the event-log records since the last verified one; answers
        the host's new status (a refused appraisal is a status with reasons, not an error).
        The request must carry its request-key signature (403 ``request_signature``)."""
        return metrics.attested(await work(lambda: service.attest(as_host(peer), body, signed)))

    @app.post("/v1/releases", tags=["keys"])
    async def release(peer: Peer, body: api.ReleaseRequest, signed: Signed) -> api.ReleaseResponse:
        """Release an encrypted image's layer keys, sealed to the host's TPM release key, when
        the evidence is trusted, includes this launch and the release policy allows it. The
        request must carry its request-key signature (403 ``request_signature``)."""

        def released() -> api.ReleaseResponse:
            releasing = as_host(peer)  # a refused certificate is no release decision
            with metrics.releasing():
                return service.release(releasing, body, signed)

        return await work(released)

    @app.get("/v1/hosts", tags=["trust"])
    async def hosts(peer: Peer) -> api.HostList:
        """Every host's trust status (an operator), or the calling host's own."""
        return await work(lambda: service.list_hosts(caller(peer)))

    @app.get("/v1/hosts/{host_id}", tags=["trust"])
    async def host(host_id: str, peer: Peer) -> api.HostStatus:
        """One host's trust status: trusted or not, why, since when, valid until when. A host
        reads only its own, without the golden values (operators see expected and got)."""
        return await work(lambda: service.host_status(caller(peer), host_id))

    @app.get("/v1/hosts/{host_id}/launches", tags=["workloads"])
    async def host_launches(host_id: str, peer: Peer) -> api.LaunchList:
        """A host's latest launches (at most 200, newest first), each with its compliance with
        the policy manifest then in force. A host reads only its own."""
        return await work(lambda: service.host_launches(caller(peer), host_id))

    @app.get("/v1/workloads", tags=["workloads"])
    async def workloads(peer: Peer) -> api.WorkloadList:
        """Every workload of the policy in force or of a launch: instances, hosts, compliance
        (operators only)."""
        return await work(lambda: service.workloads(caller(peer)))

    @app.get("/v1/workloads/{name:path}", tags=["workloads"])
    async def workload(name: str, peer: Peer) -> api.WorkloadDetail:
        """One workload: its policy and every instance, where it ran and whether it complied
        (operators only). Workload names may contain '/'."""
        return await work(lambda: service.workload(caller(peer), name))

    @app.get("/v1/audit/checkpoint", tags=["audit"])
    async def audit_checkpoint(peer: Peer) -> api.AuditCheckpoint:
        """The signed checkpoint of the whole audit log (hosts and operators)."""

        def checkpoint() -> api.AuditCheckpoint:
            caller(peer)  # an enrolled host or a recorded operator
            return service.audit_checkpoint()

        return await work(checkpoint)

    @app.get("/v1/audit/consistency", tags=["audit"])
    async def audit_consistency(
        peer: Peer, old: Annotated[int, Query(ge=0)], new: Annotated[int, Query(ge=1)]
    ) -> api.AuditProof:
        """RFC 9162 consistency proof from tree size ``old`` to ``new`` (hosts and operators)."""

        def proof() -> api.AuditProof:
            caller(peer)  # an enrolled host or a recorded operator
            return service.audit_consistency(old, new)

        return await work(proof)

    @app.get("/v1/audit/entries", tags=["audit"])
    async def audit_entries(
        peer: Peer, start: Annotated[int, Query(ge=0)], end: Annotated[int, Query(ge=1)]
    ) -> api.AuditEntries:
        """Entries ``start`` to ``end - 1``, at most 1000 (operators only)."""
        return await work(lambda: service.audit_entries(caller(peer), start, end))

    @app.get("/v1/audit/inclusion", tags=["audit"])
    async def audit_inclusion(
        peer: Peer, index: Annotated[int, Query(ge=0)], size: Annotated[int, Query(ge=1)]
    ) -> api.AuditProof:
        """RFC 9162 inclusion proof of entry ``index`` in the tree of ``size`` (operators)."""
        return await work(lambda: service.audit_inclusion(caller(peer), index, size))

    _add_report_route(app, service, caller, work)
    _add_kubernetes_routes(app, service, caller, work)
    _add_restore_routes(app, restores.Decisions.of(service), as_host, work)

    app.add_middleware(BodyLimit, limit=max_body)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: it times the 413s too
    return app


Work = Callable[[Callable[[], T]], Awaitable[T]]  # Worker.run


def _add_restore_routes(
    app: FastAPI,
    decisions: restores.Decisions,
    as_host: Callable[[x509.Certificate], HostRecord],
    work: Work[restores.Decision],
) -> None:
    """Checkpoint and restore decisions, for hosts (docs/policy.md §8)."""
    Signed = Annotated[SignedRequest, Depends(_signed)]

    @app.post("/v1/checkpoints", tags=["workloads"])
    async def checkpoint(
        peer: Peer, body: restores.CheckpointRequest, signed: Signed
    ) -> restores.Decision:
        """May this host checkpoint its container? Only when the container's last launch the
        server verified on this host, in this boot, is a compliant launch of a workload with
        ``restore = true`` that is not encrypted (a checkpoint is plaintext: encrypted
        checkpoints are not built); the host must be trusted. Refused: 403 ``checkpoint``.
        Signed by the request key, over a fresh nonce (403 ``request_signature``, ``nonce``);
        audited either way."""
        return await work(lambda: decisions.checkpoint(as_host(peer), body, signed))

    @app.post("/v1/restores", tags=["workloads"])
    async def restore(
        peer: Peer, body: restores.RestoreRequest, signed: Signed
    ) -> restores.Decision:
        """May this host restore a checkpoint as this container? Only when the identity of
        its config's annotations is a workload with ``restore = true``, not encrypted, on a
        host inside its groups and placement, with a compliant launch to have been
        checkpointed from; the host must be trusted. Refused: 403 ``restore``. Signed as a
        checkpoint is; audited either way."""
        return await work(lambda: decisions.restore(as_host(peer), body, signed))


async def _json_body(request: Request, what: str) -> Any:
    try:
        return json.loads(await request.body())
    except (ValueError, RecursionError):
        raise RequestError(f"{what}: the request body is not JSON") from None


def _add_kubernetes_routes(
    app: FastAPI,
    service: ServerService,
    caller: Callable[[x509.Certificate], HostRecord | None],
    work: Work[Any],
) -> None:
    """The kube-scheduler extender (v1) and the validating admission webhook
    (admission.k8s.io/v1), for operator certificates (docs/kubernetes.md). Their bodies are
    Kubernetes' own wire formats, read and written as the Go types marshal them."""
    wire: dict[str, Any] = {"content": {"application/json": {}}}

    @app.post(
        "/v1/kubernetes/scheduler/filter", tags=["kubernetes"], openapi_extra={"requestBody": wire}
    )
    async def scheduler_filter(request: Request, peer: Peer) -> dict[str, Any]:
        """Extender ``filter``: ``ExtenderArgs`` in, ``ExtenderFilterResult`` out. A node is
        kept when it is an enrolled, trusted host inside the groups and placement of the
        pod's workloads; each other node is in ``FailedNodes`` (untrusted: may change) or
        ``FailedAndUnresolvableNodes`` (the policy or no trusthook host) with its reason."""
        args = await _json_body(request, "ExtenderArgs")
        answer: dict[str, Any] = await work(lambda: service.kubernetes_filter(caller(peer), args))
        return answer

    @app.post(
        "/v1/kubernetes/scheduler/prioritize",
        tags=["kubernetes"],
        openapi_extra={"requestBody": wire},
    )
    async def scheduler_prioritize(request: Request, peer: Peer) -> list[dict[str, Any]]:
        """Extender ``prioritize``: ``ExtenderArgs`` in, ``HostPriorityList`` out (10 for a
        node the filter keeps, else 0)."""
        args = await _json_body(request, "ExtenderArgs")
        answer: list[dict[str, Any]] = await work(
            lambda: service.kubernetes_prioritize(caller(peer), args)
        )
        return answer

    @app.post("/v1/kubernetes/admission", tags=["kubernetes"], openapi_extra={"requestBody": wire})
    async def admission_review(request: Request, peer: Peer) -> dict[str, Any]:
        """Validating admission webhook: ``AdmissionReview`` in and out. A pod is refused when
        a container's image is no workload of the policy manifest (or not the pinned digest
        its workload lists), or when no trusted host satisfies its workloads' placement."""
        review = await _json_body(request, "AdmissionReview")
        answer: dict[str, Any] = await work(lambda: service.kubernetes_review(caller(peer), review))
        return answer


def _add_report_route(
    app: FastAPI,
    service: ServerService,
    caller: Callable[[x509.Certificate], HostRecord | None],
    work: Work[tuple[bytes, str]],
) -> None:
    """``GET /v1/audit/report`` (docs/reports.md)."""

    @app.get(
        "/v1/audit/report",
        tags=["audit"],
        response_class=Response,
        responses={
            200: {
                "description": "the report (docs/reports.md)",
                "content": {"text/html": {}, "application/json": {}, "text/csv": {}},
            }
        },
    )
    async def audit_report(
        peer: Peer,
        since: Annotated[str | None, Query(description="RFC 3339 time, inclusive")] = None,
        until: Annotated[str | None, Query(description="RFC 3339 time, exclusive")] = None,
        workload: Annotated[
            str | None, Query(max_length=1024, description="only this workload")
        ] = None,
        form: Annotated[
            str, Query(alias="format", pattern="^(html|json|csv)$", description="html, json, csv")
        ] = "html",
    ) -> Response:
        """A compliance report of [since, until) as ``trusthook report --config`` makes it,
        from the period's audit entries exported and verified now (operators only). Computed
        on a worker thread: it reads and verifies every entry of the period."""
        body, media_type = await work(
            lambda: service.audit_report(
                caller(peer), since=since, until=until, workload=workload, form=form
            )
        )
        return Response(
            body,
            media_type=media_type,
            headers={
                "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
                "X-Content-Type-Options": "nosniff",
            },
        )


def openapi_document(app: FastAPI | None = None) -> str:
    """The OpenAPI document as ``app`` serves it, in the form kept in docs/openapi.json.

    Without ``app``: the document of an application over an in-memory SQLite store that is
    never opened, so printing the schema needs no configuration, CA or database."""
    if app is None:
        service = ServerService(
            config=ServerConfig(),
            store=Store("sqlite://"),
            ca=CertificateAuthority.create("openapi", datetime.now(UTC)),
            ek_roots=(),
        )
        app = create_app(service, max_body=ServerConfig.max_body)
    return json.dumps(app.openapi(), indent=2, sort_keys=True) + "\n"
