"""The agent's checks on an encrypted image's config.json, before any key is released: no hook
but trusthook's own (and Docker's network hook), no joined namespace but a named network
namespace."""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import pytest

from trusthook.agent.bundles import hook_entry, own_hook_entry
from trusthook.agent.launch import (
    LiveChecks,
    check_dockerd,
    check_launch_config,
    check_network_namespace,
)
from trusthook.common.config import Config, Mode
from trusthook.errors import BundleError, PolicyRefusedError, RuntimeShimError

OWN = hook_entry(Config(), Path("/opt/trusthook/bin/trusthook-hook"))
COPY = {"path": "/bin/sh", "args": ["sh", "-c", "cp -a /run/trusthook/roots /var/tmp/loot"]}
CID = "a3e364056186de7271fcedfc3865b1a73718bb5e32df085573237df3a9a33520"
SETKEY = {
    "path": "/proc/10387/exe",
    "args": ["libnetwork-setkey", "-exec-root=/var/run/docker", CID, "350e6d742eb5"],
}
NOTHING = LiveChecks(dockerd=(), netns=())


def config(**hooks: list[Any]) -> dict[str, Any]:
    """A config.json as trusthook-runtime leaves it: trusthook's entry last in createRuntime."""
    stages = {"createRuntime": [OWN], **hooks}
    return {
        "hooks": stages,
        "linux": {"namespaces": [{"type": "pid"}, {"type": "network"}, {"type": "mount"}]},
    }


def test_trusthook_s_own_hook_alone_passes() -> None:
    assert check_launch_config(config(), OWN, CID) == NOTHING
    assert check_launch_config(config(poststop=[]), OWN, CID) == NOTHING


@pytest.mark.parametrize("stage", ["prestart", "createRuntime", "createContainer", "poststart"])
def test_any_other_hook_is_refused_naming_it(stage: str) -> None:
    launch = config()
    launch["hooks"].setdefault(stage, []).insert(0, COPY)
    with pytest.raises(PolicyRefusedError, match=f"has a {stage} hook '/bin/sh'") as e:
        check_launch_config(launch, OWN, CID)
    assert "expected no hook but trusthook's own createRuntime entry" in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    "change",
    [
        lambda h: h.update(args=[*h["args"], "--audit"]),
        lambda h: h.update(env=["LD_PRELOAD=/tmp/x.so"]),
        lambda h: h.update(timeout=1),
        lambda h: h.update(path="/tmp/trusthook-hook"),
    ],
)
def test_an_entry_that_is_not_exactly_trusthook_s_own_is_another_hook(change: Any) -> None:
    other = copy.deepcopy(OWN)
    change(other)
    with pytest.raises(PolicyRefusedError, match="has a createRuntime hook"):
        check_launch_config({"hooks": {"createRuntime": [other]}}, OWN, CID)


def test_trusthook_s_own_hook_must_be_there_once_and_only_in_create_runtime() -> None:
    with pytest.raises(PolicyRefusedError, match="has a poststart hook '/opt/trusthook/bin"):
        check_launch_config({"hooks": {"createRuntime": [OWN], "poststart": [OWN]}}, OWN, CID)
    with pytest.raises(PolicyRefusedError, match="trusthook's hook 2 times, expected once"):
        check_launch_config({"hooks": {"createRuntime": [OWN, OWN]}}, OWN, CID)
    with pytest.raises(PolicyRefusedError, match="trusthook's hook 0 times, expected once"):
        check_launch_config({}, OWN, CID)


def test_docker_s_network_hook_for_this_container_is_left_to_check_its_dockerd() -> None:
    assert check_launch_config(config(prestart=[SETKEY]), OWN, CID) == LiveChecks(
        dockerd=(10387,), netns=()
    )


