"""The TPM adapter: the only module that talks to tpm2-pytss.

One SHA-256 PCR is extended per container launch; for remote attestation the TPM also gives its
EK certificate, the EK and AK public areas, quotes, and activates credentials; it signs the
agent's requests to the server with the request key; for encrypted images it certifies and uses
the release key. ``Tpm`` is a context manager that holds one ESAPI context; it is not
thread-safe, so callers serialize access (the agent's writer lock).

Transient objects: the AK, the request key and the release key are created once and kept (a
hardware TPM can take seconds to create an RSA primary); the EK and every session are flushed in
``finally`` after their one use. Without a resource manager swtpm has 3 transient object slots,
so the EK (enrollment only) first flushes the request and release keys, which are recreated on
their next use. A TPM restarted under a running agent has lost them all: an operation the TPM
answers that way (a handle that refers to nothing loaded, ``TPM_RC_HANDLE``,
``TPM_RC_INITIALIZE``) forgets them, recreates them (they are primaries: the same keys again)
and runs once more; ``restarts_seen`` counts these.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TypeVar

from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_CC,
    TPM2_HC,
    TPM2_RC,
    TPM2_RH,
    TPM2_SE,
    TPM2_ST,
    TPM2B_DIGEST,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_NV_PUBLIC,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMA_NV,
    TPMA_OBJECT,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMS_ATTEST,
    TPMS_SENSITIVE_CREATE,
    TPMT_HA,
    TPMT_RSA_DECRYPT,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
    TPMT_TK_HASHCHECK,
    TSS2_Exception,
)
from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

from trusthook.attest.attributes import NV_INDEX, TAG_SIZE, nv_public
from trusthook.attest.bindkey import RELEASE_KEY_POLICY
from trusthook.errors import TPMError

log = logging.getLogger(__name__)
_T = TypeVar("_T")
SHA256_SIZE = 32
PCR_COUNT = 24
EK_CERT_NV_INDEX = 0x01C00002  # TCG EK Credential Profile: the RSA-2048 EK certificate
MAX_NONCE = 64
_PCRS_PER_READ = 8  # a TPML_DIGEST holds at most 8 digests, so TPM2_PCR_Read answers 8 at most
_QUOTE_ATTEMPTS = 3
RELEASE_SECRET_SIZE = 32
MAX_TRANSIENT_HANDLES = 64
# The TPM's answers when it no longer has what a command refers to: it was restarted (or not
# started) since the handle was made. TPM_RC_HANDLE (a format-1 code) is checked apart.
_LOST_STATE = frozenset(
    {
        TPM2_RC.INITIALIZE,
        *(TPM2_RC.REFERENCE_H0 + i for i in range(7)),
        *(TPM2_RC.REFERENCE_S0 + i for i in range(7)),
    }
)


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


def bind_key_template(unique: bytes) -> TPM2B_PUBLIC:
    """The release key: an unrestricted RSA-2048 decryption key, RSA-OAEP with SHA-256 only,
    usable only through its policy (``RELEASE_KEY_POLICY``: its auth value, for RSA_Decrypt).

    Image-key releases are encrypted to it; the server accepts it only with a TPM2_Certify by
    the host's AK that shows these attributes (fixedTPM: it cannot leave this TPM) and that
    policy. ``unique`` (derived from the agent's secret) is part of the template a primary is
    derived from, so only the secret's holder can create this key. noDA: a dictionary-attack
    lockout that other TPM users cause does not stop releases (the auth value is 32 random
    bytes, not a password to guess)."""
    attrs = (
        TPMA_OBJECT.DECRYPT
        | TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.NODA
    )
    template = TPM2B_PUBLIC.parse(
        "rsa2048:oaep-sha256:null",
        nameAlg="sha256",
        objectAttributes=attrs,
        authPolicy=RELEASE_KEY_POLICY,
    )
    template.publicArea.unique.rsa = unique
    return template


def request_key_template(unique: bytes) -> TPM2B_PUBLIC:
    """The request key: an unrestricted ECC P-256 signing key, ECDSA with SHA-256 only, that
    cannot leave the TPM. The agent signs its requests to the server with it (docs/attestation.md
    §10); the server accepts it only with a TPM2_Certify by the host's AK. ``unique`` and the
    auth value derive from the agent's secret, so only the secret's holder can create or use it;
    noDA for the same reason as the release key."""
    attrs = (
        TPMA_OBJECT.SIGN_ENCRYPT
        | TPMA_OBJECT.FIXEDTPM
        | TPMA_OBJECT.FIXEDPARENT
        | TPMA_OBJECT.SENSITIVEDATAORIGIN
        | TPMA_OBJECT.USERWITHAUTH
        | TPMA_OBJECT.NODA
    )
    template = TPM2B_PUBLIC.parse(
        "ecc256:ecdsa-sha256:null", nameAlg="sha256", objectAttributes=attrs
    )
    template.publicArea.unique.ecc.x = unique
    return template


def _derived_inputs(secret: bytes, key: str) -> tuple[bytes, bytes]:
    if len(secret) != RELEASE_SECRET_SIZE:
        raise TPMError(
            f"the release-key secret must be {RELEASE_SECRET_SIZE} bytes, got {len(secret)}"
        )
    unique = hashlib.sha256(f"trusthook {key} unique\0".encode() + secret).digest()
    auth = hashlib.sha256(f"trusthook {key} auth\0".encode() + secret).digest()
    return unique, auth


def release_key_inputs(secret: bytes) -> tuple[bytes, bytes]:
    """The release key's template ``unique`` and auth value, derived from the agent's secret
    (``RELEASE_SECRET_SIZE`` random bytes, kept root-only in its state directory)."""
    return _derived_inputs(secret, "release key")


def request_key_inputs(secret: bytes) -> tuple[bytes, bytes]:
    """The request key's template ``unique`` and auth value, from the same secret."""
    return _derived_inputs(secret, "request key")


def _lost_state(error: BaseException | None) -> bool:
    """Whether the TPM answered that it no longer has the objects or sessions a command named."""
    if not isinstance(error, TSS2_Exception) or error.rc >> 16:  # not the TPM's own answer
        return False
    if error.fmt1:
        return bool(error.error == TPM2_RC.HANDLE and error.handle)
    return error.error in _LOST_STATE


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
    ``swtpm:host=127.0.0.1,port=2321``. The EK, AK and release key are primaries in the
    endorsement hierarchy, created on first use (the same keys every time: no persistent
    handles). The release key needs ``release_secret`` (the agent's); without one, only it is
    unavailable."""

    def __init__(self, tcti: str, *, release_secret: bytes | None = None) -> None:
        if release_secret is not None:
            release_key_inputs(release_secret)  # its size, checked now
        try:
            self._ectx = ESAPI(tcti)
        except TSS2_Exception as e:
            raise TPMError(f"cannot open TPM via TCTI {tcti!r}: {e}") from e
        self._release_secret = release_secret
        self._ak: ESYS_TR | None = None
        self._bind: ESYS_TR | None = None
        self._request: ESYS_TR | None = None
        self._ak_public = b""
        self._bind_public = b""
        self._request_public = b""
        self.restarts_seen = 0  # times the TPM had lost the AK and release key (restarted)

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
        for handle in (self._ak, self._bind, self._request):
            if handle is not None:
                with contextlib.suppress(TSS2_Exception):
                    self._ectx.flush_context(handle)
        self._ak = self._bind = self._request = None
        self._ectx.close()

    def _flush_keys(self) -> None:
        """Flush the release and request keys (recreated on their next use): without a
        resource manager the TPM holds 3 transient objects, and the EK needs a slot."""
        for handle in (self._bind, self._request):
            if handle is not None:
                with contextlib.suppress(TSS2_Exception):
                    self._ectx.flush_context(handle)
        self._bind = self._request = None

    def flush_stale_objects(self) -> int:
        """Flush every transient object loaded in the TPM; how many there were. For the agent's
        start only, when it is the TPM's one user: without a resource manager (swtpm,
        ``/dev/tpm0``) a killed agent's AK and keys stay loaded, and after a kill or two the
        TPM's 3 object slots are full. Through ``/dev/tpmrm0`` the kernel has already flushed
        them, and the TPM lists only this connection's (none)."""
        try:
            _, data = self._ectx.get_capability(
                TPM2_CAP.HANDLES, TPM2_HC.TRANSIENT_FIRST, MAX_TRANSIENT_HANDLES
            )
            handles = list(data.data.handles)
            for handle in handles:
                self._ectx.flush_context(self._ectx.tr_from_tpmpublic(handle))
        except TSS2_Exception as e:
            raise TPMError(f"cannot flush the TPM's stale transient objects: {e}") from e
        return len(handles)

    def _recovering(self, op: Callable[[], _T]) -> _T:
        """``op()``; if the TPM answers that it lost its transient objects (it was restarted
        since they were made), forget them and run ``op`` once more, which recreates them."""
        try:
            return op()
        except TPMError as e:
            if not _lost_state(e.__cause__):
                raise
            log.warning("%s; the TPM was restarted: recreating its keys and trying again", e)
        for handle in (self._ak, self._bind, self._request):
            if handle is not None:  # gone from the TPM: only ESAPI's record of it is left
                with contextlib.suppress(TSS2_Exception):
                    self._ectx.tr_close(handle)
        self._ak = self._bind = self._request = None
        self.restarts_seen += 1
        return op()

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
        with self._ek() as (_, public):
            return public

    def ak_public(self) -> bytes:
        """Marshaled TPM2B_PUBLIC of the attestation key (``ak_template``)."""
        self._load_ak()
        return self._ak_public

    @contextlib.contextmanager
    def _ek(self) -> Iterator[tuple[ESYS_TR, bytes]]:
        """The EK (handle, marshaled public), flushed after its one use (enrollment only)."""
        self._flush_keys()
        try:
            _, template = create_ek_template("EK-RSA2048", NVReadEK(self._ectx))
            handle, public = self._create_primary(template)
        except TSS2_Exception as e:
            raise TPMError(f"TPM refused to create the endorsement key: {e}") from e
        try:
            yield handle, public
        finally:
            with contextlib.suppress(TSS2_Exception):
                self._ectx.flush_context(handle)

    def _load_ak(self) -> ESYS_TR:
        if self._ak is None:
            try:
                self._ak, self._ak_public = self._create_primary(ak_template())
            except TSS2_Exception as e:
                raise TPMError(f"TPM refused to create the attestation key: {e}") from e
        return self._ak

    def _load_bind(self) -> ESYS_TR:
        if self._bind is None:
            if self._release_secret is None:
                raise TPMError(
                    "the release key needs the agent's release-key secret; only the agent"
                    " (which keeps it in its state directory) can certify or use it"
                )
            unique, auth = release_key_inputs(self._release_secret)
            try:
                self._bind, self._bind_public = self._create_primary(
                    bind_key_template(unique), auth
                )
            except TSS2_Exception as e:
                raise TPMError(f"TPM refused to create the release key: {e}") from e
        return self._bind

    def _load_request(self) -> ESYS_TR:
        if self._request is None:
            if self._release_secret is None:
                raise TPMError(
                    "the request key needs the agent's secret; only the agent (which keeps it"
                    " in its state directory) can certify or use it"
                )
            unique, auth = request_key_inputs(self._release_secret)
            try:
                self._request, self._request_public = self._create_primary(
                    request_key_template(unique), auth
                )
            except TSS2_Exception as e:
                raise TPMError(f"TPM refused to create the request key: {e}") from e
        return self._request

    def certify_request_key(self, qualifying: bytes) -> tuple[bytes, bytes, bytes]:
        """The request key's marshaled TPM2B_PUBLIC, and a TPM2_Certify of it by the AK with
        ``qualifying`` as qualifying data: the signed TPMS_ATTEST and the marshaled signature."""
        if not 0 < len(qualifying) <= MAX_NONCE:
            raise TPMError(
                f"certify qualifying data must be 1 to {MAX_NONCE} bytes, got {len(qualifying)}"
            )
        return self._recovering(lambda: self._certify_request_key(qualifying))

    def _certify_request_key(self, qualifying: bytes) -> tuple[bytes, bytes, bytes]:
        request, ak = self._load_request(), self._load_ak()
        try:
            attested, signature = self._ectx.certify(
                request, ak, qualifying, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
            )
        except TSS2_Exception as e:
            raise TPMError(f"TPM refused to certify the request key: {e}") from e
        return self._request_public, bytes(attested), signature.marshal()

    def sign_request(self, digest: bytes) -> bytes:
        """The request key's marshaled TPMT_SIGNATURE (ECDSA-SHA256) over ``digest``, a
        SHA-256 digest computed outside the TPM (TPM2_Sign with a null ticket: allowed for an
        unrestricted key)."""
        if len(digest) != SHA256_SIZE:
            raise TPMError(f"a request digest must be {SHA256_SIZE} bytes, got {len(digest)}")
        return self._recovering(lambda: self._sign_request(digest))

    def _sign_request(self, digest: bytes) -> bytes:
        request = self._load_request()
        ticket = TPMT_TK_HASHCHECK(tag=TPM2_ST.HASHCHECK, hierarchy=TPM2_RH.NULL)
        try:
            signature = self._ectx.sign(
                request, TPM2B_DIGEST(digest), TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), ticket
            )
        except TSS2_Exception as e:
            raise TPMError(f"TPM refused to sign with the request key: {e}") from e
        return bytes(signature.marshal())

    def certify_bind_key(self, nonce: bytes) -> tuple[bytes, bytes, bytes]:
        """The release key's marshaled TPM2B_PUBLIC, and a TPM2_Certify of it by the AK with
        ``nonce`` as qualifying data: the signed TPMS_ATTEST and the marshaled signature."""
        if not 0 < len(nonce) <= MAX_NONCE:
            raise TPMError(f"a certify nonce must be 1 to {MAX_NONCE} bytes, got {len(nonce)}")
        return self._recovering(lambda: self._certify_bind_key(nonce))

    def _certify_bind_key(self, nonce: bytes) -> tuple[bytes, bytes, bytes]:
        bind, ak = self._load_bind(), self._load_ak()
        try:  # the release key's admin role: its auth value, which ESAPI holds since creation
            attested, signature = self._ectx.certify(
                bind, ak, nonce, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
            )
        except TSS2_Exception as e:
            raise TPMError(f"TPM refused to certify the release key: {e}") from e
        return self._bind_public, bytes(attested), signature.marshal()

    def unseal_release(self, encrypted_seed: bytes) -> bytes:
        """Decrypt an RSA-OAEP-SHA256 ciphertext made for the release key (TPM2_RSA_Decrypt),
        in a policy session that satisfies its policy."""
        return self._recovering(lambda: self._unseal_release(encrypted_seed))

    def _unseal_release(self, encrypted_seed: bytes) -> bytes:
        bind = self._load_bind()
        session = self._policy_session("decrypt the released key")
        try:
            self._ectx.policy_auth_value(session)
            self._ectx.policy_command_code(session, TPM2_CC.RSA_Decrypt)
            return bytes(
                self._ectx.rsa_decrypt(
                    bind,
                    encrypted_seed,
                    TPMT_RSA_DECRYPT(scheme=TPM2_ALG.NULL),
                    b"",
                    session1=session,
                )
            )
        except TSS2_Exception as e:
            raise TPMError(
                f"TPM refused to decrypt the released key: {e}; it was not made for this TPM"
            ) from e
        finally:
            with contextlib.suppress(TSS2_Exception):
                self._ectx.flush_context(session)

    def read_attributes(self) -> bytes | None:
        """The contents of the host attribute index (``attest.attributes``), or None if it is
        not defined as trusthook defines it, or not written."""
        return self._recovering(self._read_attributes)

    def _read_attributes(self) -> bytes | None:
        index = self._find_attribute_index()
        if index is None:
            return None
        try:
            if self._attribute_index_kind(index) != "written":
                return None
            return bytes(self._ectx.nv_read(index, TAG_SIZE, 0, auth_handle=ESYS_TR.OWNER))
        except TSS2_Exception as e:
            raise TPMError(f"TPM refused to read the host attribute index: {e}") from e
        finally:
            self._ectx.tr_close(index)

    def write_attributes(self, tag: bytes) -> None:
        """Write ``tag`` into the host attribute index with owner authorization, defining the
        index first (or again, if one with other attributes holds its handle)."""
        if len(tag) != TAG_SIZE:
            raise TPMError(f"an attribute tag is {TAG_SIZE} bytes, got {len(tag)}")
        self._recovering(lambda: self._write_attributes(tag))

    def _write_attributes(self, tag: bytes) -> None:
        index = self._find_attribute_index()
        try:
            if index is not None and self._attribute_index_kind(index) == "foreign":
                self._ectx.nv_undefine_space(index, ESYS_TR.OWNER)  # also forgets the handle
                index = None
                log.warning(
                    "undefined NV index %#010x: it was not defined as trusthook's", NV_INDEX
                )
            if index is None:
                index = self._ectx.nv_define_space(
                    b"", TPM2B_NV_PUBLIC(nvPublic=nv_public(written=False)), ESYS_TR.OWNER
                )
            self._ectx.nv_write(index, tag, 0, auth_handle=ESYS_TR.OWNER)
        except TSS2_Exception as e:
            raise TPMError(
                f"TPM refused to write the host attribute index {NV_INDEX:#010x} with owner"
                f" authorization: {e}"
            ) from e
        finally:
            if index is not None:
                self._ectx.tr_close(index)

    def certify_attributes(self, nonce: bytes) -> tuple[bytes, bytes]:
        """A TPM2_NV_Certify of the whole host attribute index by the AK with ``nonce`` as
        qualifying data: the signed TPMS_ATTEST and the marshaled signature."""
        if not 0 < len(nonce) <= MAX_NONCE:
            raise TPMError(f"a certify nonce must be 1 to {MAX_NONCE} bytes, got {len(nonce)}")
        return self._recovering(lambda: self._certify_attributes(nonce))

    def _certify_attributes(self, nonce: bytes) -> tuple[bytes, bytes]:
        ak, index = self._load_ak(), self._find_attribute_index()
        if index is None:
            raise TPMError(f"the host attribute index {NV_INDEX:#010x} is not defined")
        try:
            attested, signature = self._ectx.nv_certify(
                ak,
                index,
                nonce,
                TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL),
                TAG_SIZE,
                0,
                auth_handle=ESYS_TR.OWNER,
            )
        except TSS2_Exception as e:
            raise TPMError(f"TPM refused to certify the host attribute index: {e}") from e
        finally:
            self._ectx.tr_close(index)
        return bytes(attested), signature.marshal()

    def _find_attribute_index(self) -> ESYS_TR | None:
        """The ESAPI handle (closed by the caller) of NV index ``NV_INDEX``; None if the TPM
        has none defined there."""
        try:  # asked first: ESAPI logs an error for an index that is not there
            _, data = self._ectx.get_capability(TPM2_CAP.HANDLES, NV_INDEX, 1)
            if NV_INDEX not in list(data.data.handles):
                return None
            return self._ectx.tr_from_tpmpublic(NV_INDEX)
        except TSS2_Exception as e:
            raise TPMError(f"cannot look up NV index {NV_INDEX:#010x}: {e}") from e

    def _attribute_index_kind(self, index: ESYS_TR) -> str:
        """``written`` or ``empty`` if ``index`` is defined as trusthook defines it (and has
        been written, or not), ``foreign`` otherwise."""
        public, _ = self._ectx.nv_read_public(index)
        area, ours = public.nvPublic, nv_public(written=False)
        written = int(area.attributes) & int(TPMA_NV.WRITTEN)
        if (
            int(area.nameAlg) != int(ours.nameAlg)
            or int(area.dataSize) != TAG_SIZE
            or int(area.attributes) & ~int(TPMA_NV.WRITTEN) != int(ours.attributes)
            or len(bytes(area.authPolicy)) != 0
        ):
            return "foreign"
        return "written" if written else "empty"

    def _create_primary(self, template: TPM2B_PUBLIC, auth: bytes = b"") -> tuple[ESYS_TR, bytes]:
        """A primary in the endorsement hierarchy; ESAPI keeps ``auth`` for its handle."""
        handle, public, _, _, _ = self._ectx.create_primary(
            TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=auth)),
            template,
            ESYS_TR.ENDORSEMENT,
        )
        return handle, public.marshal()

    def _policy_session(self, what: str) -> ESYS_TR:
        """A SHA-256 policy session, to be flushed by the caller."""
        try:
            return self._ectx.start_auth_session(
                ESYS_TR.NONE,
                ESYS_TR.NONE,
                TPM2_SE.POLICY,
                TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                TPM2_ALG.SHA256,
            )
        except TSS2_Exception as e:
            raise TPMError(f"TPM refused a policy session to {what}: {e}") from e

    def quote(self, pcrs: Sequence[int], nonce: bytes) -> Quote:
        """Quote SHA-256 PCRs ``pcrs`` with the AK and ``nonce`` as qualifying data.

        The PCR values are read right after the quote and must hash to the quoted digest; if a
        PCR changed in between (another TPM user extended it), the quote is taken again."""
        wanted = _check_quote_args(pcrs, nonce)
        return self._recovering(lambda: self._quote(wanted, nonce))

    def _quote(self, wanted: list[int], nonce: bytes) -> Quote:
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
        return self._recovering(lambda: self._activate_credential(blob, secret))

    def _activate_credential(self, blob: Any, secret: Any) -> bytes:
        ak = self._load_ak()
        with self._ek() as (ek, _):
            session = self._policy_session("activate the credential")
            try:
                self._ectx.policy_secret(ESYS_TR.ENDORSEMENT, session, b"", b"", b"", 0)
                return bytes(
                    self._ectx.activate_credential(
                        ak, ek, blob, secret, session1=ESYS_TR.PASSWORD, session2=session
                    )
                )
            except TSS2_Exception as e:
                raise TPMError(
                    f"TPM refused to activate the credential: {e}; the credential was not made"
                    " for this TPM's EK and AK"
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
