"""verify_bind_key (attest/bindkey.py) on release keys certified by a software AK: the agent's
release-key template is accepted, and a key that other TPM users could use (userWithAuth set,
or an authPolicy other than PolicyAuthValue then PolicyCommandCode(RSA_Decrypt)) is refused
with its own reason. No TPM needed; tests/integration/test_release_key.py does it on swtpm."""

from __future__ import annotations

import hashlib
import struct

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st
from tpm2_pytss.constants import TPM2_CC, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC

from tests.softtpm import SoftTpm
from trusthook.agent.tpm import bind_key_template
from trusthook.attest.bindkey import RELEASE_KEY_POLICY, verify_bind_key
from trusthook.attest.identity import AttestationKey
from trusthook.errors import AttestationError

NONCE = b"N" * 32
AK = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RELEASE = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_area(template: TPM2B_PUBLIC) -> bytes:
    """``template`` with the release key's modulus, as the TPM answers CreatePrimary."""
    template.publicArea.unique.rsa = RELEASE.public_key().public_numbers().n.to_bytes(256, "big")
    return bytes(template.marshal())


def verify(public: bytes) -> rsa.RSAPublicKey:
    """``public`` through verify_bind_key, certified by the software AK with NONCE."""
    attest, signature = SoftTpm(ak=AK).certify(public, NONCE)
    return verify_bind_key(
        ak=AttestationKey(public=b"", name=b"", rsa_key=AK.public_key()),
        public=public,
        attest=attest,
        signature=signature,
        nonce=NONCE,
    )


def template(*, user_with_auth: bool, policy: bytes) -> TPM2B_PUBLIC:
    """The agent's release-key template with userWithAuth and authPolicy as given."""
    t = bind_key_template(bytes(32))
    attributes = t.publicArea.objectAttributes
    if user_with_auth:
        attributes |= TPMA_OBJECT.USERWITHAUTH
    t.publicArea.objectAttributes = attributes
    t.publicArea.authPolicy = policy
    return t


def refusal(public: bytes) -> AttestationError:
    with pytest.raises(AttestationError) as info:
        verify(public)
    assert info.value.check == "release_key"
    return info.value


def test_the_agents_release_key_is_accepted() -> None:
    key = verify(public_area(bind_key_template(bytes(32))))
    assert key.public_numbers() == RELEASE.public_key().public_numbers()


def test_the_policy_is_auth_value_then_rsa_decrypt_only() -> None:
    """TPM 2.0 Part 3: each policy command extends the digest with its command code (and, for
    PolicyCommandCode, the command it allows); the TPM checks the session's digest."""
    step1 = hashlib.sha256(bytes(32) + struct.pack(">I", TPM2_CC.PolicyAuthValue)).digest()
    allow = struct.pack(">II", TPM2_CC.PolicyCommandCode, TPM2_CC.RSA_Decrypt)
    assert hashlib.sha256(step1 + allow).digest() == RELEASE_KEY_POLICY


def test_a_key_without_the_policy_is_refused() -> None:
    """The release key as it was: userWithAuth, empty auth, no policy; any TPM user could
    recreate and use it."""
    e = refusal(public_area(template(user_with_auth=True, policy=b"")))
    assert "can be used with its auth value alone, outside its policy" in e.message
    assert e.expected == "userWithAuth clear"


def test_the_policy_with_user_with_auth_set_is_refused() -> None:
    e = refusal(public_area(template(user_with_auth=True, policy=RELEASE_KEY_POLICY)))
    assert "can be used with its auth value alone" in e.message


def test_no_policy_and_user_with_auth_clear_is_refused() -> None:
    e = refusal(public_area(template(user_with_auth=False, policy=b"")))
    assert "policy is not PolicyAuthValue then PolicyCommandCode(RSA_Decrypt)" in e.message
    assert (e.expected, e.got) == (RELEASE_KEY_POLICY.hex(), "no policy")


@given(st.binary(min_size=32, max_size=32).filter(lambda p: p != RELEASE_KEY_POLICY))
def test_any_other_policy_is_refused(policy: bytes) -> None:
    e = refusal(public_area(template(user_with_auth=False, policy=policy)))
    assert (e.expected, e.got) == (RELEASE_KEY_POLICY.hex(), policy.hex())
