"""Verify a host's TPM identity with no TPM: EK certificate chain, EK and AK public areas, and
the credential that proves the AK lives in the same TPM as the EK.

Pure: bytes in, typed objects out, or ``EnrollmentError`` naming what was refused. The EK CA
bundle is the operator's trust configuration. Its trust anchors are its roots (self-signed:
subject and issuer equal, and the certificate's own key verifies its signature) and the
certificates the operator names explicitly by the SHA-256 of their DER form (a vendor that
publishes an intermediate without its root: ``[server] ek_ca_anchors``). Every other bundle
certificate is an intermediate, which is believed only as part of a chain that ends at an
anchor. The chain is built by issuer name and checked by signature, not by ``cryptography``'s
verifier, which enforces a web-PKI profile that EK certificates (critical SAN of TPM
attributes, empty or odd subjects) do not meet.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import TPM2_ALG, TPMA_OBJECT
from tpm2_pytss.types import TPM2B_PUBLIC
from tpm2_pytss.utils import make_credential as _tpm2_make_credential

from trusthook.errors import ConfigError, EnrollmentError

MAX_CHAIN_DEPTH = 5
RSA_BITS = 2048
DEFAULT_EXPONENT = 65537
# TCG EK Credential Profile, template L-1: PolicySecret(TPM_RH_ENDORSEMENT).
EK_POLICY = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
EK_ATTRIBUTES = (
    TPMA_OBJECT.FIXEDTPM
    | TPMA_OBJECT.FIXEDPARENT
    | TPMA_OBJECT.SENSITIVEDATAORIGIN
    | TPMA_OBJECT.ADMINWITHPOLICY
    | TPMA_OBJECT.RESTRICTED
    | TPMA_OBJECT.DECRYPT
)
AK_REQUIRED = (
    TPMA_OBJECT.FIXEDTPM,
    TPMA_OBJECT.FIXEDPARENT,
    TPMA_OBJECT.SENSITIVEDATAORIGIN,
    TPMA_OBJECT.RESTRICTED,
    TPMA_OBJECT.SIGN_ENCRYPT,
)


@dataclass(frozen=True, slots=True)
class AttestationKey:
    """A checked AK: its public area as the host sent it, its TPM name and its RSA key."""

    public: bytes
    name: bytes
    rsa_key: rsa.RSAPublicKey = field(repr=False, compare=False)

    def public_key(self) -> rsa.RSAPublicKey:
        """The AK as a ``cryptography`` key, for verifying quote signatures."""
        return self.rsa_key


def load_ca_bundle(pem: bytes, source: str) -> tuple[x509.Certificate, ...]:
    """The certificates of a PEM bundle; ConfigError if it holds none or one is malformed."""
    try:
        certificates = x509.load_pem_x509_certificates(pem)
        for certificate in certificates:
            _names(certificate)
    except (ValueError, x509.InvalidVersion) as e:
        raise ConfigError(f"EK CA bundle {source} has no readable PEM certificates: {e}") from e
    return tuple(certificates)


def _names(certificate: x509.Certificate) -> None:
    """Read the issuer and subject now: cryptography parses names only when asked, so a
    malformed one would raise a bare ValueError wherever a check first looks (found by the
    http_body fuzz target)."""
    _ = certificate.issuer, certificate.subject


def fingerprint(certificate: x509.Certificate) -> str:
    """SHA-256 of the certificate's DER form, lowercase hex: how an anchor is named."""
    return certificate.fingerprint(hashes.SHA256()).hex()


def check_anchors(
    bundle: Sequence[x509.Certificate], anchors: Collection[str], source: str
) -> frozenset[str]:
    """The named anchors, once each is the fingerprint of a certificate in ``bundle``;
    ConfigError naming the first that is not (a typo would leave a chain without its anchor)."""
    present = {fingerprint(c) for c in bundle}
    for anchor in sorted(anchors):
        if anchor not in present:
            raise ConfigError(
                f"EK CA anchor {anchor} is not the SHA-256 of any certificate in the EK CA bundle"
                f" {source} ({len(bundle)} certificates); expected one of {sorted(present)}"
            )
    return frozenset(anchors)


