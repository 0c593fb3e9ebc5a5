"""``trusthook runtime configure|unconfigure`` on files (temporary paths only): the backup,
atomic writes that keep the mode, byte-for-byte restore, idempotence, refusals that touch
nothing, and the command's output."""

from __future__ import annotations

import os
import stat
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from trusthook.cli import main
from trusthook.common.config import Config
from trusthook.errors import EngineConfigError
from trusthook.hostsetup.choices import Engine
from trusthook.hostsetup.configure import (
    Change,
    apply,
    engine_files,
    plan_configure,
    plan_unconfigure,
    runtime_spec,
)
from trusthook.hostsetup.containers_conf import PODMAN_HOOKS_DIRS, ContainersConf
from trusthook.hostsetup.engines import HooksJson, RuntimeSpec

DATA = Path(__file__).resolve().parents[1] / "data" / "engines"
SHIM = str(Path(sys.executable).parent / "trusthook-runtime")


@pytest.fixture
def spec() -> RuntimeSpec:
    return runtime_spec(Config(), shim=SHIM, hook=None, default=False)


def configure(engine: Engine, path: Path | None, spec: RuntimeSpec, **kw: Path) -> list[Change]:
    changes = plan_configure(engine_files(engine, config=path, **kw), spec)
    apply(changes)
    return changes


def unconfigure(engine: Engine, path: Path | None, **kw: Path) -> list[Change]:
    changes = plan_unconfigure(engine_files(engine, config=path, **kw))
    apply(changes)
    return changes


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


@pytest.mark.parametrize(
    ("engine", "fixture"),
    [
        (Engine.CONTAINERD, "containerd-debian12.toml"),
        (Engine.CONTAINERD, "containerd-default-1.6.toml"),
        (Engine.CONTAINERD, "containerd-odd.toml"),
        (Engine.DOCKER, "docker-nvidia.json"),
        (Engine.DOCKER, "docker-tabs.json"),
        (Engine.DOCKER, "docker-compact.json"),
    ],
)
@pytest.mark.parametrize("default", [False, True])
def test_configure_backs_up_and_unconfigure_restores_byte_for_byte(
    tmp_path: Path, spec: RuntimeSpec, engine: Engine, fixture: str, default: bool
) -> None:
    """Also where configure replaced a default runtime (docker-tabs.json names runc) and where
    the file had no final newline (containerd-odd.toml)."""
    spec = replace(spec, default=default)
    path = tmp_path / fixture
    original = (DATA / fixture).read_bytes()
    path.write_bytes(original)
    path.chmod(0o640)
    backup = tmp_path / (fixture + ".trusthook-backup")
    [change] = configure(engine, path, spec)
    assert change.changed and path.read_bytes() != original
    assert backup.read_bytes() == original
    assert stat.S_IMODE(path.stat().st_mode) == stat.S_IMODE(backup.stat().st_mode) == 0o640
    configured = path.read_bytes()
    [again] = configure(engine, path, spec)
    assert not again.changed and path.read_bytes() == configured
    assert backup.read_bytes() == original
    [undo] = unconfigure(engine, path)
    assert undo.changed
    assert path.read_bytes() == original
    assert not backup.exists()
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert snapshot(tmp_path) == {fixture: original}  # no temporary file left behind


@pytest.mark.parametrize(
    ("engine", "fixture"),
    [(Engine.CONTAINERD, "containerd-debian12.toml"), (Engine.DOCKER, "docker-nvidia.json")],
)
def test_configure_in_two_steps_then_unconfigure(
    tmp_path: Path, spec: RuntimeSpec, engine: Engine, fixture: str
) -> None:
    """The runtime first, the default later: the backup is the file before the first step."""
    path = tmp_path / fixture
    original = (DATA / fixture).read_bytes()
    path.write_bytes(original)
    configure(engine, path, spec)
    [change] = configure(engine, path, replace(spec, default=True))
    assert change.changed and change.backup_from is None
    [undo] = unconfigure(engine, path)
    assert path.read_bytes() == original
    assert any("restored" in note for note in undo.notes)
    assert snapshot(tmp_path) == {fixture: original}


