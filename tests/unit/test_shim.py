"""The runtime shim's argument handling and config.json editing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trusthook.common.config import Config
from trusthook.errors import RuntimeShimError, TrusthookError
from trusthook.startpath.bundle import check_container_name, prepare_bundle
from trusthook.startpath.runtimeargs import parse_invocation, parse_subcommand

ENTRY = {"path": "/usr/bin/trusthook-hook", "args": ["trusthook-hook"], "timeout": 30}


def _prepare(path: Path) -> Path | None:
    """The shim's bundle step for an ordinary container (no tmpfs root is made)."""
    config = Config(image_roots=path.parent / "roots")
    return prepare_bundle(path, str(path.parent), "id", config, ENTRY)


@pytest.mark.parametrize(
    ("args", "command", "flags"),
    [
        (["create", "--bundle", "/b", "id"], "create", {}),
        (
            ["--root", "/run/x", "--log", "/l", "--log-format", "json", "create", "id"],
            "create",
            {"root": "/run/x", "log": "/l", "log-format": "json"},
        ),
        (
            ["--root=/run/x", "--systemd-cgroup", "run", "id"],
            "run",
            {"root": "/run/x", "systemd-cgroup": "true"},
        ),
        (
            ["--debug", "--rootless", "false", "state", "id"],
            "state",
            {"debug": "true", "rootless": "false"},
        ),
        # runc reads single-dash long flags like double-dash ones (Go's flag package)
        (["-root", "/tmp/r", "run", "id"], "run", {"root": "/tmp/r"}),
        (
            ["-root=/tmp/r", "-debug=false", "create", "id"],
            "create",
            {"root": "/tmp/r", "debug": "false"},
        ),
        (["--", "create", "id"], "create", {}),
        ([], None, {}),
    ],
)
def test_subcommand_after_global_flags(
    args: list[str], command: str | None, flags: dict[str, str]
) -> None:
    invocation = parse_invocation(args)
    assert (invocation.command, invocation.flags) == (command, flags)


def test_help_and_version_run_no_subcommand() -> None:
    for args in (["--version"], ["-v"], ["--help", "create", "id"], ["-h"]):
        assert parse_invocation(args).info and parse_invocation(args).command is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ro", "/tmp/x", "run", "id"], "unknown global flag '--ro'"),  # crun's abbreviation
        (["--bogus", "run", "id"], "unknown global flag"),
        (["--debug=maybe", "run", "id"], "expected a boolean value"),
        (["--root"], "has no value"),
        (["---root", "/x", "run", "id"], "bad flag syntax"),
    ],
)
def test_unclassifiable_global_arguments_are_refused(args: list[str], message: str) -> None:
    with pytest.raises(RuntimeShimError, match=message):
        parse_invocation(args)


def test_docker_style_invocation() -> None:
    args = [
        "--root",
        "/var/run/docker/runtime-runc/moby",
        "--log",
        "/run/containerd/x/log.json",
        "--log-format",
        "json",
        "--systemd-cgroup",
        "create",
        "--bundle",
        "/run/containerd/b",
        "--pid-file",
        "/p",
        "--console-socket",
        "/s",
        "cid",
    ]
    invocation = parse_invocation(args)
    assert invocation.command == "create"
    assert invocation.flag("log") == "/run/containerd/x/log.json"
    sub = parse_subcommand("create", invocation.rest)
    assert (sub.container_id, sub.bundle("/cwd")) == ("cid", "/run/containerd/b")


def test_podman_conmon_style_invocation() -> None:
    args = ["--root", "/run/crun", "--log-level=error", "--systemd-cgroup", "create"]
    args += ["--bundle", "/var/lib/c/b", "--pid-file", "/p", "--no-new-keyring", "cid"]
    invocation = parse_invocation(args)
    sub = parse_subcommand("create", invocation.rest)
    assert (sub.container_id, sub.bundle("/"), sub.flags["no-new-keyring"]) == (
        "cid",
        "/var/lib/c/b",
        "true",
    )