def verify_ek_certificate(
    der: bytes,
    bundle: Sequence[x509.Certificate],
    now: datetime,
    anchors: Collection[str] = frozenset(),
) -> x509.Certificate:
    """The EK certificate in ``der`` once it chains, valid at ``now`` (timezone-aware), through
    ``bundle`` to a trust anchor: a self-signed bundle certificate, or one whose fingerprint is
    in ``anchors``. EnrollmentError otherwise."""
    try:
        certificate = x509.load_der_x509_certificate(der)
        _names(certificate)
    except (ValueError, x509.InvalidVersion) as e:  # InvalidVersion: no ValueError
        raise EnrollmentError(f"EK certificate is not a DER X.509 certificate: {e}") from e
    _check_validity(certificate, "EK certificate", now)
    subject, what = certificate, "EK certificate"
    for depth in range(MAX_CHAIN_DEPTH):
        candidates = [c for c in bundle if c.subject == subject.issuer]
        if not candidates:
            if depth == 0:
                raise EnrollmentError(
                    f"EK certificate issuer {_name(subject.issuer)} is not in the EK CA bundle"
                    f" ({len(bundle)} certificates)"
                )
            raise EnrollmentError(
                f"EK certificate chain ends at {_name(subject.subject)}, which is not a trust"
                f" anchor: got no certificate for its issuer {_name(subject.issuer)} in the EK"
                " CA bundle, expected a chain to a root; add that root to the bundle, or name"
                f" the intermediate an anchor ([server] ek_ca_anchors = [{fingerprint(subject)!r}])"
            )
        issuer = _signer(subject, candidates, what)
        _check_ca(issuer, depth, what, now)
        if fingerprint(issuer) in anchors or _self_signed(issuer):
            return certificate
        subject, what = issuer, f"CA certificate {_name(issuer.subject)}"
    raise EnrollmentError(
        f"EK certificate chain is longer than {MAX_CHAIN_DEPTH} CA certificates in the bundle"
    )


def _self_signed(certificate: x509.Certificate) -> bool:
    """A root: its own issuer, and its own key verifies its signature (a certificate that
    merely repeats its subject as issuer, signed by another key, is not one)."""
    if certificate.issuer != certificate.subject:
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


def check_ek_public(ek_public: bytes, certificate: x509.Certificate) -> TPM2B_PUBLIC:
    """The EK public area once it is the standard RSA 2048 EK (TCG template L-1) holding the
    key that ``certificate`` certifies; EnrollmentError otherwise."""
    public = _unmarshal_public(ek_public, "EK public area")
    area = public.publicArea
    _check_rsa(area, "EK")
    attributes = int(area.objectAttributes)
    if attributes != EK_ATTRIBUTES:
        raise EnrollmentError(
            f"EK object attributes got {_attributes(attributes)},"
            f" expected {_attributes(EK_ATTRIBUTES)} (the standard EK template)"
        )
    policy = bytes(area.authPolicy)
    if policy != EK_POLICY:
        raise EnrollmentError(
            f"EK authPolicy got {policy.hex() or 'empty'}, expected {EK_POLICY.hex()}"
            " (PolicySecret of the endorsement hierarchy)"
        )
    symmetric = area.parameters.rsaDetail.symmetric
    sym = (int(symmetric.algorithm), int(symmetric.keyBits.aes), int(symmetric.mode.aes))
    if sym != (TPM2_ALG.AES, 128, TPM2_ALG.CFB):
        raise EnrollmentError(
            f"EK symmetric algorithm got {_alg(sym[0])}-{sym[1]}-{_alg(sym[2])},"
            " expected aes-128-cfb"
        )
    try:
        certified = certificate.public_key()
    except (ValueError, UnsupportedAlgorithm) as e:
        raise EnrollmentError(f"EK certificate's public key cannot be read: {e}") from e
    if not isinstance(certified, rsa.RSAPublicKey):
        raise EnrollmentError(
            f"EK certificate holds a {type(certified).__name__} key, expected RSA {RSA_BITS}"
        )
    numbers = certified.public_numbers()
    modulus, exponent = _rsa_numbers(area)
    if (modulus, exponent) != (numbers.n, numbers.e):
        raise EnrollmentError(
            f"EK public key got modulus {_fingerprint(modulus)} exponent {exponent}, expected"
            f" the EK certificate's modulus {_fingerprint(numbers.n)} exponent {numbers.e}"
        )
    return public


