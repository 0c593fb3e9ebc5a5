"""The error hierarchy, the one home of every error class trusthook raises on purpose. Every
message names what was wrong and, where it helps, what to do ("got X, expected Y").

Three subtrees by source:
- ``InputError``: something handed to us is malformed (arguments, state JSON, config.json, a
  rootfs, a log, an image, a request).
- ``RefusedError``: well-formed input that a check refused: enrollment evidence, attestation
  evidence, a policy, an unauthorised caller. A refusal is a verdict, not a malformed input.
- ``ServiceError``: a part we depend on failed (TPM, agent socket, runtime, server, database).
Catch broadly only at entry points. Standard library only: the hook imports this module.
"""


class TrusthookError(Exception):
    """Base of every error trusthook raises on purpose."""


# malformed input


class InputError(TrusthookError):
    """Something handed to trusthook is malformed."""


class UsageError(InputError):
    """A command's arguments are wrong."""


class ConfigError(InputError):
    """The trusthook configuration file or an environment override is invalid."""


class EngineConfigError(ConfigError):
    """A container engine's configuration (daemon.json, containerd's config.toml, a CRI-O
    drop-in) cannot be read or merged: ``trusthook runtime configure`` changed nothing."""


class StateError(InputError):
    """The OCI state JSON on the hook's stdin, or a state file of ours, is malformed."""


class BundleError(InputError):
    """The bundle's config.json or rootfs cannot be used."""


class MeasurementError(InputError):
    """The rootfs cannot be measured faithfully (unreadable, changed while hashed, escapes)."""


class BlobError(InputError):
    """A blob could not be read for digesting."""


class CanonicalizationError(InputError):
    """A value has no canonical JSON form (RFC 8785): a float, a lone surrogate, a cycle."""


class EventLogError(InputError):
    """The event log is malformed, torn or does not replay to the PCR."""


class LogDivergedError(EventLogError):
    """The event log does not replay to the PCR, and no crash of the agent explains it."""


class RequestError(InputError):
    """A request to the agent or the server is malformed (the server answers 400)."""


class NotFoundError(InputError):
    """What a request names does not exist (404)."""


class ConflictError(InputError):
    """A request conflicts with what is stored (409)."""


class ImageError(InputError):
    """An OCI image, layout or blob is malformed or does not match its digest."""


class ImageCryptError(ImageError):
    """An encrypted layer cannot be decrypted: no matching key, tampered ciphertext or options."""


class UnsafeLayerError(ImageError):
    """A layer tar holds an entry that would escape the root or that the policy forbids."""


class PolicyError(InputError):
    """A policy manifest that is not one (``FILE:LINE: what is wrong``), or an unknown version."""


class AuditLogError(InputError):
    """An audit entry, signed note, verifier key, checkpoint or bundle is malformed."""


class AuditEntryTooLargeError(AuditLogError):
    """An audit entry whose canonical form is over the size limit."""


# refused by a check


class RefusedError(TrusthookError):
    """Well-formed input that a check refused."""


class EnrollmentError(RefusedError):
    """Enrollment evidence was refused: EK certificate, EK or AK public area, credential answer."""


class AttestationError(RefusedError):
    """Attestation evidence failed a check: ``check`` names it, ``expected``/``got`` say how."""

    def __init__(
        self, check: str, message: str, *, expected: str | None = None, got: str | None = None
    ) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check
        self.message = message
        self.expected = expected
        self.got = got


class AdmissionError(RefusedError):
    """The host's EK is not admitted to a group (403): its enrollment awaits an operator's
    approval, or an operator rejected or revoked it. ``check`` names the state."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check
        self.message = message


class PolicyRefusedError(RefusedError):
    """The host's image policy refuses this container."""


class AuthError(RefusedError):
    """The client is not who may make this request (403)."""


class AuditVerificationError(RefusedError):
    """An audit bundle, proof or checkpoint failed a check; the message names the first bad
    entry (its index) where one can be named."""


class WitnessRefusedError(AuditVerificationError):
    """A witness refused the log's latest checkpoint: it is of another log, rolled back,
    forked, or its consistency proof fails. ``reason`` names which."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


# a service failed


class ServiceError(TrusthookError):
    """A service trusthook depends on failed."""


class TPMError(ServiceError):
    """The TPM refused a command or could not be reached."""


class NativeUnavailableError(ServiceError):
    """The native hasher is required but cannot be loaded."""


class AgentUnavailableError(ServiceError):
    """The node agent's socket could not be reached."""


class AgentRefusedError(ServiceError):
    """The node agent answered with an error."""


class RuntimeShimError(ServiceError):
    """The runtime shim could not prepare or hand over to the real runtime."""


class ServerUnavailableError(ServiceError):
    """The attestation server could not be reached."""


class ServerRefusedError(ServiceError):
    """The attestation server answered with an error."""


class StorageError(ServiceError):
    """The attestation server's database failed."""
