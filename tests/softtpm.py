"""Software stand-ins for a host's AK and request key that produce the TPM's wire structures
(TPM2B_PUBLIC, TPMS_ATTEST of TPM2_Certify, TPMT_SIGNATURE), for testing the verifiers with
no TPM. The templates are the agent's own (``ak_template``, ``request_key_template``) with the
software keys' public numbers filled in, as TPM2_CreatePrimary answers them."""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from tpm2_pytss.constants import TPM2_GENERATED, TPM2_ST
from tpm2_pytss.types import (
    TPM2B_DATA,
    TPM2B_DIGEST,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_MAX_NV_BUFFER,
    TPM2B_NAME,
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_CERTIFY_INFO,
    TPMS_CLOCK_INFO,
    TPMS_NV_CERTIFY_INFO,
    TPMS_QUOTE_INFO,
    TPMU_ATTEST,
)
from tpm2_pytss.utils import NoSuchIndex, create_ek_template

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


@dataclass(frozen=True)
class Clock:
    """The TPMS_CLOCK_INFO a signed structure carries (safe is always 1)."""

    clock: int = 1
    reset_count: int = 1
    restart_count: int = 0


@dataclass
class SoftEk:
    """An RSA-2048 EK in software (TCG template L-1, as the agent reads the TPM's) that answers
    TPM2_ActivateCredential as a TPM does (TPM 2.0 Part 1 §24: RSA-OAEP seed with label
    "IDENTITY", KDFa "INTEGRITY" and "STORAGE", AES-128-CFB)."""

    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )

    @property
    def public(self) -> bytes:
        template = create_ek_template("EK-RSA2048", _no_nv_template)[1]
        template.publicArea.unique.rsa = (
            self.key.public_key().public_numbers().n.to_bytes(256, "big")
        )
        return bytes(template.marshal())

    def activate_credential(self, blob: bytes, encrypted_secret: bytes, name: bytes) -> bytes:
        """The credential that ``blob`` (a marshaled TPM2B_ID_OBJECT) seals to this EK for
        the object ``name``; ValueError if the integrity HMAC does not hold."""
        secret, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(encrypted_secret)
        oaep = padding.OAEP(
            mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"IDENTITY\0"
        )
        seed = self.key.decrypt(bytes(secret), oaep)
        identity, _ = TPM2B_ID_OBJECT.unmarshal(blob)
        raw = bytes(identity)
        (size,) = struct.unpack(">H", raw[:2])
        integrity, encrypted = raw[2 : 2 + size], raw[2 + size :]
        hmac_key = kdfa(seed, b"INTEGRITY", b"", 256)
        expected = hmac.new(hmac_key, encrypted + name, hashlib.sha256).digest()
        if not hmac.compare_digest(expected, integrity):
            raise ValueError("the credential's integrity HMAC does not hold")
        sym = kdfa(seed, b"STORAGE", name, 128)
        decryptor = Cipher(algorithms.AES(sym), CFB(bytes(16))).decryptor()
        plain = decryptor.update(encrypted) + decryptor.finalize()
        (length,) = struct.unpack(">H", plain[:2])
        return plain[2 : 2 + length]


def _no_nv_template(index: int) -> bytes:
    raise NoSuchIndex(index)  # the EK template's NV indices: none, the default template


def kdfa(key: bytes, label: bytes, context: bytes, bits: int) -> bytes:
    """KDFa with SHA-256 (TPM 2.0 Part 1 §11.4.10.2), contextV empty."""
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        data = struct.pack(">I", counter) + label + b"\0" + context + struct.pack(">I", bits)
        out += hmac.new(key, data, hashlib.sha256).digest()
        counter += 1
    return out[: bits // 8]


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

    def quote(
        self, values: Mapping[int, bytes], nonce: bytes, clock: Clock = Clock()
    ) -> tuple[bytes, bytes]:
        """A TPM2_Quote by the AK of SHA-256 PCRs ``values`` (index: value) with ``nonce``:
        the TPMS_ATTEST and the marshaled RSASSA TPMT_SIGNATURE."""
        selection = TPML_PCR_SELECTION.parse("sha256:" + ",".join(map(str, sorted(values))))
        digest = hashlib.sha256(b"".join(values[i] for i in sorted(values))).digest()
        info = TPMS_QUOTE_INFO(pcrSelect=selection, pcrDigest=TPM2B_DIGEST(digest))
        return self._signed(TPM2_ST.ATTEST_QUOTE, nonce, TPMU_ATTEST(quote=info), clock)

    def _signed(
        self, kind: int, qualifying: bytes, attested: TPMU_ATTEST, clock: Clock = Clock()
    ) -> tuple[bytes, bytes]:
        attest = TPMS_ATTEST(
            magic=TPM2_GENERATED.VALUE,
            type=kind,
            qualifiedSigner=TPM2B_NAME(b"\x00\x0b" + bytes(32)),
            extraData=TPM2B_DATA(qualifying),
            clockInfo=TPMS_CLOCK_INFO(
                clock=clock.clock,
                resetCount=clock.reset_count,
                restartCount=clock.restart_count,
                safe=1,
            ),
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
