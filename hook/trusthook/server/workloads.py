"""What the server answers about launches and workloads (``/v1/hosts/{id}/launches``,
``/v1/workloads``, ``trusthook server workloads``): the stored launches as API bodies,
grouped by workload, with each identity's lineage."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from trusthook.common.clock import iso_from_timestamp
from trusthook.errors import NotFoundError
from trusthook.policy.lineage import Move, Origin
from trusthook.policy.manifest import Manifest
from trusthook.server import api
from trusthook.server.policy import InForce
from trusthook.server.records import LaunchRow
from trusthook.server.store import Store


def launch_body(row: LaunchRow, hostnames: Mapping[str, str]) -> api.LaunchBody:
    return api.LaunchBody(
        host_id=row.host_id,
        hostname=hostnames.get(row.host_id, ""),
        boot_id=row.boot_id,
        recnum=row.recnum,
        container=row.container,
        identity=row.identity,
        workload=row.workload,
        image=row.image,
        image_digest=row.image_digest,
        rootfs_digest=row.rootfs_digest,
        launch_profile=row.launch_profile,
        encrypted=row.encrypted,
        compliant=row.compliant,
        reasons=[api.ReasonBody.of(r) for r in row.reasons],
        policy_version=row.policy_version,
        move=None if row.move is None else row.move.value,
        at=iso_from_timestamp(row.at),
    )


def summaries(rows: Sequence[LaunchRow], manifest: Manifest | None) -> list[api.WorkloadSummary]:
    """One summary per workload: the policy's, in its order, then any only launches name."""
    names = [] if manifest is None else [w.name for w in manifest.workloads]
    by_name: dict[str, list[LaunchRow]] = {name: [] for name in names}
    for row in rows:
        if row.workload is not None:
            by_name.setdefault(row.workload, []).append(row)
    return [summary(name, found, name in names) for name, found in by_name.items()]


def summary(name: str, rows: Sequence[LaunchRow], in_policy: bool) -> api.WorkloadSummary:
    hosts = list(dict.fromkeys(r.host_id for r in rows))
    return api.WorkloadSummary(
        name=name,
        in_policy=in_policy,
        instances=len(rows),
        non_compliant=sum(r.compliant is False for r in rows),
        hosts=hosts,
        first_seen=iso_from_timestamp(rows[0].at) if rows else None,
        last_seen=iso_from_timestamp(rows[-1].at) if rows else None,
    )


def lineage_bodies(
    origins: Sequence[Origin], rows: Sequence[LaunchRow], hostnames: Mapping[str, str]
) -> list[api.LineageBody]:
    """Each identity's creation, with its later launches counted by kind of move."""
    bodies = []
    for origin in origins:
        moves: dict[str, int] = {}
        for row in rows:
            move = row.move
            if row.identity == origin.identity and move is not None and move is not Move.ORIGIN:
                moves[move.value] = moves.get(move.value, 0) + 1
        bodies.append(
            api.LineageBody(
                identity=origin.identity,
                host_id=origin.host_id,
                hostname=hostnames.get(origin.host_id, ""),
                image_digest=origin.image_digest,
                rootfs_digest=origin.rootfs_digest,
                launch_profile=origin.launch_profile,
                created_at=iso_from_timestamp(origin.at),
                moves=moves,
            )
        )
    return bodies


def workload_list(store: Store, policy: InForce | None) -> api.WorkloadList:
    rows = store.workload_launches()
    return api.WorkloadList(
        policy_version=None if policy is None else policy.version,
        workloads=summaries(rows, None if policy is None else policy.manifest),
    )


def workload_detail(store: Store, policy: InForce | None, name: str) -> api.WorkloadDetail:
    defined = None if policy is None else policy.manifest.named(name)
    rows = store.workload_launches(name)
    if defined is None and not rows:
        raise NotFoundError(f"no workload {name[:128]!r} in the policy or among launches")
    names = {h.host_id: h.hostname for h in store.list_hosts()}
    return api.WorkloadDetail(
        summary=summary(name, rows, defined is not None),
        lineages=lineage_bodies(store.lineages_of(name), rows, names),
        policy=None if defined is None else defined.to_json(),
        instances=[launch_body(r, names) for r in rows],
    )