@pytest.mark.parametrize(
    ("engine", "name"), [(Engine.CONTAINERD, "config.toml"), (Engine.DOCKER, "daemon.json")]
)
def test_a_file_configure_created_is_removed_again(
    tmp_path: Path, spec: RuntimeSpec, engine: Engine, name: str
) -> None:
    path = tmp_path / "etc" / name  # the directory too is made
    configure(engine, path, spec)
    assert path.exists() and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not path.with_name(name + ".trusthook-backup").exists()
    unconfigure(engine, path)
    assert not path.exists()
    assert list(path.parent.iterdir()) == []


def test_unconfigure_after_other_edits_keeps_them_and_the_backup(
    tmp_path: Path, spec: RuntimeSpec
) -> None:
    path = tmp_path / "daemon.json"
    path.write_bytes((DATA / "docker-nvidia.json").read_bytes())
    configure(Engine.DOCKER, path, spec)
    path.write_text(path.read_text().replace('"runtimes"', '"debug": true,\n    "runtimes"'))
    [change] = unconfigure(Engine.DOCKER, path)
    assert '"debug": true' in path.read_text() and "trusthook" not in path.read_text()
    assert path.with_name("daemon.json.trusthook-backup").exists()
    assert any("kept" in note for note in change.notes)


def test_a_refusal_writes_nothing(tmp_path: Path, spec: RuntimeSpec) -> None:
    """CRI-O's two files are planned before either is written: a foreign hooks.d file stops
    the drop-in too."""
    hooks = tmp_path / "hooks.d"
    hooks.mkdir()
    (hooks / "trusthook.json").write_text('{"hook": {"path": "/x", "args": ["other"]}}')
    before = snapshot(hooks)
    drop_in = tmp_path / "crio.conf.d" / "50-trusthook.conf"
    with pytest.raises(Exception, match="not trusthook's hook"):
        configure(Engine.CRIO, drop_in, spec, hooks_dir=hooks)
    assert not drop_in.parent.exists()
    assert snapshot(hooks) == before


def test_a_symlinked_file_is_edited_where_it_points(tmp_path: Path, spec: RuntimeSpec) -> None:
    real = tmp_path / "managed" / "config.toml"
    real.parent.mkdir()
    real.write_bytes((DATA / "containerd-debian12.toml").read_bytes())
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    configure(Engine.CONTAINERD, link, spec)
    assert link.is_symlink() and "trusthook" in real.read_text()
    assert (real.parent / "config.toml.trusthook-backup").exists()


# podman: the hooks.d file, then containers.conf


def hooks_dir_of(path: Path) -> object:
    return tomllib.loads(path.read_text()).get("engine", {}).get("hooks_dir")