@pytest.mark.parametrize(
    ("sub_args", "bundle"),
    [
        (["-b", "rel", "id"], "/cwd/rel"),
        (["--bundle=/abs", "id"], "/abs"),
        (["-b=/abs", "id"], "/abs"),
        (["id"], "/cwd"),
        (["id", "--bundle", "/after"], "/after"),  # runc moves flags before the argument
        (["--pid-file", "--bundle", "id"], "/cwd"),  # a value flag takes the next argument
    ],
)
def test_bundle(sub_args: list[str], bundle: str) -> None:
    assert parse_subcommand("create", tuple(sub_args)).bundle("/cwd") == bundle


@pytest.mark.parametrize(
    ("command", "sub_args", "message"),
    [
        ("create", ["--bundle"], "flag '--bundle' has no value"),
        ("create", ["-f", "other.json", "id"], "--config"),
        ("run", ["--config=other.json", "id"], "--config"),
        ("create", ["--bun", "/b", "id"], "unknown create flag '--bun'"),
        ("create", ["a", "b"], "exactly one container id, got 2"),
        ("create", [], "exactly one container id, got 0"),
        ("delete", ["--regex", "a.*"], "--regex"),
        ("run", ["--detach=later", "id"], "expected a boolean value"),
    ],
)
def test_unclassifiable_subcommand_arguments_are_refused(
    command: str, sub_args: list[str], message: str
) -> None:
    with pytest.raises(RuntimeShimError, match=message):
        parse_subcommand(command, tuple(sub_args))


def test_detach() -> None:
    assert parse_subcommand("run", ("-d", "id")).detached
    assert not parse_subcommand("run", ("--detach=false", "id")).detached
    assert not parse_subcommand("create", ("id",)).detached


def _shim_config(tmp_path: Path) -> Path:
    """A host configuration whose agent socket has no agent behind it, and whose runtime would
    leave a mark if the shim ever ran it."""
    mark = tmp_path / "runtime-ran"
    runtime = tmp_path / "runtime"
    runtime.write_text(f"#!/bin/sh\ntouch {mark}\n")
    runtime.chmod(0o755)
    config = tmp_path / "trusthook.toml"
    config.write_text(
        f'[agent]\nsocket = "{tmp_path}/no-agent.sock"\n[runtime]\npath = "{runtime}"\n'
        f'[images]\nroots = "{tmp_path}/roots"\n[attestation]\ntimeout = 2\n'
    )
    return config


