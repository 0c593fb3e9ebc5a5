"""What the TPM request key (docs/attestation.md §10) costs per attestation, side by side in one
run on one swtpm: on the host, TPM2_Sign of a request digest next to the TPM work an
attestation did without it (TPM2_Quote of PCRs 0-7 and 23 with the PCR read); on the server,
the signature check next to the appraisal of the same evidence (AK signature, nonce, PCR digest,
golden PCRs, clock, log replay). Prints milliseconds and the added fraction of each.

Usage (root): .venv/bin/python -m bench.attestation.request_signing [--runs N]
"""

from __future__ import annotations

import argparse
import base64
import secrets
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.attestation.verify_core import GOLDEN, PCRS, record
from trusthook._devenv.swtpm import Swtpm
from trusthook.agent.tpm import Tpm
from trusthook.attest.appraise import Expectations, appraise
from trusthook.attest.identity import check_ak_public
from trusthook.attest.requestkey import (
    check_request_signature,
    enrollment_qualifying,
    request_digest,
    verify_request_key,
)

BODY = b"x" * 2048  # about an attestation body with three records


def per_call(runs: int, fn: Callable[[], object]) -> float:
    """Mean milliseconds of ``fn()`` over ``runs`` calls (after one warm-up)."""
    fn()
    start = time.perf_counter()
    for _ in range(runs):
        fn()
    return (time.perf_counter() - start) * 1000 / runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    with (
        tempfile.TemporaryDirectory() as tmp,
        Swtpm(Path(tmp)) as swtpm,
        Tpm(swtpm.tcti, release_secret=secrets.token_bytes(32)) as tpm,
    ):
        ak = check_ak_public(tpm.ak_public())
        public, attest, signature = tpm.certify_request_key(enrollment_qualifying("bench"))
        point = verify_request_key(
            ak=ak, public=public, attest=attest, signature=signature, enrollment_id="bench"
        )
        nonce = secrets.token_bytes(32)
        digest = request_digest("POST", "/v1/attestations", BODY)
        quote_ms = per_call(args.runs, lambda: tpm.quote(PCRS, nonce))
        sign_ms = per_call(args.runs, lambda: tpm.sign_request(digest))
        header = base64.b64encode(tpm.sign_request(digest)).decode()
        _, cases = record(tpm, 20, 3)
    expect = Expectations(container_pcr=23, golden=GOLDEN)
    case = cases[-1]

    def appraise_one() -> object:
        return appraise(
            key=ak, nonce=case.nonce, evidence=case.evidence, expect=expect, state=case.state
        )

    def check_one() -> None:
        check_request_signature(
            point, method="POST", path="/v1/attestations", body=BODY, header=header
        )

    appraise_ms = per_call(args.runs * 10, appraise_one)
    check_ms = per_call(args.runs * 10, check_one)
    print(f"host   TPM2_Quote + PCR read   {quote_ms:7.3f} ms   (what an attestation did)")
    print(f"host   TPM2_Sign request key   {sign_ms:7.3f} ms   +{sign_ms / quote_ms:.0%}")
    print(f"server appraisal               {appraise_ms:7.3f} ms   (what an attestation did)")
    print(f"server request signature check {check_ms:7.3f} ms   +{check_ms / appraise_ms:.0%}")


if __name__ == "__main__":
    main()
