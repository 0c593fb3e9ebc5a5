"""The TPM adapter: the only module that talks to tpm2-pytss.

One SHA-256 PCR is extended per container launch; for remote attestation the TPM also gives its
EK certificate, the EK and AK public areas, quotes, and activates credentials. ``Tpm`` is a
context manager that holds one ESAPI context; it is not thread-safe, so callers serialize access
(the agent's writer lock).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_SE,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMA_OBJECT,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMT_HA,
    TPMT_RSA_DECRYPT,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
    TSS2_Exception,
)
from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

from trusthook.errors import TPMError

SHA256_SIZE = 32
PCR_COUNT = 24
EK_CERT_NV_INDEX = 0x01C00002  # TCG EK Credential Profile: the RSA-2048 EK certificate
MAX_NONCE = 64
_PCRS_PER_READ = 8  # a TPML_DIGEST holds at most 8 digests, so TPM2_PCR_Read answers 8 at most
_QUOTE_ATTEMPTS = 3


@dataclass(frozen=True, slots=True, kw_only=True)
class Quote:
    """A TPM2_Quote of SHA-256 PCRs: ``attest`` is the signed TPMS_ATTEST, ``signature`` the
    marshaled TPMT_SIGNATURE, ``pcr_values`` the values of exactly the quoted PCRs, in index
    order, checked against the PCR digest in ``attest``."""

    attest: bytes
    signature: bytes
    pcr_values: dict[int, bytes]


def ak_template() -> TPM2B_PUBLIC:
    """The attestation key: a restricted RSA-2048 RSASSA-SHA256 signing key, name alg SHA-256."""
    attrs = (
        TPMA_OBJECT.RESTRICTED
        | TPMA_OBJECT.SIGN_ENCRYPT
        | TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH
    )
    return TPM2B_PUBLIC.parse(
        "rsa2048:rsassa-sha256:null", nameAlg="sha256", objectAttributes=attrs
    )


def bind_key_template() -> TPM2B_PUBLIC:
    """The release key: an unrestricted RSA-2048 decryption key, RSA-OAEP with SHA-256 only.

    Image-key releases are encrypted to it; the server accepts it only with a TPM2_Certify by
    the host's AK that shows these attributes (fixedTPM: it cannot leave this TPM)."""
    attrs = (
        TPMA_OBJECT.DECRYPT
        | TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH
    )
    return TPM2B_PUBLIC.parse("rsa2048:oaep-sha256:null", nameAlg="sha256", objectAttributes=attrs)


def _check_pcr(index: int) -> None:
    if not 0 <= index < PCR_COUNT:
        raise TPMError(f"PCR index {index} is out of range 0..{PCR_COUNT - 1}")


def _sha256_selection(indexes: Sequence[int]) -> str:
    return "sha256:" + ",".join(map(str, indexes))


