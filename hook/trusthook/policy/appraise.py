"""Appraise one launch against the policy manifest: which workload it is, and whether its image,
root filesystem, launch profile, encryption and the host's group and location are what the
workload allows (docs/policy.md §5). Pure: the launch as the server verified it in the event
log, and the host as the operator admitted it, in; a compliance result out.

A result's reasons all have the check ``workload`` (one hold, one thing to clear), each with
``expected`` the manifest's value and ``got`` the launch's or the host's, like every check.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from trusthook.attest.verdict import Reason
from trusthook.common.eventlog import RELEASE_STAGE, Identity, LaunchEvent
from trusthook.policy.manifest import Action, Encryption, Manifest, Workload

CHECK = "workload"


@dataclass(frozen=True, slots=True, kw_only=True)
class HostPlace:
    """Where the host is, as the operator admitted it: its group and attributes."""

    group: str | None
    attributes: Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class Compliance:
    """One launch's appraisal: its workload (None: no workload of the manifest), and why it
    is not compliant (no reasons: it is). ``action``: what non-compliance means."""

    identity: str | None
    workload: str | None
    reasons: tuple[Reason, ...]
    action: Action

    @property
    def compliant(self) -> bool:
        return not self.reasons

    @property
    def untrusts(self) -> bool:
        return bool(self.reasons) and self.action is Action.UNTRUST


def identity_text(identity: Identity | None) -> str | None:
    """The workload identity a manifest's ``match`` patterns see (docs/policy.md §3): the
    explicit annotation, else ``namespace/pod/container``, else none."""
    if identity is None:
        return None
    if identity.workload:
        return identity.workload
    if identity.kubernetes is not None:
        return "/".join(identity.kubernetes)
    return None


def appraise_launch(manifest: Manifest, launch: LaunchEvent, host: HostPlace) -> Compliance:
    identity = identity_text(launch.identity)
    workload = manifest.workload(identity, launch.image_digest)
    if workload is None:
        reason = Reason(
            check=CHECK,
            message=f"container {launch.container_id} ({_describe(identity, launch)}) is no"
            " workload of the policy manifest",
            expected="a workload of the manifest",
            got=identity or launch.image_digest or launch.rootfs_digest,
        )
        return Compliance(
            identity=identity, workload=None, reasons=(reason,), action=manifest.unknown_launch
        )
    reasons = _check(workload, launch, host)
    return Compliance(
        identity=identity, workload=workload.name, reasons=reasons, action=workload.violation
    )


def _describe(identity: str | None, launch: LaunchEvent) -> str:
    if identity is not None:
        return f"identity {identity}"
    if launch.image_reference or launch.image_digest:
        return f"image {launch.image_reference or launch.image_digest}"
    return "no identity, no image"


def _complies(workload: Workload, launch: LaunchEvent, host: HostPlace) -> bool:
    """``_check`` found nothing: the common case, answered without building any reason (this
    runs for every launch of every attestation)."""
    intent = launch.stage == RELEASE_STAGE
    return (
        (not workload.images or launch.image_digest in workload.images)
        and (intent or not workload.rootfs or launch.rootfs_digest in workload.rootfs)
        and (
            not workload.launch_profiles or launch.launch_profile_digest in workload.launch_profiles
        )
        and (workload.encryption is not Encryption.REQUIRED or bool(launch.encrypted) or intent)
        and (not workload.groups or host.group in workload.groups)
        and all([s.holds(host.attributes) for s in workload.placement])
        and (workload.restore or not launch.restore)
    )


def _check(workload: Workload, launch: LaunchEvent, host: HostPlace) -> tuple[Reason, ...]:
    return () if _complies(workload, launch, host) else _reasons(workload, launch, host)


def _reasons(workload: Workload, launch: LaunchEvent, host: HostPlace) -> tuple[Reason, ...]:
    """Every rule of ``workload`` the launch breaks, one reason each (tested to agree with
    ``_complies``)."""
    who = f"container {launch.container_id} of workload {workload.name}"
    reasons: list[Reason] = []

    def refuse(what: str, expected: str, got: str) -> None:
        reasons.append(Reason(check=CHECK, message=f"{who}: {what}", expected=expected, got=got))

    if workload.images and launch.image_digest not in workload.images:
        refuse(
            "its image is not one the workload allows",
            _any_of(workload.images),
            launch.image_digest or "no image digest (the engine recorded none)",
        )
    intent = launch.stage == RELEASE_STAGE  # its root is still empty, and encrypted
    if workload.rootfs and not intent and launch.rootfs_digest not in workload.rootfs:
        refuse(
            "its root filesystem is not one the workload allows",
            _any_of(workload.rootfs),
            launch.rootfs_digest,
        )
    if workload.launch_profiles and launch.launch_profile_digest not in workload.launch_profiles:
        refuse(
            "its launch profile is not one the workload allows",
            _any_of(workload.launch_profiles),
            launch.launch_profile_digest,
        )
    if workload.encryption is Encryption.REQUIRED and not (launch.encrypted or intent):
        refuse("it must run from an encrypted image, and this one is not", "encrypted", "plain")
    if workload.groups and host.group not in workload.groups:
        refuse(
            "the host's group is not one the workload may run in",
            _any_of(workload.groups),
            host.group or "no group",
        )
    for selector in workload.placement_failures(host.attributes):
        value = host.attributes.get(selector.key)
        refuse(
            f"it may not run at this host's location: {selector.explain(host.attributes)}",
            selector.text,
            f"{selector.key} not set" if value is None else f"{selector.key} = {value}",
        )
    if launch.restore and not workload.restore:
        refuse(
            "it was restored from a checkpoint, and the workload may not be (restore = false)",
            "restore = true",
            "restore = false",
        )
    return tuple(reasons)


def _any_of(values: frozenset[str]) -> str:
    listed = sorted(values)
    return listed[0] if len(listed) == 1 else "one of " + ", ".join(listed)
