"""The TPM release key against a real swtpm: the server's check of its TPM2_Certify, every way
that check refuses, the release envelope that only this TPM can open, and the key only the
holder of the agent's release-key secret can make and use."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from tpm2_pytss import (
    ESYS_TR,
    TPM2_ALG,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMA_OBJECT,
    TPMT_RSA_DECRYPT,
    TPMT_SIG_SCHEME,
    TSS2_Exception,
)

from trusthook._devenv.swtpm import Swtpm
from trusthook.agent.tpm import Tpm, ak_template, bind_key_template
from trusthook.attest.bindkey import verify_bind_key
from trusthook.attest.identity import check_ak_public
from trusthook.errors import AttestationError, ImageCryptError, TPMError
from trusthook.image.envelope import associated_data, open_sealed, seal

pytestmark = pytest.mark.integration
NONCE = b"N" * 32
SECRET = b"S" * 32  # the agent's release-key secret (<state_dir>/release-key.secret)


def _tpm(swtpm: Swtpm) -> Tpm:
    return Tpm(swtpm.tcti, release_secret=SECRET)


def _certified(swtpm: Swtpm, nonce: bytes = NONCE) -> tuple[bytes, bytes, bytes, bytes]:
    with _tpm(swtpm) as tpm:
        public, attest, signature = tpm.certify_bind_key(nonce)
        return tpm.ak_public(), public, attest, signature


def _verify(ak: bytes, public: bytes, attest: bytes, signature: bytes) -> rsa.RSAPublicKey:
    return verify_bind_key(
        ak=check_ak_public(ak), public=public, attest=attest, signature=signature, nonce=NONCE
    )


def test_a_certified_release_key_verifies_and_only_its_tpm_opens_the_envelope(
    swtpm: Swtpm,
) -> None:
    ak, public, attest, signature = _certified(swtpm)
    key = _verify(ak, public, attest, signature)
    aad = associated_data(host_id="h" * 64, image="sha256:" + "a" * 64, nonce=NONCE)
    envelope = seal(key, {"sha256:" + "b" * 64: b'{"symkey":"..."}'}, aad)
    with _tpm(swtpm) as tpm:
        opened = open_sealed(envelope, tpm.unseal_release, aad)
    assert opened == {"sha256:" + "b" * 64: b'{"symkey":"..."}'}
    other = associated_data(host_id="h" * 64, image="sha256:" + "c" * 64, nonce=NONCE)
    with _tpm(swtpm) as tpm, pytest.raises(ImageCryptError, match="does not decrypt for"):
        open_sealed(envelope, tpm.unseal_release, other)


def test_the_release_key_is_the_same_after_reopening(swtpm: Swtpm) -> None:
    assert _certified(swtpm)[1] == _certified(swtpm)[1]


def test_another_tpm_cannot_open_the_envelope(swtpm: Swtpm, tpm_template: object) -> None:
    ak, public, attest, signature = _certified(swtpm)
    key = _verify(ak, public, attest, signature)
    envelope = seal(key, {}, b"aad")
    # The same TPM restarted with a different endorsement seed is another TPM: change the
    # endorsement hierarchy's seed with TPM2_ChangeEPS.
    with _tpm(swtpm) as tpm:
        tpm._ectx.change_eps(ESYS_TR.RH_PLATFORM)
    with _tpm(swtpm) as tpm, pytest.raises(TPMError, match="not made for this TPM"):
        open_sealed(envelope, tpm.unseal_release, b"aad")


def test_a_certification_over_another_nonce_is_refused(swtpm: Swtpm) -> None:
    ak, public, attest, signature = _certified(swtpm, nonce=b"M" * 32)
    with pytest.raises(AttestationError, match="does not carry this exchange's qualifying data"):
        _verify(ak, public, attest, signature)


def test_an_altered_certification_is_refused(swtpm: Swtpm) -> None:
    ak, public, attest, signature = _certified(swtpm)
    tampered = bytearray(attest)
    tampered[-1] ^= 1
    with pytest.raises(AttestationError, match="not signed by this host's AK"):
        _verify(ak, public, bytes(tampered), signature)


def test_a_key_other_than_the_certified_one_is_refused(swtpm: Swtpm) -> None:
    ak, _public, attest, signature = _certified(swtpm)
    other = rsa.generate_private_key(65537, 2048).public_key()
    with _tpm(swtpm) as tpm:
        public = tpm.certify_bind_key(NONCE)[0]
    swapped = public[:-256] + other.public_numbers().n.to_bytes(256, "big")
    with pytest.raises(AttestationError, match="names another key"):
        _verify(ak, swapped, attest, signature)


def test_a_certified_signing_key_is_not_a_release_key(swtpm: Swtpm) -> None:
    """The AK certifying itself: a genuine certification of a key that is not for decryption."""
    with _tpm(swtpm) as tpm:
        ak_public = tpm.ak_public()
        ectx = tpm._ectx
        handle, public, _, _, _ = ectx.create_primary(
            TPM2B_SENSITIVE_CREATE(), ak_template(), ESYS_TR.ENDORSEMENT
        )
        attested, sig = ectx.certify(handle, handle, NONCE, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
        ectx.flush_context(handle)
    with pytest.raises(AttestationError, match="not a plain decryption key"):
        _verify(ak_public, public.marshal(), bytes(attested), sig.marshal())


def test_a_malformed_envelope_is_refused() -> None:
    bad = {"encrypted_seed": "!!", "iv": base64.b64encode(b"x" * 12).decode(), "ciphertext": ""}
    with pytest.raises(ImageCryptError, match="encrypted_seed is not valid base64"):
        open_sealed(bad, lambda data: data, b"")
    short = {"encrypted_seed": base64.b64encode(b"s").decode(), "iv": "", "ciphertext": ""}
    with pytest.raises(ImageCryptError, match="wrong size"):
        open_sealed(short, lambda data: data, b"")


def test_a_quote_is_not_a_key_certification(swtpm: Swtpm) -> None:
    """A genuine AK signature over the wrong structure: a quote carrying the nonce."""
    with _tpm(swtpm) as tpm:
        quote = tpm.quote([23], NONCE)
        ak, public = tpm.ak_public(), tpm.certify_bind_key(NONCE)[0]
    with pytest.raises(AttestationError, match="not a TPM2_Certify"):
        _verify(ak, public, quote.attest, quote.signature)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("rsa2048:null:null", "scheme is not RSA-OAEP with SHA-256"),
        ("rsa3072:oaep-sha256:null", "is not RSA-2048"),
        ("ecc256:null:null", "is not an RSA key"),
    ],
)
def test_a_certified_key_of_the_wrong_kind_is_refused(
    swtpm: Swtpm, template: str, message: str
) -> None:
    attrs = (
        TPMA_OBJECT.DECRYPT
        | TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH
    )
    public_template = TPM2B_PUBLIC.parse(template, nameAlg="sha256", objectAttributes=attrs)
    with _tpm(swtpm) as tpm:
        ak_public = tpm.ak_public()
        tpm.certify_bind_key(NONCE)  # loads the AK
        ectx = tpm._ectx
        handle, public, _, _, _ = ectx.create_primary(
            TPM2B_SENSITIVE_CREATE(), public_template, ESYS_TR.ENDORSEMENT
        )
        ak = tpm._ak
        assert ak is not None
        attested, sig = ectx.certify(handle, ak, NONCE, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL))
        ectx.flush_context(handle)
    with pytest.raises(AttestationError, match=message):
        _verify(ak_public, public.marshal(), bytes(attested), sig.marshal())


def test_a_malformed_release_key_is_refused(swtpm: Swtpm) -> None:
    ak, public, attest, signature = _certified(swtpm)
    with pytest.raises(AttestationError, match="release key public area has 3 trailing bytes"):
        _verify(ak, public + b"xyz", attest, signature)
    with pytest.raises(AttestationError, match="release key public area is malformed"):
        _verify(ak, public[:40], attest, signature)


def test_only_the_secrets_holder_can_make_and_use_the_release_key(swtpm: Swtpm) -> None:
    """What the policy and the secret are for: another TPM user who recreates the primary from
    the public template, or with another secret, gets another key; the agent's key refuses
    TPM2_RSA_Decrypt outside its policy session, even with its auth value."""
    ak, public, attest, signature = _certified(swtpm)
    key = _verify(ak, public, attest, signature)
    ciphertext = key.encrypt(
        b"seed", padding.OAEP(padding.MGF1(hashes.SHA256()), hashes.SHA256(), None)
    )
    with Tpm(swtpm.tcti, release_secret=b"x" * 32) as other:
        assert other.certify_bind_key(NONCE)[0] != public
        with pytest.raises(TPMError, match="not made for this TPM"):
            other.unseal_release(ciphertext)
    with Tpm(swtpm.tcti) as tpm, pytest.raises(TPMError, match="needs the agent's release-key"):
        tpm.certify_bind_key(NONCE)
    with _tpm(swtpm) as tpm:
        ectx = tpm._ectx
        handle, recreated, _, _, _ = ectx.create_primary(
            TPM2B_SENSITIVE_CREATE(), bind_key_template(b""), ESYS_TR.ENDORSEMENT
        )
        ectx.flush_context(handle)
        assert recreated.marshal() != public
        tpm.certify_bind_key(NONCE)  # loads the agent's key
        bind = tpm._bind
        assert bind is not None
        with pytest.raises(TSS2_Exception, match="authValue or authPolicy is not available"):
            ectx.rsa_decrypt(bind, ciphertext, TPMT_RSA_DECRYPT(scheme=TPM2_ALG.NULL), b"")
        assert tpm.unseal_release(ciphertext) == b"seed"
