"""The host attribute binding (attest/attributes.py, docs/attestation.md §12) with no TPM: each
check fed the certification an attacker would send."""

from __future__ import annotations

import hashlib

import pytest

from tests.softtpm import SoftTpm
from trusthook.attest.attributes import (
    NV_INDEX,
    TAG_SIZE,
    NvCertification,
    attributes_tag,
    index_name,
    nv_public,
    verify_attributes,
)
from trusthook.attest.identity import check_ak_public
from trusthook.errors import AttestationError

HOST = "ab" * 32
OTHER_HOST = "cd" * 32
NONCE = bytes(range(32))
TAG = attributes_tag(HOST, "eu", {"country": "DE", "pci": "true"})


@pytest.fixture(scope="module")
def tpm() -> SoftTpm:
    return SoftTpm()


def check(tpm: SoftTpm, certification: NvCertification | None, expected: bytes = TAG) -> None:
    verify_attributes(
        ak=check_ak_public(tpm.ak_public),
        nonce=NONCE,
        certification=certification,
        expected=expected,
    )


def certified(
    tpm: SoftTpm, contents: bytes = TAG, *, name: bytes | None = None, nonce: bytes = NONCE
) -> NvCertification:
    attest, signature = tpm.nv_certify(name or index_name(), contents, nonce)
    return NvCertification(attest=attest, signature=signature)


def refusal(tpm: SoftTpm, certification: NvCertification | None, expected: bytes = TAG) -> str:
    with pytest.raises(AttestationError) as caught:
        check(tpm, certification, expected)
    assert caught.value.check == "attributes"
    return caught.value.message


def test_the_tag_covers_host_group_and_attributes() -> None:
    assert len(TAG) == TAG_SIZE and TAG.startswith(b"THA1") and TAG[4:36] == bytes.fromhex(HOST)
    same = attributes_tag(HOST, "eu", {"pci": "true", "country": "DE"})  # order is no meaning
    assert same == TAG
    others = {
        attributes_tag(OTHER_HOST, "eu", {"country": "DE", "pci": "true"}),
        attributes_tag(HOST, "us", {"country": "DE", "pci": "true"}),
        attributes_tag(HOST, "eu", {"country": "FR", "pci": "true"}),
        attributes_tag(HOST, "eu", {"country": "DE"}),
    }
    assert TAG not in others and len(others) == 4
    with pytest.raises(ValueError, match="64 hexadecimal digits"):
        attributes_tag("abcd", "eu", {})


def test_the_index_name_is_its_written_public_area() -> None:
    area = nv_public(written=True).marshal()
    assert index_name() == b"\x00\x0b" + hashlib.sha256(area).digest()
    assert int(nv_public(written=True).nvIndex) == NV_INDEX
    assert nv_public(written=False).marshal() != area


def test_an_honest_certification_passes(tpm: SoftTpm) -> None:
    check(tpm, certified(tpm))


def test_no_certification(tpm: SoftTpm) -> None:
    assert "carries no certification" in refusal(tpm, None)


def test_rewritten_attributes(tpm: SoftTpm) -> None:
    rewritten = attributes_tag(HOST, "eu", {"country": "US", "pci": "true"})
    message = refusal(tpm, certified(tpm, rewritten))
    assert "other attributes than the operator assigned" in message


def test_contents_copied_from_another_host(tpm: SoftTpm) -> None:
    copied = attributes_tag(OTHER_HOST, "eu", {"country": "DE", "pci": "true"})
    assert "written for another host (cdcdcdcdcdcdcdcd" in refusal(tpm, certified(tpm, copied))


def test_not_a_tag(tpm: SoftTpm) -> None:
    assert "holds no trusthook tag" in refusal(tpm, certified(tpm, bytes(TAG_SIZE)))


def test_part_of_the_index(tpm: SoftTpm) -> None:
    assert "whole attribute index" in refusal(tpm, certified(tpm, TAG[:32]))
    attest, signature = tpm.nv_certify(index_name(), TAG, NONCE, offset=4)
    message = refusal(tpm, NvCertification(attest=attest, signature=signature))
    assert "whole attribute index" in message


def test_another_index(tpm: SoftTpm) -> None:
    foreign = nv_public(written=True)
    foreign.attributes |= 1 << 2  # TPMA_NV_AUTHWRITE: anyone with the index's auth writes it
    name = b"\x00\x0b" + hashlib.sha256(foreign.marshal()).digest()
    assert "as trusthook defines it" in refusal(tpm, certified(tpm, name=name))


def test_a_replayed_certification(tpm: SoftTpm) -> None:
    assert "another nonce" in refusal(tpm, certified(tpm, nonce=bytes(32)))


def test_signed_by_another_key(tpm: SoftTpm) -> None:
    other = SoftTpm()
    message = refusal(tpm, certified(other))
    assert "not signed by this host's AK" in message


def test_a_quote_is_no_nv_certification(tpm: SoftTpm) -> None:
    attest, signature = tpm.certify(tpm.request_public, NONCE)
    message = refusal(tpm, NvCertification(attest=attest, signature=signature))
    assert "not a TPM2_NV_Certify" in message


def test_altered_bytes(tpm: SoftTpm) -> None:
    honest = certified(tpm)
    altered = bytearray(honest.attest)
    altered[-1] ^= 1
    message = refusal(tpm, NvCertification(attest=bytes(altered), signature=honest.signature))
    assert "not signed by this host's AK" in message
    assert "truncated" in refusal(tpm, NvCertification(attest=honest.attest, signature=b"\x00"))
