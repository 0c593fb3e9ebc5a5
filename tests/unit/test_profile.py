"""Config digests and the launch profile."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from trusthook.common.jcs import canonicalize
from trusthook.measure.profile import config_digest, launch_profile, launch_profile_digest

CID = "4f1c2a9e8b7d6c5f4e3d2c1b0a9f8e7d6c5b4a3f2e1d0c9b8a7f6e5d4c3b2a19"
OTHER = "9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a8b"
LABEL = "system_u:system_r:container_t:s0:c12,c34"
MOUNT_LABEL = "system_u:object_r:container_file_t:s0:c12,c34"
COPY_HOOK = {"path": "/bin/sh", "args": ["sh", "-c", "cp -a /run/trusthook/roots /tmp/loot"]}
OWN_HOOK = {
    "path": "/usr/local/bin/trusthook-hook",
    "args": ["trusthook-hook", "--socket", "/run/trusthook/agent.sock", "--timeout", "30"],
    "timeout": 30,
}
DOC_JCS = (
    b'{"annotations":{"run.oci.keep_original_groups":"1"}'
    b',"hooks":{"poststop":[{"args":["cleanup","{container-id}"]'
    b',"path":"/usr/bin/cleanup"}]},"linux":{"deviceCgroup":[{"access":"rwm","allow":false}]'
    b',"devices":[],"gidMappings":null,"maskedPaths":["/proc/acpi","/proc/kcore"]'
    b',"mountLabel":null,"namespaces":[{"path":"/var/run/netns/{netns}","type":"network"}'
    b',{"path":null,"type":"mount"},{"path":null,"type":"pid"}],"personality":null'
    b',"readonlyPaths":[],"rootfsPropagation":null,"seccomp":null,"sysctl":null'
    b',"uidMappings":null},"mounts":[{"destination":"/proc","options":["nosuid","noexec"'
    b',"nodev"],"source":"proc","type":"proc"},{"destination":"/dev/shm","options":["rbind"'
    b',"rprivate"],"source":"/var/lib/docker/containers/{container-id}/mounts/shm"'
    b',"type":"bind"}],"process":{"apparmorProfile":null,"args":["sh"]'
    b',"capabilities":{"ambient":[],"bounding":["CAP_CHOWN","CAP_KILL"]'
    b',"effective":["CAP_CHOWN","CAP_KILL"],"inheritable":[],"permitted":[]},"cwd":"/"'
    b',"env":["PATH=/bin","TERM=xterm"],"noNewPrivileges":true,"rlimits":[]'
    b',"selinuxLabel":"system_u:system_r:container_t:s0:{categories=2}","user":{"gid":0'
    b',"uid":0}},"profileVersion":2,"root":{"readonly":true}}'
)
DOC_DIGEST = "sha256:f1e0379b58cdabe6f664c08f3a89f8cef423b4f725d36c08718100843cb3349f"


def docker_setkey(cid: str, pid: int = 4242, controller: str = "350e6d742eb5") -> dict[str, Any]:
    """The prestart hook dockerd adds to every container (up to 28.2 at least)."""
    return {
        "path": f"/proc/{pid}/exe",
        "args": ["libnetwork-setkey", "-exec-root=/var/run/docker", cid, controller],
    }


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
            "selinuxLabel": LABEL,
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
        "hooks": {"prestart": [docker_setkey(cid)]},
        "annotations": {
            "io.kubernetes.cri.sandbox-id": cid,
            "org.opencontainers.image.stopSignal": "15",
            "run.oci.hooks.stdout": "/var/log/hooks.log",
        },
        "linux": {
            "mountLabel": MOUNT_LABEL,
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
        # labels
        lambda c: c["process"].update(apparmorProfile="unconfined"),
        lambda c: c["process"].update(selinuxLabel=LABEL.replace("container_t", "spc_t")),
        lambda c: c["process"].update(selinuxLabel=LABEL.replace(":c12,c34", "")),
        lambda c: c["process"].update(selinuxLabel=LABEL.replace("c12,c34", "c0.c1023")),
        lambda c: c["process"].update(selinuxLabel=LABEL.replace(":s0:", ":s1:")),
        lambda c: c["linux"].update(mountLabel=MOUNT_LABEL.replace("container_file_t", "x_t")),
        lambda c: c["linux"].update(mountLabel=None),
        # hooks: one added in any stage, and each part of an entry
        lambda c: c["hooks"].setdefault("poststart", []).append(COPY_HOOK),
        lambda c: c["hooks"]["prestart"].append(COPY_HOOK),
        lambda c: c["hooks"]["prestart"].insert(0, COPY_HOOK),
        lambda c: c["hooks"]["prestart"][0]["args"].append("-v"),
        lambda c: c["hooks"]["prestart"][0]["args"].__setitem__(1, "-exec-root=/tmp/x"),
        lambda c: c["hooks"]["prestart"][0]["args"].__setitem__(2, OTHER),
        lambda c: c["hooks"]["prestart"][0].update(path="/proc/self/exe"),
        lambda c: c["hooks"].update(poststart=c["hooks"].pop("prestart")),
        lambda c: c["hooks"]["prestart"][0].update(path="/usr/bin/other"),
        lambda c: c["hooks"]["prestart"][0].update(env=["LD_PRELOAD=/x.so"]),
        lambda c: c["hooks"]["prestart"][0].update(timeout=5),
        lambda c: c["hooks"].update(prestart=[]),
        # runtime-interpreted annotations
        lambda c: c["annotations"].update({"run.oci.seccomp.receiver": "/run/listener.sock"}),
        lambda c: c["annotations"].update({"run.oci.hooks.stdout": "/var/log/other.log"}),
        lambda c: c["annotations"].pop("run.oci.hooks.stdout"),
        lambda c: c["annotations"].update({"run.oci.handler": "krun"}),
        lambda c: c["annotations"].update({"org.systemd.property.DeviceAllow": "'/dev/sda rwm'"}),
        lambda c: c["annotations"].update({"org.criu.config": "/etc/criu/x.conf"}),
        lambda c: c["annotations"].update({"io.kubernetes.cri.container-type": "sandbox"}),
        lambda c: c["annotations"].update({"module.wasm.image/variant": "compat"}),
        # joined namespaces, by path
        lambda c: c["linux"]["namespaces"][2].update(path="/proc/4242/ns/pid"),
        lambda c: c["linux"]["namespaces"][2].update(path="/proc/4243/ns/pid"),
        lambda c: c["linux"]["namespaces"].append({"type": "ipc", "path": "/proc/4242/ns/ipc"}),
        lambda c: c["linux"]["namespaces"][1].update(path="/run/netns/pod"),
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
        lambda c: c["process"]["env"].reverse(),
        lambda c: c["process"]["capabilities"]["effective"].reverse(),
        # engine bookkeeping and trusthook's own annotations: no runtime reads them
        lambda c: c["annotations"].update({"io.kubernetes.pod.name": "web-7d4b9c-x2x9z"}),
        lambda c: c["annotations"].update({"io.kubernetes.cri.sandbox-id": OTHER}),
        lambda c: c["annotations"].update({"org.opencontainers.image.stopSignal": "15"}),
        lambda c: c["annotations"].update({"io.container.manager": "libpod"}),
        lambda c: c["annotations"].update({"org.trusthook.image.layout": "/srv/images/app"}),
        lambda c: c["annotations"].update({"run.oci": "no prefix without the dot"}),
        # a fresh MCS category pair per container
        lambda c: c["process"].update(selinuxLabel=LABEL.replace("c12,c34", "c7,c910")),
        lambda c: c["linux"].update(mountLabel=MOUNT_LABEL.replace("c12,c34", "c7,c910")),
        # a pod's named network namespace, named afresh for every pod
        lambda c: c["linux"]["namespaces"][1].update(path="/run/netns/pod"),
        # empty hook stages run nothing
        lambda c: c["hooks"].update(poststop=[]),
        # dockerd's pid and its network controller's id, new at every start of dockerd
        lambda c: c["hooks"].update(prestart=[docker_setkey(CID, 77, "0123456789ab")]),
        lambda c: c["hooks"].update(prestart=[docker_setkey(CID, 77, "0123456789ab" * 5 + "cdef")]),
        lambda c: c["linux"]["namespaces"][0].update(path=""),
    ],
)
def test_irrelevant_changes_keep_the_profile(change: Any) -> None:
    config = docker_like(CID)
    config["linux"]["namespaces"][1]["path"] = "/run/netns/cni-1f2e3d4c"
    changed = copy.deepcopy(config)
    change(changed)
    assert launch_profile_digest(changed, CID) == launch_profile_digest(config, CID)


def test_a_named_network_namespace_is_recorded_by_its_directory() -> None:
    config = docker_like(CID)
    config["linux"]["namespaces"] += [
        {"type": "network", "path": "/var/run/netns/cni-1f2e3d4c"},
        {"type": "pid", "path": f"/run/containers/{CID}/ns/pid"},
        {"type": "ipc", "path": "/run/netns/not-a-network-namespace"},
        {"type": "network", "path": "/run/netns/deeper/name"},
    ]
    assert launch_profile(config, CID)["linux"]["namespaces"] == [
        {"path": "/run/containers/{container-id}/ns/pid", "type": "pid"},
        {"path": "/run/netns/deeper/name", "type": "network"},
        {"path": "/run/netns/not-a-network-namespace", "type": "ipc"},
        {"path": "/var/run/netns/{netns}", "type": "network"},
        {"path": None, "type": "mount"},
        {"path": None, "type": "network"},
        {"path": None, "type": "pid"},
    ]


def test_hooks_keep_their_order_and_their_stage() -> None:
    first, second = docker_like(CID), docker_like(CID)
    first["hooks"]["prestart"].append(COPY_HOOK)
    second["hooks"]["prestart"].insert(0, COPY_HOOK)
    moved = docker_like(CID)
    moved["hooks"] = {"createRuntime": moved["hooks"].pop("prestart")}
    digests = {launch_profile_digest(c, CID) for c in (first, second, moved, docker_like(CID))}
    assert len(digests) == 4


def test_labels_keep_all_but_the_choice_of_categories() -> None:
    def label(value: str) -> Any:
        config = docker_like(CID)
        config["process"]["selinuxLabel"] = value
        return launch_profile(config, CID)["process"]["selinuxLabel"]

    assert label(LABEL) == "system_u:system_r:container_t:s0:{categories=2}"
    assert label("u:r:t:s0-s0:c0.c1023") == "u:r:t:s0-s0:{categories=1024}"
    assert label("u:r:t:s0:c1,c3.c5") == "u:r:t:s0:{categories=4}"
    for verbatim in ("u:r:t:s0", "u:r:t", "u:r:t:s0:c5.c1", "u:r:t:SystemLow-SystemHigh", ""):
        assert label(verbatim) == verbatim


def test_trusthook_s_own_hook_entry_is_left_out_only_when_it_is_exactly_that() -> None:
    config = docker_like(CID)
    with_ours = copy.deepcopy(config)
    with_ours["hooks"]["createRuntime"] = [OWN_HOOK]
    assert launch_profile_digest(with_ours, CID, own_hook=OWN_HOOK) == launch_profile_digest(
        config, CID, own_hook=OWN_HOOK
    )
    assert launch_profile_digest(with_ours, CID) != launch_profile_digest(config, CID)
    other_agent = copy.deepcopy(with_ours)
    other_agent["hooks"]["createRuntime"][0] = {
        **OWN_HOOK,
        "args": ["trusthook-hook", "--socket", "/tmp/evil.sock"],
    }
    assert launch_profile_digest(other_agent, CID, own_hook=OWN_HOOK) != launch_profile_digest(
        config, CID, own_hook=OWN_HOOK
    )


def test_the_container_id_is_replaced_in_hooks_annotations_and_namespace_paths() -> None:
    config = docker_like(CID)
    config["hooks"]["poststop"] = [{"path": f"/var/lib/x/{CID}/cleanup", "env": [f"ID/{CID}"]}]
    config["annotations"]["run.oci.hooks.stderr"] = f"/var/log/{CID}/hooks.err"
    config["linux"]["namespaces"].append({"type": "uts", "path": f"/run/uts/{CID}"})
    profile = launch_profile(config, CID)
    assert CID not in repr(profile)
    assert profile["hooks"]["prestart"] == [
        {
            "path": "/proc/{dockerd-pid}/exe",
            "args": [
                "libnetwork-setkey",
                "-exec-root=/var/run/docker",
                "{container-id}",
                "{controller-id}",
            ],
        }
    ]
    assert profile["hooks"]["poststop"] == [
        {"path": "/var/lib/x/{container-id}/cleanup", "env": ["ID/{container-id}"]}
    ]
    assert profile["annotations"] == {
        "run.oci.hooks.stdout": "/var/log/hooks.log",
        "run.oci.hooks.stderr": "/var/log/{container-id}/hooks.err",
    }


def test_only_docker_s_exact_network_hook_loses_its_pid_and_controller_id() -> None:
    def digest(hook: dict[str, Any], stage: str = "prestart") -> str:
        config = docker_like(CID)
        config["hooks"] = {stage: [hook]}
        return launch_profile_digest(config, CID)

    assert digest(docker_setkey(CID, 1)) == digest(docker_setkey(CID, 2, "abcdef012345"))
    for near in (
        {**docker_setkey(CID, 1), "env": []},
        {**docker_setkey(CID, 1), "args": ["libnetwork-setkey", "-exec-root=x", CID, "ab" * 6]},
        {**docker_setkey(CID, 1), "args": ["other", "-exec-root=/x", CID, "ab" * 6]},
        {**docker_setkey(CID, 1), "args": ["libnetwork-setkey", "-exec-root=/x", CID, "AB" * 6]},
        {**docker_setkey(CID, 1), "path": "/proc/01/exe"},
    ):
        assert digest(near) != digest({**near, "path": "/proc/2/exe"})
    assert digest(docker_setkey(CID, 1), "poststart") != digest(docker_setkey(CID, 2), "poststart")


def test_the_documented_example() -> None:
    """docs/measurement.md 4.6, byte for byte."""
    config = {
        "ociVersion": "1.1.0",
        "hostname": "c0ffee",
        "process": {
            "args": ["sh"],
            "env": ["PATH=/bin", "HOSTNAME=c0ffee", "TERM=xterm"],
            "cwd": "/",
            "user": {"uid": 0, "gid": 0},
            "capabilities": {
                "bounding": ["CAP_KILL", "CAP_CHOWN"],
                "effective": ["CAP_KILL", "CAP_CHOWN"],
            },
            "noNewPrivileges": True,
            "selinuxLabel": "system_u:system_r:container_t:s0:c12,c34",
        },
        "root": {"path": "rootfs", "readonly": True},
        "mounts": [
            {
                "destination": "/proc",
                "type": "proc",
                "source": "proc",
                "options": ["nosuid", "noexec", "nodev"],
            },
            {
                "destination": "/etc/hosts",
                "type": "bind",
                "source": "/var/lib/docker/containers/c0ffee/hosts",
                "options": ["rbind", "rprivate"],
            },
            {
                "destination": "/dev/shm",
                "type": "bind",
                "source": "/var/lib/docker/containers/c0ffee/mounts/shm",
                "options": ["rbind", "rprivate"],
            },
        ],
        "hooks": {
            "createRuntime": [OWN_HOOK],
            "poststop": [{"path": "/usr/bin/cleanup", "args": ["cleanup", "c0ffee"]}],
        },
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "network", "path": "/var/run/netns/cni-5e6f"},
                {"type": "mount"},
            ],
            "cgroupsPath": "system.slice:docker:c0ffee",
            "resources": {
                "memory": {"limit": 1000000},
                "devices": [{"allow": False, "access": "rwm"}],
            },
            "maskedPaths": ["/proc/kcore", "/proc/acpi"],
        },
        "annotations": {"run.oci.keep_original_groups": "1", "io.kubernetes.pod.name": "web"},
    }
    assert canonicalize(launch_profile(config, "c0ffee", own_hook=OWN_HOOK)) == DOC_JCS
    assert launch_profile_digest(config, "c0ffee", own_hook=OWN_HOOK) == DOC_DIGEST


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