def _selected_sha256(selection: TPML_PCR_SELECTION) -> list[int]:
    """The SHA-256 PCR indexes set in ``selection``, ascending."""
    indexes: list[int] = []
    for bank in selection:
        if bank.hash == TPM2_ALG.SHA256:
            bitmap = bytes(bank.pcrSelect)[: bank.sizeofSelect]
            indexes += [i for i in range(8 * len(bitmap)) if bitmap[i // 8] >> (i % 8) & 1]
    return indexes


def _check_quote_args(pcrs: Sequence[int], nonce: bytes) -> list[int]:
    """``pcrs`` ascending, or TPMError if they are empty, repeated or out of range, or if the
    nonce is not 1..64 bytes."""
    wanted = sorted(set(pcrs))
    if not wanted or len(wanted) != len(pcrs):
        raise TPMError(
            f"PCRs to quote must be a non-empty list of distinct indexes, got {list(pcrs)}"
        )
    for index in wanted:
        _check_pcr(index)
    if not 1 <= len(nonce) <= MAX_NONCE:
        raise TPMError(f"the quote nonce must be 1..{MAX_NONCE} bytes, got {len(nonce)}")
    return wanted


def _quoted_digest(attest: bytes) -> bytes:
    quoted, _ = TPMS_ATTEST.unmarshal(attest)
    return bytes(quoted.attested.quote.pcrDigest)


class Tpm:
    """A TPM reached through a TCTI string such as ``device:/dev/tpmrm0`` or
    ``swtpm:host=127.0.0.1,port=2321``. The EK and AK are primaries in the endorsement
    hierarchy, created on first use (the same keys every time: no persistent handles) and
    flushed on close."""

    def __init__(self, tcti: str) -> None:
        try:
            self._ectx = ESAPI(tcti)
        except TSS2_Exception as e:
            raise TPMError(f"cannot open TPM via TCTI {tcti!r}: {e}") from e
        self._ek: ESYS_TR | None = None
        self._ak: ESYS_TR | None = None
        self._bind: ESYS_TR | None = None
        self._ek_public = b""
        self._ak_public = b""
        self._bind_public = b""

    def __enter__(self) -> Tpm:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for handle in (self._ek, self._ak, self._bind):
            if handle is not None:
                with contextlib.suppress(TSS2_Exception):
                    self._ectx.flush_context(handle)
        self._ek = self._ak = self._bind = None
        self._ectx.close()

    def pcr_read(self, index: int) -> bytes:
        """The current SHA-256 value of PCR ``index``."""
        _check_pcr(index)
        return self._pcr_read_many([index])[index]

    def pcr_extend(self, index: int, digest: bytes) -> None:
        """Extend PCR ``index`` in the SHA-256 bank with ``digest``."""
        _check_pcr(index)
        if len(digest) != SHA256_SIZE:
            raise TPMError(f"extend digest must be {SHA256_SIZE} bytes, got {len(digest)}")
        value = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
        value.digest.sha256 = digest
        try:
            self._ectx.pcr_extend(getattr(ESYS_TR, f"PCR{index}"), TPML_DIGEST_VALUES([value]))
        except TSS2_Exception as e:
            raise TPMError(f"TPM refused to extend PCR {index}: {e}") from e

    def _pcr_read_many(self, indexes: list[int]) -> dict[int, bytes]:
        """The SHA-256 values of ``indexes`` (ascending), read 8 at a time."""
        values: dict[int, bytes] = {}
        for start in range(0, len(indexes), _PCRS_PER_READ):
            group = indexes[start : start + _PCRS_PER_READ]
            try:
                _, selection, digests = self._ectx.pcr_read(_sha256_selection(group))
            except TSS2_Exception as e:
                raise TPMError(f"TPM refused to read PCRs {group}: {e}") from e
            if _selected_sha256(selection) != group or len(digests) != len(group):
                raise TPMError(
                    f"TPM has no SHA-256 values for PCRs {group}; enable the sha256 bank"
                )
            values.update(zip(group, map(bytes, digests), strict=True))
        return values

    def ek_certificate(self) -> bytes:
        """DER of the RSA EK certificate in NV index 0x01C00002."""
        try:
            return NVReadEK(self._ectx)(EK_CERT_NV_INDEX)
        except NoSuchIndex:
            raise TPMError(
                f"no EK certificate at NV {EK_CERT_NV_INDEX:#010x}; provision one"
                " (swtpm_setup --create-ek-cert, or the TPM vendor's tools)"
            ) from None
        except TSS2_Exception as e:
            raise TPMError(
                f"TPM refused to read the EK certificate at NV {EK_CERT_NV_INDEX:#010x}: {e}"
            ) from e

    def ek_public(self) -> bytes:
        """Marshaled TPM2B_PUBLIC of the RSA-2048 EK (TCG default template, or the one the TPM
        vendor left in NV)."""
        self._load_ek()
        return self._ek_public

    def ak_public(self) -> bytes:
        """Marshaled TPM2B_PUBLIC of the attestation key (``ak_template``)."""
        self._load_ak()
        return self._ak_public

    def _load_ek(self) -> ESYS_TR:
        if self._ek is None:
            try:
                _, template = create_ek_template("EK-RSA2048", NVReadEK(self._ectx))
                self._ek, self._ek_public = self._create_primary(template)
            except TSS2_Exception as e:
                raise TPMError(f"TPM refused to create the endorsement key: {e}") from e
        return self._ek

    def _load_ak(self) -> ESYS_TR:
        if self._ak is None:
            try:
                self._ak, self._ak_public = self._create_primary(ak_template())
            except TSS2_Exception as e:
                raise TPMError(f"TPM refused to create the attestation key: {e}") from e
        return self._ak

    def _load_bind(self) -> ESYS_TR:
        if self._bind is None:
            try:
                self._bind, self._bind_public = self._create_primary(bind_key_template())
            except TSS2_Exception as e:
                raise TPMError(f"TPM refused to create the release key: {e}") from e
        return self._bind

    def certify_bind_key(self, nonce: bytes) -> tuple[bytes, bytes, bytes]:
        """The release key's marshaled TPM2B_PUBLIC, and a TPM2_Certify of it by the AK with
        ``nonce`` as qualifying data: the signed TPMS_ATTEST and the marshaled signature."""
        if not 0 < len(nonce) <= MAX_NONCE:
            raise TPMError(f"a certify nonce must be 1 to {MAX_NONCE} bytes, got {len(nonce)}")
        bind, ak = self._load_bind(), self._load_ak()
        try:
            attested, signature = self._ectx.certify(
                bind, ak, nonce, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
            )
        except TSS2_Exception as e:
            raise TPMError(f"TPM refused to certify the release key: {e}") from e
        return self._bind_public, bytes(attested), signature.marshal()

    def unseal_release(self, encrypted_seed: bytes) -> bytes:
        """Decrypt an RSA-OAEP-SHA256 ciphertext made for the release key (TPM2_RSA_Decrypt)."""
        bind = self._load_bind()
        try:
            return bytes(
                self._ectx.rsa_decrypt(
                    bind, encrypted_seed, TPMT_RSA_DECRYPT(scheme=TPM2_ALG.NULL), b""
                )
            )
        except TSS2_Exception as e:
            raise TPMError(
                f"TPM refused to decrypt the released key: {e}; it was not made for this TPM"
            ) from e

    def _create_primary(self, template: TPM2B_PUBLIC) -> tuple[ESYS_TR, bytes]:
        handle, public, _, _, _ = self._ectx.create_primary(
            TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT
        )
        return handle, public.marshal()

    def quote(self, pcrs: Sequence[int], nonce: bytes) -> Quote:
        """Quote SHA-256 PCRs ``pcrs`` with the AK and ``nonce`` as qualifying data.

        The PCR values are read right after the quote and must hash to the quoted digest; if a
        PCR changed in between (another TPM user extended it), the quote is taken again."""
        wanted = _check_quote_args(pcrs, nonce)
        ak = self._load_ak()
        for _ in range(_QUOTE_ATTEMPTS):
            try:
                attested, signature = self._ectx.quote(
                    ak, _sha256_selection(wanted), nonce, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
                )
            except TSS2_Exception as e:
                raise TPMError(f"TPM refused to quote PCRs {wanted}: {e}") from e
            attest, values = bytes(attested), self._pcr_read_many(wanted)
            if _quoted_digest(attest) == hashlib.sha256(b"".join(values.values())).digest():
                return Quote(attest=attest, signature=signature.marshal(), pcr_values=values)
        raise TPMError(
            f"PCRs {wanted} changed between quoting and reading them {_QUOTE_ATTEMPTS} times;"
            " try again when nothing else is extending them"
        )

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """The secret in a credential made for this TPM's EK and AK (TPM2_ActivateCredential);
        ``credential_blob`` and ``encrypted_secret`` are a marshaled TPM2B_ID_OBJECT and
        TPM2B_ENCRYPTED_SECRET."""
        blob = _unmarshal_exact(TPM2B_ID_OBJECT, credential_blob, "credential blob")
        secret = _unmarshal_exact(TPM2B_ENCRYPTED_SECRET, encrypted_secret, "encrypted secret")
        ak, ek = self._load_ak(), self._load_ek()
        try:
            session = self._ectx.start_auth_session(
                ESYS_TR.NONE,
                ESYS_TR.NONE,
                TPM2_SE.POLICY,
                TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                TPM2_ALG.SHA256,
            )
        except TSS2_Exception as e:
            raise TPMError(f"TPM refused a policy session for credential activation: {e}") from e
        try:
            self._ectx.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
            return bytes(
                self._ectx.activate_credential(
                    ak, ek, blob, secret, session1=ESYS_TR.PASSWORD, session2=session
                )
            )
        except TSS2_Exception as e:
            raise TPMError(
                f"TPM refused to activate the credential: {e}; the credential was not made for"
                " this TPM's EK and AK"
            ) from e
        finally:
            with contextlib.suppress(TSS2_Exception):
                self._ectx.flush_context(session)


def _unmarshal_exact(kind: Any, data: bytes, what: str) -> Any:
    try:
        value, used = kind.unmarshal(data)
    except TSS2_Exception as e:
        raise TPMError(f"malformed credential from server: bad {what} ({e})") from e
    if used != len(data):
        raise TPMError(f"malformed credential from server: {len(data) - used} bytes after {what}")
    return value