def check_ak_public(ak_public: bytes) -> AttestationKey:
    """The AK once it is a restricted RSA 2048 signing key (RSASSA-SHA256) that cannot leave
    its TPM; EnrollmentError naming the first property it lacks otherwise."""
    public = _unmarshal_public(ak_public, "AK public area")
    area = public.publicArea
    _check_rsa(area, "AK")
    attributes = int(area.objectAttributes)
    for required in AK_REQUIRED:
        if not attributes & required:
            raise EnrollmentError(
                f"AK object attributes got {_attributes(attributes)}, expected {required} to be set"
            )
    if attributes & TPMA_OBJECT.DECRYPT:
        raise EnrollmentError(
            f"AK object attributes got {_attributes(attributes)}, expected decrypt to be clear"
            " (an attestation key only signs)"
        )
    scheme = area.parameters.rsaDetail.scheme
    got = (int(scheme.scheme), int(scheme.details.rsassa.hashAlg))
    if got != (TPM2_ALG.RSASSA, TPM2_ALG.SHA256):
        raise EnrollmentError(
            f"AK signing scheme got {_alg(got[0])}-{_alg(got[1])}, expected rsassa-sha256"
        )
    modulus, exponent = _rsa_numbers(area)
    name = int(TPM2_ALG.SHA256).to_bytes(2, "big") + hashlib.sha256(area.marshal()).digest()
    try:
        key = rsa.RSAPublicNumbers(exponent, modulus).public_key()
    except ValueError as e:  # an even modulus or exponent, an exponent below 3
        raise EnrollmentError(
            f"AK RSA key got exponent {exponent} and modulus {_fingerprint(modulus)}, expected"
            f" a valid RSA public key ({e})"
        ) from e
    return AttestationKey(public=ak_public, name=name, rsa_key=key)


def make_credential(ek: TPM2B_PUBLIC, secret: bytes, ak_name: bytes) -> tuple[bytes, bytes]:
    """Seal ``secret`` to ``ek`` for the object named ``ak_name``: the marshaled
    ``TPM2B_ID_OBJECT`` and ``TPM2B_ENCRYPTED_SECRET`` that TPM2_ActivateCredential takes."""
    blob, encrypted = _tpm2_make_credential(ek, secret, ak_name)
    return bytes(blob.marshal()), bytes(encrypted.marshal())


def _name(name: x509.Name) -> str:
    return name.rfc4514_string() or "(empty name)"


def _check_validity(certificate: x509.Certificate, what: str, now: datetime) -> None:
    start, end = certificate.not_valid_before_utc, certificate.not_valid_after_utc
    if now < start:
        raise EnrollmentError(
            f"{what} is not yet valid: now is {now.isoformat()}, valid from {start.isoformat()}"
        )
    if now > end:
        raise EnrollmentError(
            f"{what} has expired: now is {now.isoformat()}, valid until {end.isoformat()}"
        )


def _signer(
    certificate: x509.Certificate, candidates: Sequence[x509.Certificate], what: str
) -> x509.Certificate:
    """The candidate whose key signed ``certificate`` (several may share a name: rollover)."""
    for candidate in candidates:
        try:
            certificate.verify_directly_issued_by(candidate)
        except (InvalidSignature, ValueError, TypeError):
            continue
        return candidate
    raise EnrollmentError(
        f"{what} signature does not verify with the key of any CA bundle certificate named"
        f" {_name(certificate.issuer)} ({len(candidates)} tried)"
    )