@pytest.mark.parametrize(
    "launch",
    [
        config(prestart=[SETKEY, SETKEY]),
        config(poststart=[SETKEY]),
        config(prestart=[{**SETKEY, "env": ["LD_PRELOAD=/tmp/x.so"]}]),
        config(prestart=[{**SETKEY, "args": [*SETKEY["args"][:2], "other", "350e6d742eb5"]}]),
        config(prestart=[{**SETKEY, "args": [*SETKEY["args"][:3], "not-a-controller"]}]),
        config(prestart=[{**SETKEY, "path": "/tmp/exe"}]),
    ],
)
def test_anything_but_docker_s_exact_network_hook_for_this_container_is_refused(
    launch: dict[str, Any],
) -> None:
    with pytest.raises(PolicyRefusedError, match="hook '/(proc/10387|tmp)/exe'"):
        check_launch_config(launch, OWN, CID)


def test_docker_s_network_hook_must_name_the_host_s_dockerd() -> None:
    with pytest.raises(
        PolicyRefusedError, match=r"runs '.*python[^']*', expected the host's dockerd"
    ):
        check_dockerd(os.getpid())  # this process runs python, not dockerd
    with pytest.raises(PolicyRefusedError, match="cannot be inspected"):
        check_dockerd(2**22 + 1)  # above the kernel's pid limit: no such process


@pytest.mark.parametrize(
    ("ns_type", "path"),
    [
        ("pid", "/proc/4242/ns/pid"),
        ("ipc", "/proc/4242/ns/ipc"),
        ("mount", "/proc/4242/ns/mnt"),
        ("user", "/proc/4242/ns/user"),
        ("network", "/proc/4242/ns/net"),  # another container's, not a named one
        ("network", "/run/netns/a/b"),
        ("network", "/run/netns/.."),
        ("ipc", "/run/netns/pod"),
    ],
)
def test_a_joined_namespace_is_refused_naming_it(ns_type: str, path: str) -> None:
    launch = config()
    launch["linux"]["namespaces"].append({"type": ns_type, "path": path})
    with pytest.raises(PolicyRefusedError, match=f"joins the {ns_type} namespace at '{path}'"):
        check_launch_config(launch, OWN, CID)


def test_a_named_network_namespace_is_returned_for_its_own_check() -> None:
    launch = config()
    launch["linux"]["namespaces"][1]["path"] = "/var/run/netns/cni-1f2e"
    expected = LiveChecks(dockerd=(), netns=("/var/run/netns/cni-1f2e",))
    assert check_launch_config(launch, OWN, CID) == expected
    launch["linux"]["namespaces"][0]["path"] = ""  # empty: a new namespace
    assert check_launch_config(launch, OWN, CID) == expected


@pytest.mark.parametrize(
    ("launch", "message"),
    [
        ({"hooks": []}, "'hooks' must be an object"),
        ({"hooks": {"createRuntime": OWN}}, "'hooks.createRuntime' must be an array"),
        ({"hooks": {"createRuntime": [OWN]}, "linux": []}, "must be an array of objects"),
        (
            {"hooks": {"createRuntime": [OWN]}, "linux": {"namespaces": ["pid"]}},
            "must be an array of objects",
        ),
    ],
)
def test_malformed_hooks_or_namespaces_are_refused(launch: dict[str, Any], message: str) -> None:
    with pytest.raises(BundleError, match=message):
        check_launch_config(launch, OWN, CID)


def test_a_file_that_is_not_a_namespace_is_refused(tmp_path: Path) -> None:
    plain = tmp_path / "netns"
    plain.write_bytes(b"")
    with pytest.raises(PolicyRefusedError, match="is not a namespace"):
        check_network_namespace(str(plain))
    link = tmp_path / "link"
    link.symlink_to("/proc/self/ns/net")
    with pytest.raises(PolicyRefusedError, match="cannot open the network namespace"):
        check_network_namespace(str(link))
    with pytest.raises(PolicyRefusedError, match="cannot open the network namespace"):
        check_network_namespace(str(tmp_path / "missing"))


def test_the_agent_knows_the_entry_the_shim_writes(tmp_path: Path) -> None:
    program = tmp_path / "trusthook-hook"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    config = Config(hook_path=program, mode=Mode.AUDIT)
    entry = own_hook_entry(config)
    assert entry == hook_entry(config, program)
    assert entry["args"][-3:] == ["--audit", "--stage", "createRuntime"]
    with pytest.raises(RuntimeShimError, match="not found or not executable"):
        own_hook_entry(Config(hook_path=tmp_path / "absent"))
