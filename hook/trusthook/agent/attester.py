"""The agent's side of remote attestation: enroll this host, then attest on an interval.

Files under ``<state_dir>/attest/`` (directory 0700):
- ``client.key`` (0600) and ``client.crt``: the mTLS identity the server issued at enrollment;
- ``server-ca.pem``: the CA the server's certificate must chain to;
- ``enrollment.json``: server URL, host id, hostname, group;
- ``status.json``: the last attempt, its outcome, and the server's verdict with its reasons.
Every file is written to a temporary name, fsync'd and renamed: a crash leaves the old one.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from trusthook.agent.serverclient import ServerClient, tls_context
from trusthook.agent.writer import MeasuredLog
from trusthook.common import b64
from trusthook.common.clock import iso, utc_now
from trusthook.common.eventlog import LaunchEvent
from trusthook.common.files import write_atomic
from trusthook.errors import (
    ConfigError,
    ServerRefusedError,
    ServerUnavailableError,
    StateError,
    TrusthookError,
)
from trusthook.image.envelope import associated_data, open_sealed

log = logging.getLogger(__name__)
RETRY_FIRST = 1.0  # seconds before the first retry of an unreachable server; doubles each time


def _unb64(value: Any, what: str) -> bytes:
    return b64.decode(value, f"attestation server's {what}", ServerRefusedError)


@dataclass(frozen=True, slots=True, kw_only=True)
class Enrollment:
    server: str
    host_id: str
    hostname: str
    group: str


class Attester:
    """Enrollment and attestation for one host; thread-safe (one exchange at a time)."""

    def __init__(
        self,
        *,
        log: MeasuredLog,
        state_dir: Path,
        boot_id: str,
        interval: float,
        timeout: float = 30.0,
        clock: Callable[[], datetime] = utc_now,
    ) -> None:
        self._log = log
        self._dir = state_dir / "attest"
        self._boot_id = boot_id
        self._interval = interval
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()

    # files

    @property
    def _files(self) -> dict[str, Path]:
        return {
            name: self._dir / name
            for name in ("client.key", "client.crt", "server-ca.pem", "enrollment.json")
        }

    def enrollment(self) -> Enrollment | None:
        path = self._files["enrollment.json"]
        try:
            data = json.loads(path.read_bytes())
            fields = ("server", "host_id", "hostname", "group")
            return Enrollment(**{k: str(data[k]) for k in fields})
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise StateError(f"{path} is unreadable or malformed ({e}); enroll again") from e

    def _client(self, enrollment: Enrollment) -> ServerClient:
        files = self._files
        context = tls_context(files["server-ca.pem"], files["client.crt"], files["client.key"])
        return ServerClient(enrollment.server, context, timeout=self._timeout)

    # enrollment

    def enroll(
        self, *, server: str, server_ca: Path, hostname: str, group: str, reenroll: bool
    ) -> dict[str, Any]:
        """Enroll with ``server``: EK certificate and AK out, credential activated, client
        certificate in. Files change only when the server has accepted the host."""
        with self._lock:
            current = self.enrollment()
            if current is not None and not reenroll:
                raise ConfigError(
                    f"this host is already enrolled with {current.server} as"
                    f" {current.host_id[:16]}…; enroll again explicitly (--reenroll)"
                )
            try:
                ca_pem = server_ca.read_bytes()
            except OSError as e:
                raise ConfigError(f"cannot read server CA {server_ca}: {e.strerror}") from e
            key = ec.generate_private_key(ec.SECP256R1())
            csr = (
                x509.CertificateSigningRequestBuilder()
                .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, hostname)]))
                .sign(key, hashes.SHA256())
            )
            with self._log.exclusive_tpm() as tpm:
                request = {
                    "hostname": hostname,
                    "group": group,
                    "ek_certificate": b64.encode(tpm.ek_certificate()),
                    "ek_public": b64.encode(tpm.ek_public()),
                    "ak_public": b64.encode(tpm.ak_public()),
                    "csr": csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
                    "reenroll": reenroll,
                }
            with ServerClient(server, tls_context(server_ca), timeout=self._timeout) as client:
                challenge = client.post("/v1/enrollments", request)
                enrollment_id = challenge.get("enrollment_id")
                if not isinstance(enrollment_id, str) or not enrollment_id.isalnum():
                    raise ServerRefusedError("attestation server sent a malformed enrollment id")
                with self._log.exclusive_tpm() as tpm:
                    secret = tpm.activate_credential(
                        _unb64(challenge.get("credential_blob"), "credential"),
                        _unb64(challenge.get("encrypted_secret"), "encrypted secret"),
                    )
                result = client.post(
                    f"/v1/enrollments/{enrollment_id}/activation", {"secret": b64.encode(secret)}
                )
            certificate, host_id = result.get("certificate"), result.get("host_id")
            if not isinstance(certificate, str) or not isinstance(host_id, str):
                raise ServerRefusedError("attestation server sent a malformed enrollment result")
            self._save_identity(key, certificate.encode(), ca_pem)
            enrollment = Enrollment(server=server, host_id=host_id, hostname=hostname, group=group)
            write_atomic(
                self._files["enrollment.json"], json.dumps(asdict(enrollment)).encode(), 0o644
            )
            log.info("enrolled with %s as host %s", server, host_id)
            return {"host_id": host_id, "server": server, "reenrolled": current is not None}

    def _save_identity(self, key: ec.EllipticCurvePrivateKey, cert: bytes, ca: bytes) -> None:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        files = self._files
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(files["client.key"], key_pem, 0o600)
        write_atomic(files["client.crt"], cert, 0o644)
        write_atomic(files["server-ca.pem"], ca, 0o644)

    # attestation

    def attest(self) -> dict[str, Any]:
        """Attest once now; returns the server's verdict on this host."""
        with self._lock:
            enrollment = self.enrollment()
            if enrollment is None:
                raise ConfigError("this host is not enrolled; run 'trusthook enroll --server URL'")
            started = iso(self._clock())
            try:
                verdict = self._exchange(enrollment)
            except TrusthookError as e:
                self._save_status({"last_attempt": started, "error": str(e)})
                raise
            self._save_status({"last_attempt": started, "last_verdict": verdict, "error": None})
            return verdict

    def release(self, manifest: bytes, image: str, launch: LaunchEvent) -> dict[str, bytes]:
        """Record ``launch``, then ask the server for the image's layer keys with fresh evidence
        that includes that record; the keys come back sealed to this TPM and are opened here.

        Holding the exchange lock from the record to the answer keeps the record among the
        evidence's new records (no periodic attestation can verify it in between)."""
        with self._lock:
            enrollment = self.enrollment()
            if enrollment is None:
                raise ConfigError(
                    "encrypted images need an enrolled host: run 'trusthook enroll --server URL'"
                )
            record = self._log.append(launch)
            with self._client(enrollment) as client:
                nonce, evidence = self._evidence(client)
                with self._log.exclusive_tpm() as tpm:
                    public, attest, signature = tpm.certify_bind_key(nonce)
                answer = client.post(
                    "/v1/releases",
                    {
                        "attestation": evidence,
                        "launch_recnum": record.recnum,
                        "manifest": b64.encode(manifest),
                        "release_key": {
                            "public": b64.encode(public),
                            "attest": b64.encode(attest),
                            "signature": b64.encode(signature),
                        },
                    },
                )
            sealed = answer.get("sealed_keys")
            if answer.get("image") != image or not isinstance(sealed, dict):
                raise ServerRefusedError("attestation server sent a malformed release answer")
            aad = associated_data(host_id=enrollment.host_id, image=image, nonce=nonce)
            with self._log.exclusive_tpm() as tpm:
                return open_sealed(sealed, tpm.unseal_release, aad)

    def _exchange(self, enrollment: Enrollment) -> dict[str, Any]:
        with self._client(enrollment) as client:
            _, evidence = self._evidence(client)
            return client.post("/v1/attestations", evidence)

    def _evidence(self, client: ServerClient) -> tuple[bytes, dict[str, Any]]:
        """A nonce from the server and the evidence answering it."""
        challenge = client.post("/v1/nonces")
        nonce = _unb64(challenge.get("nonce"), "nonce")
        pcrs = challenge.get("pcrs")
        after = challenge.get("verified_recnum")
        if (
            not isinstance(pcrs, list)
            or not all(type(p) is int and 0 <= p <= 23 for p in pcrs)
            or type(after) is not int
        ):
            raise ServerRefusedError("attestation server sent a malformed nonce answer")
        if challenge.get("verified_boot_id") != self._boot_id:
            after = -1  # a new boot for the server: send the whole log of this one
        quote, records = self._log.evidence(pcrs, nonce, after)
        return nonce, {
            "nonce": b64.encode(nonce),
            "quote": {"attest": b64.encode(quote.attest), "signature": b64.encode(quote.signature)},
            "pcrs": {str(i): v.hex() for i, v in quote.pcr_values.items()},
            "boot_id": self._boot_id,
            "events": [r.to_json() for r in records],
        }

    def status(self) -> dict[str, Any]:
        """The enrollment and the outcome of the last attempt, from this host's point of view."""
        enrollment = self.enrollment()
        try:
            last = json.loads((self._dir / "status.json").read_bytes())
        except FileNotFoundError:
            last = {}
        except (OSError, ValueError) as e:
            raise StateError(f"{self._dir / 'status.json'} is unreadable ({e})") from e
        return {
            "enrolled": enrollment is not None,
            "enrollment": None if enrollment is None else asdict(enrollment),
            **last,
        }

    def _save_status(self, status: dict[str, Any]) -> None:
        path = self._dir / "status.json"
        try:
            previous = json.loads(path.read_bytes())
        except (OSError, ValueError):
            previous = {}
        if status.get("last_verdict") is None and "last_verdict" in previous:
            status = {**status, "last_verdict": previous["last_verdict"]}
        write_atomic(path, json.dumps(status, indent=2).encode(), 0o644)

    # the loop

    def run(self, stop: threading.Event) -> None:
        """Attest every interval until ``stop``; an unreachable server is retried sooner, with
        exponential backoff and jitter, never later than the interval."""
        delay, failures = 0.0, 0
        while not stop.wait(delay):
            if self.enrollment() is None:
                delay = self._interval
                continue
            try:
                verdict = self.attest()
            except ServerUnavailableError as e:
                failures += 1
                delay = min(self._interval, RETRY_FIRST * 2 ** (failures - 1))
                delay *= random.uniform(0.5, 1.0)  # noqa: S311 - jitter, not a secret
                log.warning("attestation failed, retrying in %.1fs: %s", delay, e)
                continue
            except TrusthookError as e:
                log.error("attestation failed: %s", e)
                failures, delay = 0, self._interval
                continue
            failures, delay = 0, self._interval
            if verdict.get("trusted") is not True:
                log.warning("server says this host is untrusted: %s", verdict.get("reasons"))
