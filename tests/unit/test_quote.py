"""verify_quote on quotes recorded from a real swtpm (tests/data/evidence): every genuine quote
verifies, and each check refuses its attack with its own reason. No TPM needed."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from hypothesis import given
from hypothesis import strategies as st
from tpm2_pytss.constants import TPM2_ST
from tpm2_pytss.types import TPML_PCR_SELECTION, TPMS_ATTEST

from tests.data.recorded import PCRS, RecordedQuote, load
from trusthook.attest.identity import AttestationKey, check_ak_public
from trusthook.attest.quote import VerifiedQuote, verify_quote
from trusthook.attest.tpmwire import TPM_ALG_RSASSA, TPM_ALG_SHA256
from trusthook.errors import AttestationError

RECORDING = load()
KEY = check_ak_public(RECORDING.ak_public)
BOOT = RECORDING.epoch("boot")
THREE, FIVE, NARROW = (BOOT.quote(n) for n in ("three", "five", "narrow"))
SIG_HEADER = 6  # TPMT_SIGNATURE: sigAlg, hash, then the TPM2B size of the signature


def verify(
    q: RecordedQuote,
    *,
    key: AttestationKey = KEY,
    attest: bytes | None = None,
    signature: bytes | None = None,
    nonce: bytes | None = None,
    pcrs: Sequence[int] | None = None,
    pcr_values: Mapping[int, bytes] | None = None,
) -> VerifiedQuote:
    """Verify ``q`` as recorded, with the given parts replaced."""
    return verify_quote(
        key=key,
        attest=q.attest if attest is None else attest,
        signature=q.signature if signature is None else signature,
        nonce=q.nonce if nonce is None else nonce,
        pcrs=PCRS if pcrs is None else pcrs,
        pcr_values=q.pcr_values if pcr_values is None else pcr_values,
    )


def refusal(q: RecordedQuote, **changes: Any) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        verify(q, **changes)
    return info.value


def pcr_digest(values: Mapping[int, bytes]) -> str:
    """TPM 2.0 Part 3, TPM2_Quote: SHA-256 of the selected PCR values in index order."""
    return hashlib.sha256(b"".join(values[i] for i in sorted(values))).hexdigest()


@pytest.mark.parametrize(
    "q",
    [pytest.param(q, id=f"{e.name}-{q.name}") for e in RECORDING.epochs for q in e.quotes],
)
def test_every_recorded_quote_verifies_for_the_pcrs_it_was_asked(q: RecordedQuote) -> None:
    verified = verify(q, pcrs=q.pcrs)
    assert verified.pcr_values == q.pcr_values
    assert sorted(verified.pcr_values) == list(PCRS if q is not NARROW else range(8))


def test_pcrs_asked_in_any_order_are_the_same_request() -> None:
    assert verify(FIVE, pcrs=list(reversed(PCRS))).pcr_values == FIVE.pcr_values


def test_clock_info_follows_the_epochs_the_tpm_went_through() -> None:
    """How the recording was made (tests/data/record_evidence.py) fixes how the counts move."""
    clocks = {e.name: [verify(q, pcrs=q.pcrs).clock for q in e.quotes] for e in RECORDING.epochs}
    for epoch in clocks.values():
        assert len({(c.reset_count, c.restart_count, c.safe) for c in epoch}) == 1
        assert [c.clock for c in epoch] == sorted(c.clock for c in epoch)
    boot, reboot, restart, crash = (clocks[n][0] for n in ("boot", "reboot", "restart", "crash"))
    assert (reboot.reset_count, reboot.restart_count) == (boot.reset_count + 1, 0)
    assert (restart.reset_count, restart.restart_count) == (reboot.reset_count, 1)
    assert (crash.reset_count, crash.restart_count) == (restart.reset_count + 1, 0)
    assert (boot.safe, reboot.safe, restart.safe, crash.safe) == (True, True, True, False)


def test_clock_is_the_tpms_clock_and_only_grows_within_an_epoch() -> None:
    """appraise() refuses a clock that goes backwards within one epoch: the recorded TPM's
    clock (milliseconds, as tpm2-pytss reads it from the attest) grows quote after quote, and
    also across the orderly power cycles (TPM2_Shutdown saved it)."""
    last = -1
    for epoch in RECORDING.epochs[:3]:  # boot, reboot, restart; the crash may lose some
        for q in epoch.quotes:
            clock = verify(q, pcrs=q.pcrs).clock.clock
            parsed, _ = TPMS_ATTEST.unmarshal(q.attest)
            assert clock == int(parsed.clockInfo.clock)
            assert clock > last
            last = clock


# signature


def test_signature_of_another_quote_is_refused() -> None:
    e = refusal(FIVE, signature=THREE.signature)
    assert e.check == "signature"
    assert "not signed by this host's enrolled attestation key" in e.message


def test_quote_of_another_key_is_refused() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    e = refusal(FIVE, key=AttestationKey(public=b"", name=b"", rsa_key=other))
    assert e.check == "signature"
    assert "not signed by this host's enrolled attestation key" in e.message


@given(st.data())
def test_any_flipped_byte_of_the_attest_is_refused_by_the_signature(data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(FIVE.attest) - 1))
    attest = bytearray(FIVE.attest)
    attest[index] ^= data.draw(st.integers(1, 255))
    e = refusal(FIVE, attest=bytes(attest))
    assert e.check == "signature"
    assert "not signed by this host's enrolled attestation key" in e.message


@given(st.data())
def test_any_flipped_byte_of_the_signature_is_refused_by_the_signature(
    data: st.DataObject,
) -> None:
    """Every byte but the size field (for which see below)."""
    index = data.draw(
        st.integers(0, len(FIVE.signature) - 1).filter(lambda i: i not in (4, 5)), label="index"
    )
    signature = bytearray(FIVE.signature)
    signature[index] ^= data.draw(st.integers(1, 255))
    e = refusal(FIVE, signature=bytes(signature))
    assert e.check == "signature"
    if index < 4:
        assert "not RSASSA with SHA-256" in e.message
    else:
        assert "not signed by this host's enrolled attestation key" in e.message


@pytest.mark.parametrize(
    "signature",
    [
        FIVE.signature[:-1],
        FIVE.signature + b"\x00",
        FIVE.signature[:4] + struct.pack(">H", 513) + FIVE.signature[SIG_HEADER:],
    ],
    ids=["truncated", "trailing", "oversized"],
)
def test_malformed_signature_structure_is_refused(signature: bytes) -> None:
    e = refusal(FIVE, signature=signature)
    assert "the quote signature" in e.message


def test_rsapss_signature_is_refused() -> None:
    rsapss = struct.pack(">H", 0x0016) + FIVE.signature[2:]
    e = refusal(FIVE, signature=rsapss)
    assert (e.check, e.got) == ("signature", "algorithm 0x0016, hash 0x000b")


# nonce


def test_answer_to_another_nonce_is_refused() -> None:
    e = refusal(FIVE, nonce=THREE.nonce)
    assert e.check == "nonce"
    assert "not the nonce issued for this attestation" in e.message
    assert e.expected == hashlib.sha256(THREE.nonce).hexdigest()[:16]
    assert e.got == hashlib.sha256(FIVE.nonce).hexdigest()[:16]


@pytest.mark.parametrize(
    "nonce",
    [FIVE.nonce[:-1], FIVE.nonce + b"\x00", bytes([FIVE.nonce[0] ^ 1]) + FIVE.nonce[1:]],
    ids=["shorter", "longer", "one-bit"],
)
def test_nonce_must_match_exactly(nonce: bytes) -> None:
    assert refusal(FIVE, nonce=nonce).check == "nonce"


# PCR selection, values and digest


def test_quote_over_other_pcrs_than_asked_is_refused() -> None:
    e = refusal(FIVE, pcrs=PCRS[:-1])
    assert e.check == "pcr_selection"
    assert "covers other PCRs than were asked for" in e.message
    assert (e.expected, e.got) == ("0,1,2,3,4,5,6,7", "0,1,2,3,4,5,6,7,23")


def test_genuine_quote_hiding_the_container_pcr_is_refused() -> None:
    """The host quoted PCRs 0-7 only, with the nonce it was given: signed, fresh, and not what
    was asked."""
    e = refusal(NARROW, pcr_values={**NARROW.pcr_values, 23: FIVE.pcr_values[23]})
    assert e.check == "pcr_selection"
    assert (e.expected, e.got) == ("0,1,2,3,4,5,6,7,23", "0,1,2,3,4,5,6,7")


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({i: v for i, v in FIVE.pcr_values.items() if i != 23}, "not those of the quoted PCRs"),
        ({**FIVE.pcr_values, 8: bytes(32)}, "not those of the quoted PCRs"),
        ({**FIVE.pcr_values, 0: FIVE.pcr_values[0][:31]}, "PCR 0 value is not 32 bytes"),
        ({**FIVE.pcr_values, 23: FIVE.pcr_values[23] + b"\x00"}, "PCR 23 value is not 32 bytes"),
    ],
    ids=["missing", "extra", "short", "long"],
)
def test_pcr_values_not_those_quoted_are_refused(values: dict[int, bytes], needle: str) -> None:
    e = refusal(FIVE, pcr_values=values)
    assert e.check == "pcr_values"
    assert needle in e.message


def test_earlier_container_pcr_value_does_not_match_the_quoted_digest() -> None:
    """The PCR 23 value of an earlier quote: a genuine value, not the one quoted here."""
    forged = {**FIVE.pcr_values, 23: THREE.pcr_values[23]}
    e = refusal(FIVE, pcr_values=forged)
    assert e.check == "pcr_digest"
    assert "do not hash to the digest the TPM quoted" in e.message
    assert (e.expected, e.got) == (pcr_digest(FIVE.pcr_values), pcr_digest(forged))


@given(st.sampled_from(PCRS), st.binary(min_size=32, max_size=32))
def test_any_altered_pcr_value_is_refused_by_the_digest(index: int, value: bytes) -> None:
    if value == FIVE.pcr_values[index]:
        return
    e = refusal(FIVE, pcr_values={**FIVE.pcr_values, index: value})
    assert e.check == "pcr_digest"


# What is checked after the signature. A TPM's restricted AK signs only what the TPM made, so
# these structures are signed by a software key standing in for the AK: a positive control shows
# that the recorded attest re-signed so verifies, so each refusal is the alteration's.


@pytest.fixture(scope="module")
def software_ak() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def signed(key: rsa.RSAPrivateKey, attest: bytes) -> dict[str, Any]:
    sig = key.sign(attest, padding.PKCS1v15(), hashes.SHA256())
    signature = struct.pack(">HHH", TPM_ALG_RSASSA, TPM_ALG_SHA256, len(sig)) + sig
    ak = AttestationKey(public=b"", name=b"", rsa_key=key.public_key())
    return {"key": ak, "attest": attest, "signature": signature}


def altered_attest(**fields: Any) -> bytes:
    """FIVE's TPMS_ATTEST, unmarshaled by tpm2-pytss, fields replaced, marshaled again."""
    attest, used = TPMS_ATTEST.unmarshal(FIVE.attest)
    assert used == len(FIVE.attest)
    for name, value in fields.items():
        if name == "pcr_select":
            attest.attested.quote.pcrSelect = TPML_PCR_SELECTION.parse(value)
        else:
            setattr(attest, name, value)
    return bytes(attest.marshal())


