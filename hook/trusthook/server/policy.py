"""The policy manifest in force on the server (docs/policy.md §5): read from the store, parsed
once per version, and applied to each launch an appraisal verified."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

from trusthook.attest.verdict import Reason
from trusthook.common.eventlog import LaunchEvent, Record
from trusthook.errors import AttestationError
from trusthook.policy.appraise import Compliance, HostPlace, appraise_launch
from trusthook.policy.lineage import Move, Origin, judge, judge_restore
from trusthook.policy.manifest import Manifest, parse_manifest
from trusthook.server.records import AppraisedLaunch, HostRecord
from trusthook.server.store import Store


@dataclass(frozen=True, slots=True)
class InForce:
    version: int
    digest: str
    manifest: Manifest


class Policies:
    """The version in force, looked up when a launch needs it; a version is parsed once."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._cached: InForce | None = None

    def in_force(self) -> InForce | None:
        head = self._store.policy_head()
        if head is None:
            return None
        version, digest = head
        if self._cached is None or self._cached.version != version:
            stored = self._store.policy_version(version)
            if stored is None:  # pragma: no cover - versions are never deleted
                return None
            manifest = parse_manifest(stored.source.encode("utf-8"), f"policy version {version}")
            self._cached = InForce(version, digest, manifest)
        return self._cached

    def appraise(self, records: Sequence[Record], host: HostRecord) -> tuple[AppraisedLaunch, ...]:
        """Each verified launch not appraised before, with its compliance (none without a
        policy)."""
        if not records:
            return ()
        seen = self._store.seen_launches(
            host.host_id, records[0].event.boot_id, min(r.recnum for r in records)
        )
        records = [r for r in records if r.recnum not in seen]
        policy = self.in_force()
        if policy is None:
            return tuple(AppraisedLaunch(record=r) for r in records)
        place = place_of(host)
        created: dict[str, Origin] = {}  # identities this very batch creates
        appraised = []
        for r in records:
            compliance, move = self._judged(policy, r.event, host, place, created)
            appraised.append(
                AppraisedLaunch(
                    record=r, compliance=compliance, policy_version=policy.version, move=move
                )
            )
            if move is Move.ORIGIN and compliance.identity:
                created[compliance.identity] = _origin(compliance, r.event, host.host_id)
        return tuple(appraised)

    def _judged(
        self,
        policy: InForce,
        event: LaunchEvent,
        host: HostRecord,
        place: HostPlace,
        created: Mapping[str, Origin],
    ) -> tuple[Compliance, Move | None]:
        """``event`` appraised, and judged in its identity's lineage: a tampered move is one
        more reason."""
        compliance = appraise_launch(policy.manifest, event, place)
        identity, workload = compliance.identity, compliance.workload
        if event.restore:  # a move from where it was checkpointed (docs/policy.md §8)
            checkpointed = None
            if identity is not None and workload is not None:
                checkpointed = last_compliant(self._store, identity, workload)
            move, reason = judge_restore(checkpointed, event, host.host_id, compliance)
            if reason is not None:
                compliance = replace(compliance, reasons=(*compliance.reasons, reason))
            return compliance, move
        origin = None
        if identity is not None and workload is not None:
            origin = created.get(identity) or self._store.lineage(identity)
        move, reason = judge(origin, event, host.host_id, compliance)
        if reason is not None:
            compliance = replace(compliance, reasons=(*compliance.reasons, reason))
        return compliance, move

    def check_release(self, launch: LaunchEvent, host: HostRecord) -> int | None:
        """With a policy in force, an encrypted image's keys go only to a launch that is a
        workload of it, by an image it allows, on a host in its groups and placement, and not
        a tampered move: refused (``AttestationError``, check ``workload``) with the first
        rule it breaks otherwise. The policy version that allowed it (None: no policy)."""
        policy = self.in_force()
        if policy is None:
            return None
        compliance, _ = self._judged(policy, launch, host, place_of(host), {})
        if compliance.compliant:
            return policy.version
        first = compliance.reasons[0]
        raise AttestationError(
            "workload",
            f"{first.message}: its keys are not released (policy version {policy.version})",
            expected=first.expected,
            got=first.got,
        )


def _origin(compliance: Compliance, event: LaunchEvent, host_id: str) -> Origin:
    return Origin(
        identity=compliance.identity or "",
        workload=compliance.workload or "",
        host_id=host_id,
        image_digest=event.image_digest,
        rootfs_digest=event.rootfs_digest,
        launch_profile=event.launch_profile_digest,
        at=0.0,
    )


def last_compliant(store: Store, identity: str, workload: str) -> Origin | None:
    """The last compliant launch of ``identity`` (of ``workload``) the server verified, on any
    host: the launch a checkpoint of it was allowed from (docs/policy.md §8: only a compliant
    launch is checkpointed), which its restore is compared with. None: there is none."""
    for row in reversed(store.workload_launches(workload)):
        if row.identity == identity and row.compliant is True:
            return Origin(
                identity=identity,
                workload=workload,
                host_id=row.host_id,
                image_digest=row.image_digest,
                rootfs_digest=row.rootfs_digest,
                launch_profile=row.launch_profile,
                at=row.at,
            )
    return None


def place_of(host: HostRecord) -> HostPlace:
    """Where the operator admitted the host: its group and attributes."""
    admission = host.admission
    return HostPlace(
        group=host.group or None,
        attributes={} if admission is None else dict(admission.attributes),
    )


def violations(launches: Sequence[AppraisedLaunch]) -> tuple[Reason, ...]:
    """The reasons of the launches whose non-compliance untrusts the host."""
    return tuple(
        reason
        for launch in launches
        if launch.compliance is not None and launch.compliance.untrusts
        for reason in launch.compliance.reasons
    )
