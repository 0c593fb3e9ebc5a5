"""Whether a container may be checkpointed, and whether a checkpoint may be restored here
(docs/policy.md §8, points 1 and 2). Pure: the policy in force, what the server verified of
the container's launch or what the restored config says it is, and where the host is, in;
the workload that allows it out, or ``AttestationError`` with check ``checkpoint`` or
``restore`` and one message naming the rule and the policy version.

Encrypted checkpoints (§8 point 4) are not built, so a checkpoint is plaintext on disk: a
workload that must run encrypted, or a container decrypted from an encrypted image, is never
checkpointed, nor restored.
"""

from __future__ import annotations

from dataclasses import dataclass

from trusthook.errors import AttestationError
from trusthook.policy.appraise import HostPlace
from trusthook.policy.manifest import Encryption, Manifest, Workload

CHECKPOINT = "checkpoint"
RESTORE = "restore"
PLAINTEXT = (
    "its memory would be written to disk in plaintext (encrypted checkpoints, docs/policy.md"
    " §8 point 4, are not built)"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class VerifiedLaunch:
    """The last launch of a container on this host that the server verified in its event log,
    as the server stored it (its workload and compliance as the policy then judged it)."""

    container_id: str
    identity: str | None
    workload: str | None
    compliant: bool | None
    encrypted: bool | None
    policy_version: int | None
    in_this_boot: bool  # of the boot the host's last verified quote is from


@dataclass(frozen=True, slots=True, kw_only=True)
class RestoreClaim:
    """What a restored bundle's config.json says it is: its identity's text (docs/policy.md
    §3), the image digest the engine recorded, and whether it names an encrypted image."""

    container_id: str
    identity: str | None
    image_digest: str | None
    encrypted: bool


def check_checkpoint(
    manifest: Manifest | None, version: int | None, launch: VerifiedLaunch | None, container: str
) -> Workload:
    """The workload whose rules let ``container`` be checkpointed: its last verified launch on
    this host (``launch``, in this boot) is a compliant launch of a workload that has
    ``restore = true`` in the policy in force (``manifest``, ``version``), has an identity
    (its restore is judged in that identity's lineage), and neither it nor its workload is
    encrypted. ``AttestationError`` (check ``checkpoint``) otherwise."""
    who = f"container {container}"

    def refuse(what: str, expected: str, got: str) -> AttestationError:
        where = "no policy in force" if version is None else f"policy version {version}"
        return AttestationError(
            CHECKPOINT,
            f"checkpoint of {who} refused: {what} ({where})",
            expected=expected,
            got=got,
        )

    if manifest is None:
        raise refuse("no policy manifest is in force", "a policy manifest", "none")
    if launch is None or not launch.in_this_boot:
        raise refuse(
            "the server has verified no launch of it on this host in this boot (it must be"
            " measured, and attested, before it may be checkpointed)",
            "a verified launch",
            "none",
        )
    if launch.workload is None or launch.compliant is not True:
        raise refuse(
            "its last verified launch is not a compliant launch of a workload",
            "a compliant launch",
            "no workload" if launch.workload is None else "not compliant",
        )
    workload = manifest.named(launch.workload)
    who = f"container {container} of workload {launch.workload}"
    if workload is None:
        raise refuse("its workload is not in the policy in force", launch.workload, "absent")
    if not workload.restore:
        raise refuse("the workload may not be restored", "restore = true", "restore = false")
    if workload.encryption is Encryption.REQUIRED:
        raise refuse(
            f"the workload must run encrypted, and {PLAINTEXT}", "no encryption", "required"
        )
    if launch.encrypted:
        raise refuse(
            f"it was decrypted from an encrypted image, and {PLAINTEXT}", "plain", "encrypted"
        )
    if launch.identity is None:
        raise refuse(
            "it has no workload identity, so its restore could not be judged in a lineage",
            "an identity",
            "none",
        )
    return workload


def check_restore(
    manifest: Manifest | None, version: int | None, claim: RestoreClaim, host: HostPlace
) -> Workload:
    """The workload whose rules let the container ``claim`` describes be restored on ``host``:
    its identity (an identity is required) is a workload of the policy in force that has
    ``restore = true``, does not require encryption (and the bundle names no encrypted image),
    and lists ``host``'s group (or none) and placement. ``AttestationError`` (check
    ``restore``) otherwise."""
    who = f"container {claim.container_id}"
    if claim.identity is not None:
        who += f" ({claim.identity})"

    def refuse(what: str, expected: str, got: str) -> AttestationError:
        where = "no policy in force" if version is None else f"policy version {version}"
        return AttestationError(
            RESTORE, f"restore of {who} refused: {what} ({where})", expected=expected, got=got
        )

    if manifest is None:
        raise refuse("no policy manifest is in force", "a policy manifest", "none")
    if claim.identity is None:
        raise refuse(
            "its config.json annotations give it no workload identity (docs/policy.md §3), so"
            " it could not be judged in a lineage",
            "an identity",
            "none",
        )
    workload = manifest.workload(claim.identity, claim.image_digest)
    if workload is None:
        raise refuse("it is no workload of the policy manifest", "a workload", claim.identity)
    who += f" of workload {workload.name}"
    if not workload.restore:
        raise refuse("the workload may not be restored", "restore = true", "restore = false")
    if workload.encryption is Encryption.REQUIRED:
        raise refuse(
            f"the workload must run encrypted, and a checkpoint of it is plaintext: {PLAINTEXT}",
            "no encryption",
            "required",
        )
    if claim.encrypted:
        raise refuse(
            f"its config.json names an encrypted image, and a checkpoint of it is plaintext:"
            f" {PLAINTEXT}",
            "plain",
            "encrypted",
        )
    if workload.groups and host.group not in workload.groups:
        listed = ", ".join(sorted(workload.groups))
        raise refuse(
            "the host's group is not one the workload may run in", listed, host.group or "no group"
        )
    for selector in workload.placement_failures(host.attributes):
        value = host.attributes.get(selector.key)
        raise refuse(
            f"it may not run at this host's location: {selector.explain(host.attributes)}",
            selector.text,
            f"{selector.key} not set" if value is None else f"{selector.key} = {value}",
        )
    return workload
