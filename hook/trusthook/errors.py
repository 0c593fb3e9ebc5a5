"""The error hierarchy. Every message names what was wrong and, where it helps, what to do.

Two subtrees by source:
- ``InputError``: something handed to us is bad (state JSON, config.json, a rootfs, a log).
- ``ServiceError``: a part we depend on failed (TPM, agent socket, runtime, server, database).
Standard library only: the hook imports this module.
"""


class TrusthookError(Exception):
    """Base of every error trusthook raises on purpose."""


class InputError(TrusthookError):
    """Something handed to trusthook is malformed or refused."""


class ConfigError(InputError):
    """The trusthook configuration file or an environment override is invalid."""


class StateError(InputError):
    """The OCI state JSON on the hook's stdin is malformed."""


class BundleError(InputError):
    """The bundle's config.json or rootfs cannot be used."""


class MeasurementError(InputError):
    """The rootfs cannot be measured faithfully (unreadable, changed while hashed, escapes)."""


class EventLogError(InputError):
    """The event log is malformed, torn or does not replay to the PCR."""


class ServiceError(TrusthookError):
    """A service trusthook depends on failed."""


class TPMError(ServiceError):
    """The TPM refused a command or could not be reached."""


class AgentUnavailableError(ServiceError):
    """The node agent's socket could not be reached."""


class AgentRefusedError(ServiceError):
    """The node agent answered with an error."""


class RuntimeShimError(ServiceError):
    """The runtime shim could not prepare or hand over to the real runtime."""


class EnrollmentError(InputError):
    """Enrollment evidence was refused: EK certificate, EK or AK public area, credential answer."""


class AttestationError(InputError):
    """Attestation evidence failed a check: ``check`` names it, ``expected``/``got`` say how."""

    def __init__(
        self, check: str, message: str, *, expected: str | None = None, got: str | None = None
    ) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check
        self.message = message
        self.expected = expected
        self.got = got


class ServerUnavailableError(ServiceError):
    """The attestation server could not be reached."""


class ServerRefusedError(ServiceError):
    """The attestation server answered with an error."""


class StorageError(ServiceError):
    """The attestation server's database failed."""


class ImageError(InputError):
    """An OCI image, layout or blob is malformed or does not match its digest."""


class ImageCryptError(ImageError):
    """An encrypted layer cannot be decrypted: no matching key, tampered ciphertext or options."""


class UnsafeLayerError(ImageError):
    """A layer tar holds an entry that would escape the root or that the policy forbids."""
