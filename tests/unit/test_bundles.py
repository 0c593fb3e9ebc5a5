"""The agent's bundle work for ``trusthook-runtime`` (op ``prepare``): config.json editing, and
the decisions taken before the real runtime runs. The shim's side, the compiled program, is
tests/native/test_runtime_program.py; the whole path with runc and the TPM, tests/integration."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from trusthook.agent.attester import Attester
from trusthook.agent.bundles import check_container_name, prepare_bundle
from trusthook.agent.launch import EncryptedLaunch
from trusthook.agent.metrics import AgentMetrics
from trusthook.agent.service import AgentService
from trusthook.common.messages import PrepareParams, PrepareResult
from trusthook.common.protocol import OP_PREPARE, PROTOCOL_VERSION
from trusthook.errors import (
    ConfigError,
    PolicyRefusedError,
    RequestError,
    RuntimeShimError,
    TrusthookError,
)

ENTRY = {"path": "/usr/bin/trusthook-hook", "args": ["trusthook-hook"], "timeout": 30}


def _prepare(path: Path) -> Path | None:
    """The bundle step for an ordinary container (no tmpfs root is made)."""
    return prepare_bundle(path, str(path.parent), "id", path.parent / "roots", ENTRY)


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


# the op, through AgentService as the listener calls it


def _service(tmp_path: Path) -> AgentService:
    """An agent with no TPM (nothing here reaches it) and no enrollment."""
    stub: Any = object()
    metrics = AgentMetrics()
    attester = Attester(log=stub, state_dir=tmp_path / "state", boot_id="b", interval=60)
    launch = EncryptedLaunch(
        log=stub,
        attester=attester,
        policy=stub,
        roots_dir=tmp_path / "roots",
        measure_rootfs=stub,
        own_hook=ENTRY,
    )
    return AgentService(
        log=stub, attester=attester, launch=launch, boot_id="b", measure_rootfs=stub,
        metrics=metrics,
    )  # fmt: skip


def _ask(service: AgentService, **params: object) -> PrepareResult:
    request = {"version": PROTOCOL_VERSION, "op": OP_PREPARE, "params": params}
    return PrepareResult.from_json(service.handle(request, b""))


def _bundle(tmp_path: Path, config: dict[str, Any]) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir(exist_ok=True)
    (bundle / "config.json").write_text(json.dumps(config))
    return bundle


def test_a_create_gets_the_hook_and_no_root(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, {"ociVersion": "1.0.2", "root": {"path": "rootfs"}})
    for command in ("create", "run"):
        result = _ask(_service(tmp_path), command=command, container_id="c1", bundle=str(bundle))
        assert result == PrepareResult(root=None)
    hooks = json.loads((bundle / "config.json").read_text())["hooks"]
    assert hooks == {"createRuntime": [ENTRY]}
    assert not (tmp_path / "roots").exists()


def test_a_restore_without_an_enrolled_host_is_refused_with_the_hook_written_first(
    tmp_path: Path,
) -> None:
    """Fail closed: no server to ask, no restore; the restored bundle has trusthook's hook
    already (written before asking: the agent reads config.json as the runtime will)."""
    bundle = _bundle(tmp_path, {"ociVersion": "1.0.2"})
    with pytest.raises(ConfigError, match="need an enrolled host"):
        _ask(_service(tmp_path), command="restore", container_id="c1", bundle=str(bundle))
    (entry,) = json.loads((bundle / "config.json").read_text())["hooks"]["createRuntime"]
    assert entry == ENTRY


def test_a_checkpoint_without_an_enrolled_host_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="need an enrolled host"):
        _ask(_service(tmp_path), command="checkpoint", container_id="c1", bundle=None)


def test_a_checkpoint_of_an_encrypted_image_container_is_refused_before_asking(
    tmp_path: Path,
) -> None:
    """Its tmpfs root holds the decrypted image; a checkpoint would write its memory to disk
    in plaintext, and encrypted checkpoints are not built."""
    (tmp_path / "roots" / "secret").mkdir(parents=True)
    with pytest.raises(PolicyRefusedError, match=r"^it runs from an encrypted image") as e:
        _ask(_service(tmp_path), command="checkpoint", container_id="secret", bundle=None)
    assert "plaintext (encrypted checkpoints are not built)" in str(e.value)


def test_a_restore_of_an_encrypted_image_bundle_is_refused_and_left_alone(tmp_path: Path) -> None:
    config = {"annotations": {"org.trusthook.image.layout": "/l"}, "root": {"path": "r"}}
    bundle = _bundle(tmp_path, config)
    content = (bundle / "config.json").read_text()
    with pytest.raises(RuntimeShimError, match="names an encrypted image"):
        _ask(_service(tmp_path), command="restore", container_id="c1", bundle=str(bundle))
    assert (bundle / "config.json").read_text() == content


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"command": "start", "container_id": "c", "bundle": "/b"}, "one of create, run"),
        ({"command": "create", "container_id": "c", "bundle": "b"}, "an absolute path"),
        ({"command": "create", "container_id": "c", "bundle": None}, "an absolute path"),
        ({"command": "checkpoint", "container_id": "c", "bundle": "/b"}, "null for a"),
        ({"command": "run", "container_id": "", "bundle": "/b"}, "non-empty"),
        ({"command": "run", "container_id": "..", "bundle": "/b"}, "not a valid name"),
        ({"command": "run", "container_id": "c", "bundle": "/b", "x": 1}, "x"),
    ],
)
def test_malformed_prepare_requests_are_refused(
    tmp_path: Path, params: dict[str, object], message: str
) -> None:
    with pytest.raises(TrusthookError, match=message):
        _ask(_service(tmp_path), **params)


def test_prepare_params_round_trip() -> None:
    for params in (
        PrepareParams(command="run", container_id="c", bundle=Path("/b")),
        PrepareParams(command="checkpoint", container_id="c", bundle=None),
    ):
        assert PrepareParams.from_json(params.to_json()) == params
    with pytest.raises(RequestError):
        PrepareParams.from_json([])


@pytest.mark.parametrize("made", ["nothing", "a file", "not empty"])
def test_an_encrypted_image_root_needs_the_empty_directory_the_shim_made(
    tmp_path: Path, made: str
) -> None:
    """The shim makes ROOTS/ID before it asks, so that it can remove it whatever becomes of the
    agent; anything else there is refused, before any mount, config.json untouched."""
    config = {"annotations": {"org.trusthook.image.layout": "/l"}, "root": {"path": "rootfs"}}
    bundle = _bundle(tmp_path, config)
    content = (bundle / "config.json").read_text()
    root = tmp_path / "roots" / "c1"
    root.parent.mkdir()
    if made == "a file":
        root.write_text("")
    elif made == "not empty":
        root.mkdir()
        (root / "x").write_text("")
    with pytest.raises(RuntimeShimError, match="trusthook-runtime makes"):
        _ask(_service(tmp_path), command="create", container_id="c1", bundle=str(bundle))
    assert (bundle / "config.json").read_text() == content