@pytest.mark.parametrize("command", ["restore", "checkpoint"])
def test_restore_and_checkpoint_without_an_agent_are_refused(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    command: str,
) -> None:
    """Fail closed: no agent to ask, no checkpoint and no restore, and the runtime never runs;
    the restored bundle has trusthook's hook already (written before asking)."""
    from trusthook.startpath.runtime import main

    monkeypatch.setenv("TRUSTHOOK_CONFIG", str(_shim_config(tmp_path)))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "config.json").write_text('{"ociVersion": "1.0.2"}')
    args = [command, "--image-path", str(tmp_path), "id"]
    if command == "restore":
        args[1:1] = ["--bundle", str(bundle), "-d"]
    assert main(["--root", str(tmp_path), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"trusthook-runtime: {command} of container id is refused: "), err
    assert "no-agent.sock" in err and err.count("\n") == 1
    assert not (tmp_path / "runtime-ran").exists()
    hooks = json.loads((bundle / "config.json").read_text()).get("hooks")
    if command == "restore":
        (entry,) = hooks["createRuntime"]
        assert entry["args"][-2:] == ["--stage", "createRuntime"]
    else:
        assert hooks is None


def test_checkpoint_of_an_encrypted_image_container_is_refused_before_asking(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its tmpfs root holds the decrypted image; a checkpoint would write its memory to disk
    in plaintext, and encrypted checkpoints are not built."""
    from trusthook.startpath.runtime import main

    monkeypatch.setenv("TRUSTHOOK_CONFIG", str(_shim_config(tmp_path)))
    (tmp_path / "roots" / "secret").mkdir(parents=True)
    assert main(["checkpoint", "--image-path", str(tmp_path), "secret"]) == 1
    err = capsys.readouterr().err
    assert "checkpoint of container secret is refused: it runs from an encrypted image" in err
    assert "plaintext (encrypted checkpoints are not built)" in err
    assert "no-agent.sock" not in err  # decided here, before the agent is asked
    assert not (tmp_path / "runtime-ran").exists()


def test_restore_of_an_encrypted_image_bundle_is_refused_and_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trusthook.startpath.runtime import main

    monkeypatch.setenv("TRUSTHOOK_CONFIG", str(_shim_config(tmp_path)))
    content = '{"annotations": {"org.trusthook.image.layout": "/l"}, "root": {"path": "r"}}'
    (tmp_path / "config.json").write_text(content)
    assert main(["restore", "-b", str(tmp_path), "--image-path", str(tmp_path), "id"]) == 1
    assert "names an encrypted image" in capsys.readouterr().err
    assert (tmp_path / "config.json").read_text() == content
    assert not (tmp_path / "runtime-ran").exists()


@pytest.mark.parametrize(
    ("command", "args", "flags", "container"),
    [
        (
            "checkpoint",
            ["--image-path", "/i", "--leave-running", "c1", "--work-path=/w"],
            {"image-path": "/i", "leave-running": "true", "work-path": "/w"},
            "c1",
        ),
        (
            "restore",
            ["-d", "--bundle", "/b", "--image-path", "/i", "--tcp-established", "c2"],
            {"detach": "true", "bundle": "/b", "image-path": "/i", "tcp-established": "true"},
            "c2",
        ),
    ],
)
def test_checkpoint_and_restore_flags(
    command: str, args: list[str], flags: dict[str, str], container: str
) -> None:
    sub = parse_subcommand(command, tuple(args))
    assert (sub.flags, sub.container_id) == (flags, container)


@pytest.mark.parametrize(
    ("command", "args", "message"),
    [
        ("checkpoint", ["--page-server", "h:1", "c"], "sends the container's memory"),
        ("checkpoint", ["--leave", "c"], "unknown checkpoint flag '--leave'"),
        ("restore", ["--config", "/x", "c"], "names another file"),
        ("restore", ["a", "b"], "exactly one container id"),
    ],
)
def test_unclassifiable_checkpoint_and_restore_arguments_are_refused(
    command: str, args: list[str], message: str
) -> None:
    with pytest.raises(RuntimeShimError, match=message):
        parse_subcommand(command, tuple(args))


def test_a_single_dash_root_flag_still_gets_the_hook(tmp_path: Path) -> None:
    """The review's bypass: `-root DIR run ...` was read as the subcommand DIR (no hook)."""
    invocation = parse_invocation(["-root", str(tmp_path), "run", "--bundle", str(tmp_path), "c"])
    assert invocation.command == "run"
    sub = parse_subcommand("run", invocation.rest)
    path = tmp_path / "config.json"
    path.write_text("{}")
    assert prepare_bundle(path, sub.bundle("/"), sub.container_id, Config(), ENTRY) is None
    assert json.loads(path.read_text())["hooks"]["createRuntime"] == [ENTRY]


def test_hook_is_added_keeping_everything_and_only_once(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    original = {
        "ociVersion": "1.0.2",
        "x-unknown": {"nested": [1, 2.5, None]},
        "hooks": {"createRuntime": [{"path": "/other"}], "poststop": [{"path": "/p"}]},
    }
    path.write_text(json.dumps(original))
    os.chmod(path, 0o640)
    assert _prepare(path) is None
    after = json.loads(path.read_text())
    assert after["x-unknown"] == original["x-unknown"]
    assert after["hooks"]["poststop"] == [{"path": "/p"}]
    assert after["hooks"]["createRuntime"] == [{"path": "/other"}, ENTRY]
    assert os.stat(path).st_mode & 0o777 == 0o640
    written = os.stat(path).st_ino
    assert _prepare(path) is None
    assert os.stat(path).st_ino == written  # the hook is there already: not rewritten
    assert json.loads(path.read_text()) == after
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


@pytest.mark.parametrize(
    "planted",
    [
        {"path": ENTRY["path"], "args": ["trusthook-hook", "--audit"]},
        {"path": ENTRY["path"], "args": ["trusthook-hook", "--socket", "/tmp/fake.sock"]},
        {"path": ENTRY["path"]},
    ],
)
def test_a_planted_trusthook_entry_is_replaced_by_the_canonical_one(
    tmp_path: Path, planted: dict[str, object]
) -> None:
    """The review's bypass: an entry at the hook's path with --audit or another socket was kept
    and the container started unmeasured."""
    path = tmp_path / "config.json"
    other = {"path": "/other"}
    path.write_text(
        json.dumps({"hooks": {"createRuntime": [planted, other], "prestart": [planted]}})
    )
    _prepare(path)
    hooks = json.loads(path.read_text())["hooks"]
    assert hooks == {"createRuntime": [other, ENTRY], "prestart": []}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{", "is not valid JSON"),
        ("[]", "must be a JSON object, got list"),
        ('{"hooks": []}', "'hooks' must be an object"),
        ('{"hooks": {"createRuntime": {}}}', "'hooks.createRuntime' must be an array"),
        ('{"annotations": []}', "'annotations' must be an object"),
        (
            '{"annotations": {"org.trusthook.image.layout": "/l"}, "root": "rootfs"}',
            "'root' must be an object",
        ),
    ],
)
def test_malformed_config_is_refused_and_left_alone(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(RuntimeShimError, match=message):
        _prepare(path)
    assert path.read_text() == content


def test_missing_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeShimError, match="cannot read"):
        _prepare(tmp_path / "config.json")


def test_shim_failure_reaches_the_engine_through_the_runtime_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from trusthook.startpath.runtime import main

    config = tmp_path / "trusthook.toml"
    config.write_text('[runtime]\npath = "/nonexistent/runc"\n')
    monkeypatch.setenv("TRUSTHOOK_CONFIG", str(config))
    log = tmp_path / "log.json"
    args = ["--log", str(log), "--log-format", "json", "create", "--bundle", str(tmp_path), "id"]
    assert main(args) == 1
    message = "trusthook-runtime: runtime '/nonexistent/runc' not found or not executable"
    assert capsys.readouterr().err == message + "\n"
    entry = json.loads(log.read_text())
    assert (entry["level"], entry["msg"]) == ("error", message)
    assert not (tmp_path / "config.json").exists()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("..", "is not a valid name"),
        ("a/b", "forbidden characters"),
        ("", "non-empty string"),
    ],
)
def test_container_ids_that_would_escape_the_roots_directory_are_refused(
    name: str, message: str
) -> None:
    with pytest.raises(TrusthookError, match=message):
        check_container_name(name)


def test_a_plain_delete_execs_without_the_bundle_code(tmp_path: Path) -> None:
    """Docker runs the shim twice per container for delete: a container with no tmpfs root is
    handed to the runtime before ``startpath.bundle`` (ctypes, subprocess: ~20 ms) is imported."""
    import subprocess
    import sys

    config = tmp_path / "trusthook.toml"
    config.write_text(f'[runtime]\npath = "/bin/true"\n[images]\nroots = "{tmp_path}/roots"\n')
    probe = (
        "import os, sys\n"
        "from trusthook.startpath.runtime import main\n"
        "def execv(path, argv):\n"
        "    print(path, 'trusthook.startpath.bundle' in sys.modules)\n"
        "    sys.exit(0)\n"
        "os.execv = execv\n"
        "main(['--root', '/run/x', 'delete', '--force', 'plain'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        env={**os.environ, "TRUSTHOOK_CONFIG": str(config)},
        timeout=60,
        check=False,
    )
    assert result.stdout == "/bin/true False\n", result.stderr
