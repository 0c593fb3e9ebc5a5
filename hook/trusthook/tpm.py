"""The TPM adapter: the only module that talks to tpm2-pytss.

One SHA-256 PCR is extended per container launch. ``Tpm`` is a context manager that holds one
ESAPI context; it is not thread-safe, so callers serialize access (the agent's writer lock).
"""

from __future__ import annotations

from types import TracebackType

from tpm2_pytss import (
    ESAPI,
    ESYS_TR,
    TPM2_ALG,
    TPML_DIGEST_VALUES,
    TPMT_HA,
    TSS2_Exception,
)

from trusthook.errors import TPMError

SHA256_SIZE = 32


def _pcr_handle(index: int) -> ESYS_TR:
    if not 0 <= index <= 23:
        raise TPMError(f"PCR index {index} is out of range 0..23")
    return getattr(ESYS_TR, f"PCR{index}")


class Tpm:
    """A TPM reached through a TCTI string such as ``device:/dev/tpmrm0`` or
    ``swtpm:host=127.0.0.1,port=2321``."""

    def __init__(self, tcti: str) -> None:
        self._tcti = tcti
        try:
            self._ectx = ESAPI(tcti)
        except TSS2_Exception as e:
            raise TPMError(f"cannot open TPM via TCTI {tcti!r}: {e}") from e

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
        self._ectx.close()

    def pcr_read(self, index: int) -> bytes:
        """The current SHA-256 value of PCR ``index``."""
        _pcr_handle(index)  # validates the index
        try:
            _, _, digests = self._ectx.pcr_read(f"sha256:{index}")
        except TSS2_Exception as e:
            raise TPMError(f"TPM refused to read PCR {index}: {e}") from e
        if len(digests) != 1:
            raise TPMError(f"TPM has no SHA-256 bank for PCR {index}; enable the sha256 bank")
        return bytes(digests[0])

    def pcr_extend(self, index: int, digest: bytes) -> None:
        """Extend PCR ``index`` in the SHA-256 bank with ``digest``."""
        if len(digest) != SHA256_SIZE:
            raise TPMError(f"extend digest must be {SHA256_SIZE} bytes, got {len(digest)}")
        value = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
        value.digest.sha256 = digest
        try:
            self._ectx.pcr_extend(_pcr_handle(index), TPML_DIGEST_VALUES([value]))
        except TSS2_Exception as e:
            raise TPMError(f"TPM refused to extend PCR {index}: {e}") from e
