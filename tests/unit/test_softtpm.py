"""The software TPM the load generator's simulated hosts use (bench/attestation/fleet.py): what
it answers must be what a TPM answers, or the load would measure another server path. Checked
against the server's own MakeCredential and verifiers."""

from __future__ import annotations

import os

import pytest
from tpm2_pytss.types import TPM2B_PUBLIC

from tests.softtpm import Clock, SoftEk, SoftTpm, name_of
from trusthook.attest.identity import check_ak_public, make_credential
from trusthook.attest.quote import verify_quote
from trusthook.errors import AttestationError


@pytest.fixture(scope="module")
def ek() -> SoftEk:
    return SoftEk()


@pytest.fixture(scope="module")
def tpm() -> SoftTpm:
    return SoftTpm()


def test_it_activates_the_servers_credential_for_its_ak_only(ek: SoftEk, tpm: SoftTpm) -> None:
    public, _ = TPM2B_PUBLIC.unmarshal(ek.public)
    ak = check_ak_public(tpm.ak_public)
    assert ak.name == name_of(tpm.ak_public)
    secret = os.urandom(32)
    blob, encrypted = make_credential(public, secret, ak.name)
    assert ek.activate_credential(blob, encrypted, ak.name) == secret
    with pytest.raises(ValueError, match="integrity HMAC"):
        ek.activate_credential(blob, encrypted, name_of(SoftTpm().ak_public))
    other_public, _ = TPM2B_PUBLIC.unmarshal(SoftEk().public)
    blob, encrypted = make_credential(other_public, secret, ak.name)
    with pytest.raises(ValueError):  # sealed to another EK: OAEP refuses the seed
        ek.activate_credential(blob, encrypted, ak.name)


def test_its_quotes_verify_as_a_tpms(tpm: SoftTpm) -> None:
    values = {0: bytes(32), 23: bytes(range(32))}
    nonce = os.urandom(32)
    attest, signature = tpm.quote(values, nonce, Clock(clock=5000, reset_count=3))
    key = check_ak_public(tpm.ak_public)
    quote = verify_quote(
        key=key, attest=attest, signature=signature, nonce=nonce, pcrs=(0, 23), pcr_values=values
    )
    assert (quote.clock.clock, quote.clock.reset_count, quote.clock.safe) == (5000, 3, 1)
    with pytest.raises(AttestationError):
        verify_quote(
            key=key,
            attest=attest,
            signature=signature,
            nonce=nonce,
            pcrs=(0, 23),
            pcr_values={**values, 23: bytes(32)},
        )
