"""What the hook and the agent accept from a runtime: arguments and the OCI state."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trusthook.common.oci import MAX_CONFIG_BYTES, image_of, parse_state, read_config, rootfs_path
from trusthook.errors import BundleError, StateError, TrusthookError, UsageError
from trusthook.startpath.hook import HookArgs, request


def test_hook_args() -> None:
    args = HookArgs(["--socket", "/s", "--timeout=2.5", "--stage", "prestart", "--audit"])
    assert (args.socket, args.timeout, args.stage, args.audit) == ("/s", 2.5, "prestart", True)
    assert HookArgs([]).socket == "/run/trusthook/agent.sock"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--nope"], "unknown argument '--nope'"),
        (["--stage", "poststop"], "--stage must be one of"),
        (["--timeout", "-1"], "--timeout must be a number of seconds > 0"),
        (["--timeout", "nan"], "--timeout must be a number of seconds > 0"),
        (["--audit=yes"], "unknown argument"),
        (["--timeout", "inf"], "--timeout must be a number of seconds > 0"),
    ],
)
def test_bad_hook_args(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        HookArgs(argv)


def test_request_header_is_json_and_body_is_verbatim() -> None:
    for audit in (False, True):
        raw = request("createRuntime", b'{"id":"x"}', audit=audit)
        header, _, body = raw.partition(b"\n")
        assert json.loads(header) == {
            "audit": audit,
            "op": "hook",
            "stage": "createRuntime",
            "version": 1,
        }
        assert body == b'{"id":"x"}'


def test_crun_state_with_root_and_created_status() -> None:
    state = parse_state(
        b'{"ociVersion":"1.0.0","id":"c","status":"created","pid":42,'
        b'"bundle":"/b","root":"/b/rootfs","annotations":{"io.kubernetes.cri.image-name":"busybox"}}'
    )
    assert (state.id, state.status, state.pid) == ("c", "created", 42)
    assert image_of(state.annotations) == ("busybox", None)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "is empty"),
        (b"\xff", "is not valid JSON"),
        (b"null", "must be a JSON object, got NoneType"),
        (
            b'{"id":"c","status":"creating","bundle":"/b","pid":true}',
            "'pid' must be a positive integer",
        ),
        (b'{"id":"c","status":"creating","bundle":"/b","annotations":{"a":1}}', "'annotations'"),
        (b'{"id":"","status":"creating","bundle":"/b"}', "'id' must be a non-empty string"),
        (b'{"id":"c\\n","status":"creating","bundle":"/b"}', "forbidden characters"),
        (b'{"id":"c","bundle":"/b"}', "'status' must be a string"),
        (b" " * (1 << 20) + b"{}", "more than"),
    ],
)
def test_malformed_states(raw: bytes, message: str) -> None:
    with pytest.raises(StateError, match=message):
        parse_state(raw)


@given(st.binary(max_size=200))
def test_arbitrary_state_bytes_raise_only_state_errors(raw: bytes) -> None:
    with contextlib.suppress(StateError):
        parse_state(raw)


@given(
    st.dictionaries(
        st.sampled_from(["id", "bundle", "status", "pid", "annotations"]),
        st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers())),
    )
)
def test_arbitrary_state_objects_raise_only_our_errors(data: dict[str, object]) -> None:
    with contextlib.suppress(TrusthookError):
        parse_state(json.dumps(data).encode())


def test_audit_mode_covers_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    from trusthook.startpath.hook import main

    assert main(["--bogus"]) == 1
    assert capsys.readouterr().err == "trusthook-hook: unknown argument '--bogus'; " + (
        "usage: trusthook-hook [--socket PATH] [--timeout SECONDS] [--stage STAGE] [--audit]\n"
    )
    assert main(["--audit", "--bogus"]) == 0
    assert "audit mode, container starts unmeasured" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"root": {"path": "../elsewhere"}}, "contains '..'; refusing it"),
        ({"root": {"path": ""}}, "has no root.path"),
        ({"root": "rootfs"}, "has no root.path"),
        ({}, "has no root.path"),
    ],
)
def test_bad_root_paths_are_refused(config: dict[str, object], message: str) -> None:
    with pytest.raises(BundleError, match=message):
        rootfs_path("/bundle", config)


def test_config_json_symlink_or_oversize_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").symlink_to("/etc/passwd")
    with pytest.raises(BundleError, match="config.json is a symlink; refusing to follow it"):
        read_config(tmp_path)
    (tmp_path / "config.json").unlink()
    (tmp_path / "config.json").write_bytes(b" " * (MAX_CONFIG_BYTES + 1))
    with pytest.raises(BundleError, match="is larger than"):
        read_config(tmp_path)
