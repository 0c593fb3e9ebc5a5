"""The runtime shim's argument handling and config.json editing."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from trusthook.common.config import Config
from trusthook.errors import RuntimeShimError, TrusthookError
from trusthook.startpath.bundle import container_arg, prepare_bundle
from trusthook.startpath.runtime import find_bundle, find_subcommand, global_flag

ENTRY = {"path": "/usr/bin/trusthook-hook", "args": ["trusthook-hook"], "timeout": 30}


def _prepare(path: Path) -> Path | None:
    """The shim's bundle step for an ordinary container (no tmpfs root is made)."""
    config = Config(image_roots=path.parent / "roots")
    return prepare_bundle(path, str(path.parent), "id", config, ENTRY)


@pytest.mark.parametrize(
    ("args", "index"),
    [
        (["create", "--bundle", "/b", "id"], 0),
        (["--root", "/run/x", "--log", "/l", "--log-format", "json", "create", "id"], 6),
        (["--root=/run/x", "--systemd-cgroup", "run", "id"], 2),
        (["--debug", "--rootless", "false", "state", "id"], 3),
        (["--version"], None),
        ([], None),
    ],
)
def test_subcommand_after_global_flags(args: list[str], index: int | None) -> None:
    assert find_subcommand(args) == index


def test_docker_style_invocation() -> None:
    args = [
        "--root",
        "/var/run/docker/runtime-runc/moby",
        "--log",
        "/run/containerd/x/log.json",
        "--log-format",
        "json",
        "create",
        "--bundle",
        "/run/containerd/b",
        "--pid-file",
        "/p",
        "cid",
    ]
    sub = find_subcommand(args)
    assert sub == 6 and args[sub] == "create"
    assert global_flag(args, sub, "--log") == "/run/containerd/x/log.json"
    assert find_bundle(args[sub + 1 :], "/cwd") == "/run/containerd/b"


@pytest.mark.parametrize(
    ("sub_args", "bundle"),
    [
        (["-b", "rel", "id"], "/cwd/rel"),
        (["--bundle=/abs", "id"], "/abs"),
        (["id"], "/cwd"),
    ],
)
def test_bundle(sub_args: list[str], bundle: str) -> None:
    assert find_bundle(sub_args, "/cwd") == bundle


def test_missing_flag_value_is_an_error() -> None:
    with pytest.raises(RuntimeShimError, match="flag --bundle has no value"):
        find_bundle(["--bundle"], "/cwd")


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
    ("args", "message"),
    [
        ([], "no container id"),
        (["--bundle", "/b", "--pid-file"], "no container id"),
        ([".."], "is not a valid name"),
        (["a/b"], "forbidden characters"),
    ],
)
def test_container_ids_that_would_escape_the_roots_directory_are_refused(
    args: list[str], message: str
) -> None:
    with pytest.raises(TrusthookError, match=message):
        container_arg(args)
