"""Config digests and the launch profile."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from trusthook.measure.profile import config_digest, launch_profile, launch_profile_digest

CID = "4f1c2a9e8b7d6c5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a19"


def docker_like(cid: str) -> dict[str, Any]:
    """The shape of a config.json dockerd writes, with its per-container values."""
    return {
        "ociVersion": "1.0.2-dev",
        "process": {
            "user": {"uid": 0, "gid": 0},
            "args": ["/bin/echo", "hello"],
            "env": ["PATH=/usr/bin:/bin", f"HOSTNAME={cid[:12]}"],
            "cwd": "/",
            "capabilities": {
                "bounding": ["CAP_CHOWN", "CAP_KILL"],
                "effective": ["CAP_KILL", "CAP_CHOWN"],
                "permitted": ["CAP_CHOWN", "CAP_KILL"],
            },
            "apparmorProfile": "docker-default",
            "oomScoreAdj": 0,
        },
        "root": {"path": f"/var/lib/docker/overlay2/{cid}/merged"},
        "hostname": cid[:12],
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid"]},
            {
                "destination": "/dev/shm",
                "type": "bind",
                "source": f"/var/lib/docker/containers/{cid}/mounts/shm",
                "options": ["rbind", "nosuid"],
            },
            {
                "destination": "/etc/resolv.conf",
                "type": "bind",
                "source": f"/var/lib/docker/containers/{cid}/resolv.conf",
                "options": ["rbind", "rprivate"],
            },
            {
                "destination": "/etc/hostname",
                "type": "bind",
                "source": f"/var/lib/docker/containers/{cid}/hostname",
                "options": ["rbind", "rprivate"],
            },
        ],
        "hooks": {"prestart": [{"path": "/proc/1/exe", "args": ["libnetwork-setkey", cid]}]},
        "linux": {
            "cgroupsPath": f"/docker/{cid}",
            "namespaces": [{"type": "mount"}, {"type": "network"}, {"type": "pid"}],
            "maskedPaths": ["/proc/kcore", "/proc/acpi"],
            "readonlyPaths": ["/proc/sys"],
            "resources": {
                "memory": {"limit": 1 << 30},
                "devices": [{"allow": False, "access": "rwm"}],
            },
            "seccomp": {"defaultAction": "SCMP_ACT_ERRNO", "syscalls": []},
        },
    }


OTHER = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b"


def test_two_instances_share_the_launch_profile() -> None:
    a, b = docker_like(CID), docker_like(OTHER)
    assert config_digest(a) != config_digest(b)
    assert launch_profile_digest(a, CID) == launch_profile_digest(b, OTHER)


def test_profile_leaves_out_per_instance_values() -> None:
    profile = launch_profile(docker_like(CID), CID)
    text = repr(profile)
    assert CID not in text and CID[:12] not in text
    destinations = [m["destination"] for m in profile["mounts"]]
    assert destinations == ["/proc", "/dev/shm"]
    assert profile["mounts"][1]["source"] == "/var/lib/docker/containers/{container-id}/mounts/shm"
    assert profile["process"]["capabilities"]["effective"] == ["CAP_CHOWN", "CAP_KILL"]


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c["process"]["capabilities"]["bounding"].append("CAP_SYS_ADMIN"),
        lambda c: c["process"]["args"].append("x"),
        lambda c: c["process"]["env"].append("LD_PRELOAD=/x.so"),
        lambda c: c["process"].update(user={"uid": 1000, "gid": 0}),
        lambda c: c["process"].update(noNewPrivileges=True),
        lambda c: c["root"].update(readonly=True),
        lambda c: c["linux"]["namespaces"].pop(),
        lambda c: c["linux"]["namespaces"][1].update(path="/proc/1/ns/net"),
        lambda c: c["linux"]["maskedPaths"].pop(),
        lambda c: c["linux"].pop("seccomp"),
        lambda c: c["linux"]["resources"]["devices"][0].update(allow=True),
        lambda c: c["linux"].update(
            devices=[{"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11}]
        ),
        lambda c: c["process"]["env"].insert(0, "PATH=/tmp"),  # order of duplicates matters
        lambda c: c["linux"].update(rootfsPropagation="shared"),
        lambda c: c["mounts"][0].update(uidMappings=[{"containerID": 0, "hostID": 0, "size": 1}]),
        lambda c: c["mounts"].append(
            {"destination": "/host", "type": "bind", "source": "/", "options": ["rbind"]}
        ),
    ],
)
def test_security_relevant_changes_change_the_profile(change: Any) -> None:
    config = docker_like(CID)
    changed = copy.deepcopy(config)
    change(changed)
    assert launch_profile_digest(changed, CID) != launch_profile_digest(config, CID)


@pytest.mark.parametrize(
    "change",
    [
        lambda c: c.update(hostname="other"),
        lambda c: c["linux"].update(cgroupsPath="/elsewhere"),
        lambda c: c["linux"]["resources"]["memory"].update(limit=1 << 31),
        lambda c: c.update(annotations={"a": "b"}),
        lambda c: c["process"]["env"].reverse(),
        lambda c: c["process"]["capabilities"]["effective"].reverse(),
    ],
)
def test_irrelevant_changes_keep_the_profile(change: Any) -> None:
    config = docker_like(CID)
    changed = copy.deepcopy(config)
    change(changed)
    assert launch_profile_digest(changed, CID) == launch_profile_digest(config, CID)


def test_only_whole_path_components_equal_to_the_id_are_replaced() -> None:
    config = docker_like("ab")
    config["mounts"].append({"destination": "/d", "type": "bind", "source": "/tab/ab/abc"})
    sources = [m["source"] for m in launch_profile(config, "ab")["mounts"]]
    assert "/tab/{container-id}/abc" in sources


def test_per_instance_mounts_are_matched_after_normalising() -> None:
    config = docker_like(CID)
    config["mounts"].append({"destination": "/etc//hosts/", "type": "bind", "source": "/x"})
    assert launch_profile_digest(config, CID) == launch_profile_digest(docker_like(CID), CID)


def test_malformed_fields_do_not_crash_and_still_count() -> None:
    config: dict[str, Any] = {"process": "nonsense", "linux": [1], "mounts": {"x": 1}}
    assert launch_profile_digest(config, "x").startswith("sha256:")