@pytest.mark.parametrize(
    "fixture", ["containers-debian12.conf", "containers-hooks-dir.conf", "containers-odd.conf"]
)
def test_podman_backs_up_containers_conf_and_unconfigure_restores_byte_for_byte(
    tmp_path: Path, spec: RuntimeSpec, fixture: str
) -> None:
    conf = tmp_path / "containers.conf"
    original = (DATA / fixture).read_bytes()
    conf.write_bytes(original)
    conf.chmod(0o640)
    backup = tmp_path / "containers.conf.trusthook-backup"
    hooks = tmp_path / "hooks.d"
    changes = configure(Engine.PODMAN, conf, spec, hooks_dir=hooks)
    assert [c.file.path for c in changes] == [hooks / "trusthook.json", conf]  # the hook first
    assert all(c.changed for c in changes)
    listed = hooks_dir_of(conf)
    assert isinstance(listed, list) and listed[-1] == str(hooks)
    assert backup.read_bytes() == original
    assert stat.S_IMODE(conf.stat().st_mode) == stat.S_IMODE(backup.stat().st_mode) == 0o640
    assert snapshot(hooks).keys() == {"trusthook.json"}  # no backup beside trusthook's own
    configured = conf.read_bytes()
    again = configure(Engine.PODMAN, conf, spec, hooks_dir=hooks)
    assert not any(c.changed for c in again) and conf.read_bytes() == configured
    assert backup.read_bytes() == original
    undo = unconfigure(Engine.PODMAN, conf, hooks_dir=hooks)
    assert all(c.changed for c in undo)
    assert conf.read_bytes() == original
    assert stat.S_IMODE(conf.stat().st_mode) == 0o640
    assert list(hooks.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["containers.conf", "hooks.d"]


def test_podman_a_containers_conf_configure_created_is_removed_again(
    tmp_path: Path, spec: RuntimeSpec
) -> None:
    conf = tmp_path / "etc" / "containers.conf"
    hooks = tmp_path / "hooks.d"
    configure(Engine.PODMAN, conf, spec, hooks_dir=hooks)
    assert hooks_dir_of(conf) == [*PODMAN_HOOKS_DIRS, str(hooks)]
    assert stat.S_IMODE(conf.stat().st_mode) == 0o644
    assert not conf.with_name("containers.conf.trusthook-backup").exists()
    unconfigure(Engine.PODMAN, conf, hooks_dir=hooks)
    assert not conf.exists() and list(conf.parent.iterdir()) == []
    assert list(hooks.iterdir()) == []


def test_podman_restores_a_file_without_a_final_newline_from_its_backup(
    tmp_path: Path, spec: RuntimeSpec
) -> None:
    """The block appended after a last line without a newline gives it one: the file is
    restored from the backup, as it was configure's result (nothing else changed)."""
    conf = tmp_path / "containers.conf"
    conf.write_bytes(b"[containers]\nlog_size_max = 4096")
    hooks = tmp_path / "hooks.d"
    configure(Engine.PODMAN, conf, spec, hooks_dir=hooks)
    [_, undo] = unconfigure(Engine.PODMAN, conf, hooks_dir=hooks)
    assert conf.read_bytes() == b"[containers]\nlog_size_max = 4096"
    assert any("byte for byte" in note for note in undo.notes)


def test_podman_an_unparseable_containers_conf_writes_nothing(
    tmp_path: Path, spec: RuntimeSpec
) -> None:
    """Both files are planned before either is written: not even the hooks.d file."""
    conf = tmp_path / "containers.conf"
    original = (DATA / "containers-broken.conf").read_bytes()
    conf.write_bytes(original)
    hooks = tmp_path / "hooks.d"
    with pytest.raises(EngineConfigError, match="containers.conf is not valid TOML"):
        configure(Engine.PODMAN, conf, spec, hooks_dir=hooks)
    assert not hooks.exists()
    assert snapshot(tmp_path) == {"containers.conf": original}


def test_podman_engine_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The default containers.conf is not named (configure edits it for the default hooks
    directory only); the hooks directory goes into containers.conf as given, made absolute."""
    [hooks_file, conf] = engine_files(Engine.PODMAN)
    assert hooks_file.path == Path("/etc/containers/oci/hooks.d/trusthook.json")
    assert isinstance(hooks_file.format, HooksJson)
    assert conf.path == Path("/etc/containers/containers.conf")
    assert conf.format == ContainersConf(
        "/etc/containers/containers.conf", hooks_dir="/etc/containers/oci/hooks.d", named=False
    )
    real = tmp_path / "real-hooks.d"
    real.mkdir()
    (tmp_path / "hooks.d").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    [hooks_file, conf] = engine_files(
        Engine.PODMAN, config=Path("containers.conf"), hooks_dir=Path("hooks.d")
    )
    assert hooks_file.path == real / "trusthook.json"
    assert conf.path == tmp_path / "containers.conf"
    assert isinstance(conf.format, ContainersConf) and conf.format.named
    assert conf.format.hooks_dir == str(tmp_path / "hooks.d")


# the command


def run(tmp_path: Path, *argv: str) -> int:
    config = tmp_path / "trusthook.toml"
    config.touch()
    return main(["--trusthook-config", str(config), "runtime", *argv])


def test_dry_run_prints_a_diff_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "daemon.json"
    path.write_bytes((DATA / "docker-nvidia.json").read_bytes())
    argv = ["configure", "--runtime", "docker", "--config", str(path), "--shim-path", SHIM]
    assert run(tmp_path, *argv, "--dry-run", "--default") == 0
    out = capsys.readouterr().out
    assert f'+            "path": "{SHIM}"' in out
    assert '+    "default-runtime": "trusthook"' in out
    assert "docker: would write" in out and "then systemctl reload docker" in out
    assert snapshot(tmp_path).keys() == {"daemon.json", "trusthook.toml"}
    assert path.read_bytes() == (DATA / "docker-nvidia.json").read_bytes()
    assert run(tmp_path, *argv) == 0
    assert "now systemctl reload docker" in capsys.readouterr().out
    assert run(tmp_path, *argv) == 0
    assert "unchanged (already configured)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("content", "argv", "says"),
    [
        ("version = 2\n[plugins\n", ["--runtime", "containerd"], "is not valid TOML"),
        ("[plugins.cri]\nx = 1\n", ["--runtime", "containerd"], "version 1 configuration"),
        ("{", ["--runtime", "docker"], "is not valid JSON"),
        ("[engine\n", ["--runtime", "podman", "--hooks-dir", "{tmp}/hooks.d"], "not valid TOML"),
        ("{}", ["--runtime", "docker", "--shim-path", "/nonexistent"], "not found"),
    ],
)
def test_a_refusal_is_one_line_and_a_non_zero_exit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, argv: list[str], says: str
) -> None:
    path = tmp_path / "engine.conf"
    path.write_text(content)
    argv = [arg.format(tmp=tmp_path) for arg in argv]
    code = run(tmp_path, "configure", *argv, "--config", str(path))
    err = capsys.readouterr().err
    assert code == 1
    assert says in err and err.startswith("trusthook: ") and err.count("\n") == 1
    assert path.read_text() == content
    assert snapshot(tmp_path).keys() == {"engine.conf", "trusthook.toml"}


def test_podman_dry_run_then_configure(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "containers.conf"
    original = (DATA / "containers-hooks-dir.conf").read_bytes()
    conf.write_bytes(original)
    hooks = tmp_path / "hooks.d"
    argv = ["configure", "--runtime", "podman", "--config", str(conf), "--hooks-dir", str(hooks)]
    assert run(tmp_path, *argv, "--dry-run") == 0
    out = capsys.readouterr().out
    assert (
        f'+hooks_dir = ["/usr/share/containers/oci/hooks.d", "/opt/nvidia/hooks.d", "{hooks}"]'
        in out
    )
    assert f"podman: would write {conf} (backup: {conf}.trusthook-backup)" in out
    assert f"podman: would write {hooks / 'trusthook.json'}" in out
    assert "then nothing to reload: podman reads containers.conf and hooks.d" in out
    assert conf.read_bytes() == original and not hooks.exists()
    assert run(tmp_path, *argv) == 0
    assert f"{hooks} added to hooks_dir" in capsys.readouterr().out
    assert run(tmp_path, *argv) == 0
    assert capsys.readouterr().out.count("unchanged (already configured)") == 2


def test_default_is_refused_for_podman(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run(
        tmp_path, "configure", "--runtime", "podman", "--default", "--hooks-dir", str(tmp_path)
    )
    assert code == 1 and "podman has no default runtime" in capsys.readouterr().err


def test_the_shim_found_is_the_one_beside_this_python() -> None:
    assert runtime_spec(Config(), shim=None, hook=None, default=False).shim == SHIM
    assert os.access(SHIM, os.X_OK)
