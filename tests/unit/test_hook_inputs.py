"""What the agent accepts from a runtime through the hook: the OCI state and config.json (the
compiled hook's own arguments: tests/native/test_hook_program.py)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trusthook.common.oci import MAX_CONFIG_BYTES, parse_state, read_config, rootfs_path
from trusthook.errors import BundleError, StateError, TrusthookError


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