def test_recorded_attest_signed_by_the_software_key_verifies(
    software_ak: rsa.RSAPrivateKey,
) -> None:
    assert altered_attest() == FIVE.attest
    assert verify(FIVE, **signed(software_ak, FIVE.attest)).pcr_values == FIVE.pcr_values


@pytest.mark.parametrize(
    ("attest", "check", "needle"),
    [
        (altered_attest(magic=0xFF544348), "quote", "not generated by a TPM"),
        (altered_attest(type=TPM2_ST.ATTEST_CERTIFY), "quote", "not a quote"),
        (FIVE.attest + b"\x00", "quote", "1 trailing bytes"),
        (FIVE.attest[:-1], "quote", "truncated"),
        (altered_attest(pcr_select="sha1:0,1,2,3,4,5,6,7,23"), "pcr_selection", "SHA-256 bank"),
        (
            altered_attest(pcr_select="sha1:0,1,2,3,4,5,6,7,23+sha256:0,1,2,3,4,5,6,7,23"),
            "pcr_selection",
            "exactly the SHA-256 bank",
        ),
        (
            altered_attest(pcr_select="sha256:0,1,2,3,4,5,6,7,23+sha1:0,1,2,3,4,5,6,7,23"),
            "pcr_selection",
            "exactly the SHA-256 bank",
        ),
    ],
    ids=[
        "magic",
        "type",
        "trailing",
        "truncated",
        "sha1-bank",
        "sha1-and-sha256",
        "sha256-and-sha1",
    ],
)
def test_signed_structure_that_is_not_a_sha256_quote_is_refused(
    software_ak: rsa.RSAPrivateKey, attest: bytes, check: str, needle: str
) -> None:
    e = refusal(FIVE, **signed(software_ak, attest))
    assert e.check == check
    assert needle in e.message