def _check_ca(ca: x509.Certificate, below: int, what: str, now: datetime) -> None:
    """``ca`` may issue ``what``, which has ``below`` CA certificates under it in the chain."""
    name = _name(ca.subject)
    try:
        constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        raise EnrollmentError(
            f"{what} issuer {name} is not a CA: got no basicConstraints, expected ca=True"
        ) from None
    if not constraints.ca:
        raise EnrollmentError(f"{what} issuer {name} is not a CA: got ca=False, expected ca=True")
    if constraints.path_length is not None and below > constraints.path_length:
        raise EnrollmentError(
            f"{what} issuer {name} allows {constraints.path_length} CAs below it, got {below}"
        )
    try:
        usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is not None and not usage.key_cert_sign:
        raise EnrollmentError(
            f"{what} issuer {name} may not sign certificates: its keyUsage lacks keyCertSign"
        )
    _check_validity(ca, f"CA certificate {name}", now)


def _unmarshal_public(data: bytes, what: str) -> TPM2B_PUBLIC:
    try:
        public, used = TPM2B_PUBLIC.unmarshal(data)
    except TSS2_Exception as e:
        raise EnrollmentError(f"{what} is not a marshaled TPM2B_PUBLIC: {e}") from e
    if used != len(data):
        raise EnrollmentError(
            f"{what} is malformed: got {len(data)} bytes, a TPM2B_PUBLIC unmarshals from the"
            f" first {used}"
        )
    # tpm2-pytss does not check the TPM2B size field against the area it frames; the TPM
    # name is over the area as re-marshaled, so refuse anything that does not round-trip.
    try:
        again = bytes(public.marshal())
    except TSS2_Exception as e:  # it unmarshals values it refuses to marshal (bad selectors)
        raise EnrollmentError(f"{what} is malformed: it does not marshal again ({e})") from e
    if again != data:
        raise EnrollmentError(
            f"{what} is not canonically marshaled: its size field got"
            f" {int.from_bytes(data[:2], 'big')}, expected {used - 2}"
        )
    return public


def _check_rsa(area: Any, what: str) -> None:
    kind, name_alg = int(area.type), int(area.nameAlg)
    if kind != TPM2_ALG.RSA:
        raise EnrollmentError(f"{what} key type got {_alg(kind)}, expected rsa")
    if name_alg != TPM2_ALG.SHA256:
        raise EnrollmentError(f"{what} name algorithm got {_alg(name_alg)}, expected sha256")
    bits = int(area.parameters.rsaDetail.keyBits)
    size = len(bytes(area.unique.rsa))
    if bits != RSA_BITS or size != RSA_BITS // 8:
        raise EnrollmentError(
            f"{what} RSA key got {bits} bits ({size}-byte modulus), expected {RSA_BITS}"
        )


def _rsa_numbers(area: Any) -> tuple[int, int]:
    modulus = int.from_bytes(bytes(area.unique.rsa), "big")
    exponent = int(area.parameters.rsaDetail.exponent)
    return modulus, exponent or DEFAULT_EXPONENT


def _alg(value: int) -> str:
    if value == TPM2_ALG.SHA1:
        return "sha1"  # tpm2-pytss calls it "sha"
    try:
        return str(TPM2_ALG(value))
    except ValueError:
        return f"0x{value:04x}"


def _attributes(value: int) -> str:
    names = []
    for bit in range(32):
        if value >> bit & 1:
            try:
                names.append(str(TPMA_OBJECT(1 << bit)))
            except ValueError:
                names.append(f"bit{bit}")
    return "|".join(names) or "none"


def _fingerprint(modulus: int) -> str:
    encoded = modulus.to_bytes((modulus.bit_length() + 7) // 8, "big")
    return "sha256:" + hashlib.sha256(encoded).hexdigest()[:16]
