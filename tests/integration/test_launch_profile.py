"""The launch profile against the attack it was widened for, end to end (runc through
trusthook-runtime, the agent on swtpm, the server): an encrypted image released only to a pinned
launch profile; the same launch with an added hook, or joining another container's namespace,
gets nothing and decrypts nothing. The `scene` fixture is test_encrypted_launch's."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration import test_encrypted_launch as encrypted
from tests.integration.conftest import runc
from trusthook.measure.profile import launch_profile_digest

pytestmark = pytest.mark.integration
scene = encrypted.scene
NETNS = Path("/run/netns")


def _config(bundle: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((bundle / "config.json").read_text())
    return config


def _write(bundle: Path, config: dict[str, Any]) -> None:
    (bundle / "config.json").write_text(json.dumps(config))


def _events(scene: encrypted.Scene) -> list[str]:
    return [event for event, _ in scene.audit()]


def _pin_the_profile_of(scene: encrypted.Scene, bundle: Path) -> str:
    """Pin the release rule to the launch profile of ``bundle``'s config.json as the test
    wrote it (the operator's view: no trusthook hook yet); the digest."""
    pinned = launch_profile_digest(_config(bundle), "")
    scene.release_rules([(scene.image, ["lab"], [pinned])])
    return pinned


def test_a_pinned_profile_gets_the_keys_and_an_added_poststart_hook_gets_nothing(
    scene: encrypted.Scene,
) -> None:
    bundle = scene.bundle(["/bin/cat", "/app/secret.txt"])
    pinned = _pin_the_profile_of(scene, bundle)
    result = scene.run(bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == encrypted.SECRET
    records, _ = scene.host.snapshot()
    assert records[-2].event.stage == "release"
    assert records[-2].event.launch_profile_digest == pinned  # what the agent records
    assert _events(scene) == ["released"]

    # The confirmed attack: the same launch, plus a hook that copies the decrypted root.
    loot = scene.tmp / "loot"
    loot.mkdir()
    attack = scene.bundle(["/bin/cat", "/app/secret.txt"])
    config = _config(attack)
    copy = f"cp -a {scene.host.config.image_roots}/. {loot}/"
    config["hooks"] = {"poststart": [{"path": "/bin/sh", "args": ["sh", "-c", copy]}]}
    _write(attack, config)
    assert launch_profile_digest(config, "") != pinned
    refused = scene.run(attack)
    assert refused.returncode != 0
    assert "refusing to decrypt: config.json has a poststart hook '/bin/sh'" in refused.stderr
    assert _events(scene) == ["released"]  # the server was not even asked
    assert list(loot.iterdir()) == []
    scene.assert_no_plaintext()


@contextlib.contextmanager
def _created_container(bundle: Path) -> Iterator[int]:
    """A plain container that ``runc create`` made (its init waits to be started); its pid."""
    cid = f"other-{uuid.uuid4().hex[:8]}"
    quiet = subprocess.DEVNULL
    created = subprocess.run(
        ["runc", "create", "--bundle", str(bundle), cid],
        stdin=quiet,
        stdout=quiet,
        stderr=quiet,
        check=False,
        timeout=120,
    )
    assert created.returncode == 0, "runc create of the other container failed"
    try:
        state = runc("state", cid)
        assert state.returncode == 0, state.stderr
        yield int(json.loads(state.stdout)["pid"])
    finally:
        runc("delete", "--force", cid)


def test_joining_another_container_s_pid_namespace_is_refused_before_release(
    scene: encrypted.Scene, bundle_factory: Any
) -> None:
    scene.release_rules([(scene.image, ["lab"], ["any"])])
    with _created_container(bundle_factory(["/bin/sleep", "600"])) as pid:
        bundle = scene.bundle(["/bin/cat", "/app/secret.txt"])
        config = _config(bundle)
        path = f"/proc/{pid}/ns/pid"
        namespaces = [n for n in config["linux"]["namespaces"] if n["type"] != "pid"]
        config["linux"]["namespaces"] = [*namespaces, {"type": "pid", "path": path}]
        _write(bundle, config)
        result = scene.run(bundle)
    assert result.returncode != 0
    assert f"refusing to decrypt: config.json joins the pid namespace at '{path}'" in result.stderr
    assert _events(scene) == []
    scene.assert_no_plaintext()


@contextlib.contextmanager
def _named_netns(*, host: bool) -> Iterator[Path]:
    """A named network namespace in /run/netns, made as ip-netns makes one (a bind mount of a
    namespace on an empty file): a new one, or this process's own (the host's) given a name."""
    made_dir = not NETNS.exists()
    NETNS.mkdir(mode=0o755, exist_ok=True)
    path = NETNS / f"trusthook-test-{uuid.uuid4().hex[:8]}"
    path.touch()
    try:
        if host:
            command = ["mount", "--bind", f"/proc/{os.getpid()}/ns/net", str(path)]
        else:
            command = ["unshare", f"--net={path}", "true"]
        subprocess.run(command, check=True, capture_output=True)
        try:
            yield path
        finally:
            subprocess.run(["umount", str(path)], check=True, capture_output=True)
    finally:
        path.unlink()
        if made_dir:
            NETNS.rmdir()


def _joining(config: dict[str, Any], netns: Path | str) -> dict[str, Any]:
    """``config`` with its network namespace joined at ``netns``."""
    namespaces = [n for n in config["linux"]["namespaces"] if n["type"] != "network"]
    return {
        **config,
        "linux": {
            **config["linux"],
            "namespaces": [*namespaces, {"type": "network", "path": str(netns)}],
        },
    }


def _bundle_joining(scene: encrypted.Scene, netns: Path) -> Path:
    bundle = scene.bundle(["/bin/cat", "/app/secret.txt"])
    _write(bundle, _joining(_config(bundle), netns))
    return bundle


def test_a_pod_s_named_network_namespace_may_be_joined_but_not_the_host_s(
    scene: encrypted.Scene,
) -> None:
    with _named_netns(host=False) as pod:
        bundle = _bundle_joining(scene, pod)
        _pin_the_profile_of(scene, bundle)
        config = _config(bundle)  # before trusthook-runtime adds its hook
        result = scene.run(bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == encrypted.SECRET
    recorded = scene.host.snapshot()[0][-1].event.launch_profile_digest
    another_pod = _joining(config, "/run/netns/cni-another-pod")
    assert launch_profile_digest(another_pod, "") == recorded  # its name is not in the profile
    with _named_netns(host=True) as named_host:
        refused = scene.run(_bundle_joining(scene, named_host))
    assert refused.returncode != 0
    assert f"the network namespace {named_host} is the host's" in refused.stderr
    assert _events(scene) == ["released"]
    scene.assert_no_plaintext()


def test_an_empty_launch_profiles_list_releases_nothing_and_any_is_warned_about(
    scene: encrypted.Scene,
) -> None:
    log = scene.server.process.log_path
    assert "release[0] (image " + scene.image + ") allows any launch profile" in log.read_text()
    scene.release_rules([(scene.image, ["lab"], [])])
    assert "release[0] (image " + scene.image + ") lists no launch profile" in log.read_text()
    result = scene.run(scene.bundle(["/bin/cat", "/app/secret.txt"]))
    assert result.returncode != 0
    assert "release rule release[0] lists no launch profile" in result.stderr
    ((event, detail),) = scene.audit()
    assert event == "release_refused"
    records, _ = scene.host.snapshot()
    assert json.loads(detail)["got"] == records[-1].event.launch_profile_digest  # operators'
    scene.assert_no_plaintext()
