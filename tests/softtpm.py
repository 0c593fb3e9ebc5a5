"""Software stand-ins for a host's AK and request key that produce the TPM's wire structures
(TPM2B_PUBLIC, TPMS_ATTEST of TPM2_Certify, TPMT_SIGNATURE), for testing the verifiers with
no TPM. The templates are the agent's own (``ak_template``, ``request_key_template``) with the
software keys' public numbers filled in, as TPM2_CreatePrimary answers them."""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from tpm2_pytss.constants import TPM2_GENERATED, TPM2_ST
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_MAX_NV_BUFFER,
    TPM2B_NAME,
    TPM2B_PUBLIC,
    TPMS_ATTEST,
    TPMS_CERTIFY_INFO,
    TPMS_CLOCK_INFO,
    TPMS_NV_CERTIFY_INFO,
    TPMU_ATTEST,
)

from trusthook.agent.tpm import ak_template, request_key_template
from trusthook.attest.tpmwire import TPM_ALG_ECDSA, TPM_ALG_RSASSA, TPM_ALG_SHA256


def name_of(public: bytes) -> bytes:
    """The TPM name (SHA-256) of a marshaled TPM2B_PUBLIC."""
    area, _ = TPM2B_PUBLIC.unmarshal(public)
    return b"\x00\x0b" + hashlib.sha256(area.publicArea.marshal()).digest()


def ecc_public(template: TPM2B_PUBLIC, key: ec.EllipticCurvePrivateKey) -> bytes:
    """``template`` with ``key``'s point: a marshaled TPM2B_PUBLIC."""
    numbers = key.public_key().public_numbers()
    template.publicArea.unique.ecc.x = numbers.x.to_bytes(32, "big")
    template.publicArea.unique.ecc.y = numbers.y.to_bytes(32, "big")
    return bytes(template.marshal())


def ecdsa_signature(key: ec.EllipticCurvePrivateKey, digest: bytes) -> bytes:
    """A marshaled ECDSA-SHA256 TPMT_SIGNATURE by ``key`` over ``digest``."""
    r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
    rb, sb = r.to_bytes(32, "big"), s.to_bytes(32, "big")
    return struct.pack(">HHH", TPM_ALG_ECDSA, TPM_ALG_SHA256, 32) + rb + struct.pack(">H", 32) + sb


@dataclass
class SoftTpm:
    """An AK and a request key in software."""

    ak: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    request: ec.EllipticCurvePrivateKey = field(
        default_factory=lambda: ec.generate_private_key(ec.SECP256R1())
    )

    @property
    def ak_public(self) -> bytes:
        template = ak_template()
        template.publicArea.unique.rsa = (
            self.ak.public_key().public_numbers().n.to_bytes(256, "big")
        )
        return bytes(template.marshal())

    @property
    def request_public(self) -> bytes:
        return ecc_public(request_key_template(bytes(32)), self.request)

    def certify(self, public: bytes, qualifying: bytes) -> tuple[bytes, bytes]:
        """A TPM2_Certify of the key in ``public`` by the AK: the TPMS_ATTEST and the marshaled
        RSASSA TPMT_SIGNATURE."""
        name = TPM2B_NAME(name_of(public))
        certified = TPMU_ATTEST(certify=TPMS_CERTIFY_INFO(name=name, qualifiedName=name))
        return self._signed(TPM2_ST.ATTEST_CERTIFY, qualifying, certified)

    def nv_certify(
        self, name: bytes, contents: bytes, qualifying: bytes, *, offset: int = 0
    ) -> tuple[bytes, bytes]:
        """A TPM2_NV_Certify by the AK of an index named ``name`` holding ``contents`` at
        ``offset``: the TPMS_ATTEST and the marshaled RSASSA TPMT_SIGNATURE."""
        info = TPMS_NV_CERTIFY_INFO(
            indexName=TPM2B_NAME(name), offset=offset, nvContents=TPM2B_MAX_NV_BUFFER(contents)
        )
        return self._signed(TPM2_ST.ATTEST_NV, qualifying, TPMU_ATTEST(nv=info))

    def _signed(self, kind: int, qualifying: bytes, attested: TPMU_ATTEST) -> tuple[bytes, bytes]:
        attest = TPMS_ATTEST(
            magic=TPM2_GENERATED.VALUE,
            type=kind,
            qualifiedSigner=TPM2B_NAME(b"\x00\x0b" + bytes(32)),
            extraData=TPM2B_DATA(qualifying),
            clockInfo=TPMS_CLOCK_INFO(clock=1, resetCount=1, restartCount=0, safe=1),
            firmwareVersion=0,
            attested=attested,
        )
        data = bytes(attest.marshal())
        sig = self.ak.sign(data, padding.PKCS1v15(), hashes.SHA256())
        return data, struct.pack(">HHH", TPM_ALG_RSASSA, TPM_ALG_SHA256, len(sig)) + sig

    def certify_request_key(self, qualifying: bytes) -> tuple[bytes, bytes, bytes]:
        """As ``Tpm.certify_request_key``: public, attest, signature."""
        public = self.request_public
        return (public, *self.certify(public, qualifying))

    def sign_request(self, digest: bytes) -> bytes:
        """As ``Tpm.sign_request``."""
        return ecdsa_signature(self.request, digest)
