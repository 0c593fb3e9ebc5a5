"""The TPM adapter's attestation commands against a real swtpm, and the verifier's parsers
against what the TPM really produces."""

from __future__ import annotations

import hashlib

import pytest
from tpm2_pytss.types import TPMS_ATTEST, TPMT_SIGNATURE

from trusthook._devenv.swtpm import Swtpm
from trusthook.agent.tpm import Tpm
from trusthook.attest.identity import check_ak_public
from trusthook.attest.tpmwire import parse_quote_info, parse_rsassa_signature
from trusthook.errors import TPMError

pytestmark = pytest.mark.integration


def test_quote_parses_as_tpm2_pytss_does(swtpm: Swtpm) -> None:
    with Tpm(swtpm.tcti) as tpm:
        tpm.pcr_extend(23, b"\x01" * 32)
        quote = tpm.quote([0, 7, 23], b"n" * 32)
        ak = check_ak_public(tpm.ak_public())
    ours = parse_quote_info(quote.attest)
    theirs, _ = TPMS_ATTEST.unmarshal(quote.attest)
    assert ours.extra_data == bytes(theirs.extraData) == b"n" * 32
    assert ours.reset_count == theirs.clockInfo.resetCount
    assert ours.restart_count == theirs.clockInfo.restartCount
    assert ours.safe == theirs.clockInfo.safe == 1
    assert ours.pcr_digest == bytes(theirs.attested.quote.pcrDigest)
    assert (
        ours.pcr_digest
        == hashlib.sha256(b"".join(quote.pcr_values[i] for i in (0, 7, 23))).digest()
    )
    sig, _ = TPMT_SIGNATURE.unmarshal(quote.signature)
    assert parse_rsassa_signature(quote.signature) == bytes(sig.signature.rsassa.sig)
    assert len(ak.name) == 34


def test_ak_is_the_same_after_reopening(swtpm: Swtpm) -> None:
    with Tpm(swtpm.tcti) as tpm:
        first = tpm.ak_public()
    with Tpm(swtpm.tcti) as tpm:
        assert tpm.ak_public() == first


def test_restart_counts_a_reset_and_keeps_the_clock_safe(swtpm: Swtpm) -> None:
    with Tpm(swtpm.tcti) as tpm:
        before = parse_quote_info(tpm.quote([23], b"a").attest)
    swtpm.restart()
    with Tpm(swtpm.tcti) as tpm:
        after = parse_quote_info(tpm.quote([23], b"b").attest)
    assert after.reset_count == before.reset_count + 1
    assert after.safe == 1


@pytest.mark.parametrize(
    ("pcrs", "nonce", "needle"),
    [([], b"n", "distinct"), ([24], b"n", "out of range"), ([1, 1], b"n", "distinct"),
     ([23], b"", "1..64 bytes")],
)  # fmt: skip
def test_quote_arguments(swtpm: Swtpm, pcrs: list[int], nonce: bytes, needle: str) -> None:
    with Tpm(swtpm.tcti) as tpm, pytest.raises(TPMError, match=needle):
        tpm.quote(pcrs, nonce)


def test_malformed_credential(swtpm: Swtpm) -> None:
    with Tpm(swtpm.tcti) as tpm, pytest.raises(TPMError, match="malformed credential"):
        tpm.activate_credential(b"\x00", b"\x00\x01")
