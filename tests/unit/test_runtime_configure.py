"""``trusthook runtime configure``'s pure part (``hostsetup.engines``): each engine's file text
in, new text out, on configurations copied from the engines' defaults (Debian 12's
containerd package and its /usr/share/containers/containers.conf, ``containerd config default``
of containerd 1.6) and on ones with other runtimes, hooks directories, comments and odd
formatting. The result parses to the old settings plus exactly
trusthook's, unconfigure gives the original back, a second configure changes nothing, and a
file that cannot be edited safely is refused."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

import pytest

from trusthook.agent.bundles import hook_entry
from trusthook.common.config import Config
from trusthook.errors import ConflictError, EngineConfigError, UsageError
from trusthook.hostsetup import tomledit
from trusthook.hostsetup.containers_conf import PODMAN_HOOKS_DIRS, ContainersConf
from trusthook.hostsetup.engines import (
    RUNTIMES,
    ContainerdToml,
    CrioDropIn,
    DaemonJson,
    HooksJson,
    RuntimeSpec,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "engines"
OCI_CONFIG = Path(__file__).resolve().parents[2] / "oci-config"
SHIM = "/usr/local/bin/trusthook-runtime"
HOOK = Path("/usr/local/bin/trusthook-hook")
CONTAINERD_FILES = sorted(DATA.glob("containerd-*.toml"))
DOCKER_FILES = sorted(DATA.glob("docker-*.json"))
CONTAINERS_FILES = [p for p in sorted(DATA.glob("containers-*.conf")) if "broken" not in p.name]
OWN_HOOKS = "/srv/trusthook/hooks.d"  # not one of podman's defaults


def spec(*, default: bool = False, shim: str = SHIM) -> RuntimeSpec:
    return RuntimeSpec(shim=shim, hook=hook_entry(Config(), HOOK), default=default)


def runtimes(text: str) -> dict[str, Any]:
    node: Any = tomllib.loads(text)
    for key in RUNTIMES:
        node = node[key]
    assert isinstance(node, dict)
    return node


# containerd


@pytest.mark.parametrize("path", CONTAINERD_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("default", [False, True])
def test_containerd_configure_adds_exactly_the_runtime(path: Path, default: bool) -> None:
    original = path.read_text()
    before = tomllib.loads(original)
    new = ContainerdToml().configure(original, spec(default=default)).text
    assert new is not None
    after = tomllib.loads(new)
    added = runtimes_of(after).pop("trusthook")
    assert added["runtime_type"] == "io.containerd.runc.v2"
    assert added["options"]["BinaryName"] == SHIM
    if not runtimes_of(before):  # containerd's built-in runc, written out
        assert runtimes_of(after).pop("runc") == {"runtime_type": "io.containerd.runc.v2"}
    containerd = after["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]
    previous = before.get("plugins", {}).get("io.containerd.grpc.v1.cri", {})
    previous = previous.get("containerd", {}).get("default_runtime_name")
    if default:
        assert containerd.pop("default_runtime_name") == "trusthook"
        if previous is not None:
            containerd["default_runtime_name"] = previous
    prune(after)
    prune(before)
    assert after == before
    # every comment and every other line survives (a replaced line inside its marker)
    kept = [line for line in original.splitlines() if line not in new]
    assert all("default_runtime_name" in line for line in kept), kept


def runtimes_of(data: dict[str, Any]) -> dict[str, Any]:
    node = data
    for key in RUNTIMES:
        node = node.get(key, {})
    return node


def prune(data: dict[str, Any]) -> None:
    """Remove empty tables (a header trusthook's tables imply)."""
    for key in [k for k, v in data.items() if isinstance(v, dict)]:
        prune(data[key])
        if not data[key]:
            del data[key]


@pytest.mark.parametrize("path", CONTAINERD_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("default", [False, True])
def test_containerd_unconfigure_restores_and_configure_twice_changes_nothing(
    path: Path, default: bool
) -> None:
    original = path.read_text()
    fmt = ContainerdToml()
    new = fmt.configure(original, spec(default=default)).text
    assert new is not None
    again = fmt.configure(new, spec(default=default))
    assert again.text == new and again.notes == ()
    restored = fmt.unconfigure(new).text
    assert restored is not None
    # the odd one ends without a newline: unconfigure leaves one (the backup has it exact)
    assert restored in (original, original + "\n")
    assert fmt.unconfigure(original).text == original


def test_containerd_default_is_set_on_its_own_line_and_restored_exactly() -> None:
    original = (DATA / "containerd-odd.toml").read_text()
    new = ContainerdToml().configure(original, spec(default=True)).text
    assert new is not None
    line = next(x for x in new.splitlines() if "default_runtime_name" in x)
    assert line == (
        '\t\tdefault_runtime_name = "trusthook"'
        + tomledit.EDITED
        + 'default_runtime_name = "runc"   # runc unless a RuntimeClass says otherwise'
    )


def test_containerd_copies_systemd_cgroup_from_runc() -> None:
    new = ContainerdToml().configure((DATA / "containerd-odd.toml").read_text(), spec()).text
    assert new is not None
    assert runtimes(new)["trusthook"]["options"] == {"BinaryName": SHIM, "SystemdCgroup": True}


def test_containerd_spells_out_runc_when_the_file_has_no_runtimes() -> None:
    """containerd 1.6 replaces its built-in runtimes with the file's: adding only trusthook
    would leave default_runtime_name = "runc" naming nothing, and the CRI plugin would not
    load (oci-config/containerd-config.toml merged into Debian's file does exactly that)."""
    edit = ContainerdToml().configure((DATA / "containerd-debian12.toml").read_text(), spec())
    assert edit.text is not None
    assert set(runtimes(edit.text)) == {"runc", "trusthook"}
    assert any("runc" in note for note in edit.notes)


def test_containerd_creates_a_missing_file_and_unconfigure_empties_it() -> None:
    fmt = ContainerdToml()
    new = fmt.configure(None, spec(default=True)).text
    assert new is not None and new.startswith(tomledit.BEGIN)
    data = tomllib.loads(new)
    assert data["version"] == 2
    assert set(runtimes(new)) == {"runc", "trusthook"}
    left = fmt.unconfigure(new).text
    assert left == "" and fmt.empty(left)


def test_containerd_comment_only_file_gets_version_2_inside_the_block() -> None:
    original = "# nothing set yet\n"
    fmt = ContainerdToml()
    new = fmt.configure(original, spec()).text
    assert new is not None and tomllib.loads(new)["version"] == 2
    assert fmt.unconfigure(new).text == original


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("[plugins.cri]\n  systemd_cgroup = true\n", "version 1"),
        ('version = 3\n[plugins."io.containerd.cri.v1.runtime"]\n', "version = 3"),
        ("version = 2\n[plugins\n", "not valid TOML"),
        ('version = "2"\n[x]\n', "version = '2'"),
    ],
)
def test_containerd_refuses_what_it_does_not_edit(text: str, says: str) -> None:
    with pytest.raises(EngineConfigError, match=says):
        ContainerdToml().configure(text, spec())
    if "TOML" in says:
        with pytest.raises(EngineConfigError, match=says):
            ContainerdToml().unconfigure(text)


def test_containerd_refuses_a_trusthook_runtime_that_points_elsewhere() -> None:
    fmt = ContainerdToml()
    configured = fmt.configure(None, spec(shim="/opt/old/trusthook-runtime")).text
    with pytest.raises(ConflictError, match="/opt/old/trusthook-runtime"):
        fmt.configure(configured, spec())


def test_containerd_accepts_a_hand_written_runtime_that_matches_but_will_not_remove_it() -> None:
    text = (
        "version = 2\n"
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.trusthook]\n'
        '  runtime_type = "io.containerd.runc.v2"\n'
        '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.trusthook.options]\n'
        f'  BinaryName = "{SHIM}"\n'
    )
    fmt = ContainerdToml()
    assert fmt.configure(text, spec()).text == text
    with pytest.raises(EngineConfigError, match="outside the lines trusthook marked"):
        fmt.unconfigure(text)


@pytest.mark.parametrize(
    "text",
    [
        # the containerd table defined by dotted keys: its header cannot be added
        'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  containerd.snapshotter = "x"\n',
        # runtimes as an inline table: no table may be added to it
        'version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd]\n'
        '  runtimes = { runc = { runtime_type = "io.containerd.runc.v2" } }\n',
    ],
)
def test_containerd_refuses_a_layout_it_cannot_edit_line_by_line(text: str) -> None:
    with pytest.raises(EngineConfigError, match="add this by hand"):
        ContainerdToml().configure(text, spec(default=True))


def test_containerd_refuses_a_block_that_never_ends() -> None:
    text = "version = 2\n" + tomledit.BEGIN + "\n"
    with pytest.raises(EngineConfigError, match="never ends"):
        ContainerdToml().unconfigure(text)


def test_containerd_registration() -> None:
    fmt = ContainerdToml()
    configured = fmt.configure(None, spec(default=True)).text
    assert configured is not None
    found = fmt.registration(configured)
    assert found is not None and (found.program, found.default) == (SHIM, True)
    assert fmt.registration((DATA / "containerd-debian12.toml").read_text()) is None


# Docker


@pytest.mark.parametrize("path", DOCKER_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("default", [False, True])
def test_docker_configure_keeps_every_member_and_their_order(path: Path, default: bool) -> None:
    original = path.read_text()
    before = json.loads(original)
    fmt = DaemonJson()
    new = fmt.configure(original, spec(default=default)).text
    assert new is not None
    after = json.loads(new)
    assert after["runtimes"]["trusthook"] == {"path": SHIM}
    assert list(after["runtimes"])[:-1] == list(before.get("runtimes", {}))
    assert after.get("default-runtime") == (
        "trusthook" if default else before.get("default-runtime")
    )
    expected_keys = list(before) + [k for k in ("runtimes", "default-runtime") if k not in before]
    assert list(after) == [k for k in expected_keys if k in after]
    for key, value in before.items():
        if key not in ("runtimes", "default-runtime"):
            assert after[key] == value
    again = fmt.configure(new, spec(default=default))
    assert again.text == new and again.notes == ()
    restored = fmt.unconfigure(new).text
    assert restored is not None
    if not default or "default-runtime" not in before:
        assert fmt.equivalent(restored, original)


def test_docker_keeps_the_indentation() -> None:
    new = DaemonJson().configure((DATA / "docker-tabs.json").read_text(), spec()).text
    assert new is not None and '\n\t"runtimes": {\n\t\t"trusthook": {' in new
    new = DaemonJson().configure((DATA / "docker-nvidia.json").read_text(), spec()).text
    assert new is not None and '\n        "trusthook": {\n            "path"' in new


def test_docker_creates_a_missing_file_and_unconfigure_empties_it() -> None:
    fmt = DaemonJson()
    new = fmt.configure(None, spec(default=True)).text
    assert new is not None
    assert json.loads(new) == {
        "runtimes": {"trusthook": {"path": SHIM}},
        "default-runtime": "trusthook",
    }
    left = fmt.unconfigure(new).text
    assert left is not None and fmt.empty(left)


def test_docker_default_replaced_says_what_it_was() -> None:
    edit = DaemonJson().configure((DATA / "docker-tabs.json").read_text(), spec(default=True))
    assert "default-runtime is 'trusthook' (was 'runc')" in edit.notes


@pytest.mark.parametrize(
    ("text", "error", "says"),
    [
        ("{broken", EngineConfigError, "not valid JSON"),
        ('["a"]', EngineConfigError, "must hold a JSON object"),
        ('{"runtimes": []}', EngineConfigError, "'runtimes' must be an object"),
        ('{"a": 1, "a": 2}', EngineConfigError, "twice"),
        ('{"runtimes": {"trusthook": {"path": "/elsewhere"}}}', ConflictError, "/elsewhere"),
    ],
)
def test_docker_refuses(text: str, error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=says):
        DaemonJson().configure(text, spec())


def test_docker_unconfigure_removes_a_hand_written_entry_too() -> None:
    text = '{"runtimes": {"trusthook": {"path": "/x"}, "crun": {"path": "/c"}}}'
    left = DaemonJson().unconfigure(text).text
    assert left is not None and json.loads(left) == {"runtimes": {"crun": {"path": "/c"}}}


# podman: containers.conf


def hooks_dir_of(text: str) -> list[str] | None:
    value = tomllib.loads(text).get("engine", {}).get("hooks_dir")
    assert value is None or isinstance(value, list)
    return value


@pytest.mark.parametrize("path", CONTAINERS_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("hooks", [PODMAN_HOOKS_DIRS[1], OWN_HOOKS])
def test_containers_conf_gets_the_hooks_dir_and_nothing_else(path: Path, hooks: str) -> None:
    original = path.read_text()
    before = tomllib.loads(original)
    fmt = ContainersConf(path.name, hooks_dir=hooks)
    edit = fmt.configure(original, spec())
    assert edit.text is not None
    listed = hooks_dir_of(original)
    if listed is None and hooks in PODMAN_HOOKS_DIRS:  # podman reads it already
        assert edit.text == original and edit.notes == ()
        return
    after = tomllib.loads(edit.text)
    wanted = [*(PODMAN_HOOKS_DIRS if listed is None else listed), hooks]
    assert after["engine"].pop("hooks_dir") == wanted
    before.get("engine", {}).pop("hooks_dir", None)
    assert after == before  # every other key, [engine.runtimes] too
    # every comment and every other line survives (a replaced line inside its marker)
    kept = [line for line in original.splitlines() if line not in edit.text]
    assert all("hooks_dir" in line or "hooks.d" in line for line in kept), kept
    assert hooks in edit.notes[0]


@pytest.mark.parametrize("path", CONTAINERS_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("hooks", [PODMAN_HOOKS_DIRS[1], OWN_HOOKS])
def test_containers_conf_unconfigure_restores_and_configure_twice_changes_nothing(
    path: Path, hooks: str
) -> None:
    original = path.read_text()
    fmt = ContainersConf(path.name, hooks_dir=hooks)
    new = fmt.configure(original, spec()).text
    assert new is not None
    again = fmt.configure(new, spec())
    assert again.text == new and again.notes == ()
    assert fmt.unconfigure(new).text == original
    assert fmt.unconfigure(original).text == original
    assert (fmt.registration(new) is None) == (new == original)
    assert fmt.registration(original) is None


def test_containers_conf_multi_line_hooks_dir_becomes_one_line_and_comes_back() -> None:
    original = (DATA / "containers-hooks-dir.conf").read_text()
    new = ContainersConf(hooks_dir=OWN_HOOKS).configure(original, spec()).text
    assert new is not None
    at = new.index("hooks_dir = [")
    assert new[at:].splitlines()[:4] == [
        'hooks_dir = ["/usr/share/containers/oci/hooks.d", "/opt/nvidia/hooks.d",'
        f' "{OWN_HOOKS}"]' + tomledit.EDITED + "hooks_dir = [",
        tomledit.HIDDEN + '  "/usr/share/containers/oci/hooks.d",   # from packages',
        tomledit.HIDDEN + '  "/opt/nvidia/hooks.d",',
        tomledit.HIDDEN + "]",
    ]


def test_containers_conf_without_hooks_dir_gets_podmans_defaults_on_a_marked_line() -> None:
    original = (DATA / "containers-debian12.conf").read_text()
    edit = ContainersConf(hooks_dir=OWN_HOOKS).configure(original, spec())
    assert edit.text is not None
    [line] = [x for x in edit.text.splitlines() if x not in original.splitlines()]
    dirs = ", ".join(f'"{d}"' for d in (*PODMAN_HOOKS_DIRS, OWN_HOOKS))
    assert line == f"  hooks_dir = [{dirs}]" + tomledit.ADDED
    assert edit.text.index(line) > edit.text.index("\n[engine]\n")
    assert "podman's default directories" in edit.notes[0]


def test_containers_conf_a_second_hooks_dir_is_added_and_one_unconfigure_undoes_both() -> None:
    for name in ("containers-hooks-dir.conf", "containers-debian12.conf"):
        original = (DATA / name).read_text()
        first = ContainersConf(hooks_dir=OWN_HOOKS).configure(original, spec()).text
        assert first is not None
        second = ContainersConf(hooks_dir="/opt/other/hooks.d").configure(first, spec()).text
        assert second is not None
        listed = hooks_dir_of(second)
        assert listed is not None and listed[-2:] == [OWN_HOOKS, "/opt/other/hooks.d"]
        assert ContainersConf().unconfigure(second).text == original


def test_containers_conf_already_listing_the_directory_is_left_alone() -> None:
    original = (DATA / "containers-hooks-dir.conf").read_text()
    for listed in ("/opt/nvidia/hooks.d", "/opt/nvidia/hooks.d/", "/opt/nvidia/./hooks.d"):
        edit = ContainersConf(hooks_dir=listed).configure(original, spec())
        assert edit.text == original and edit.notes == ()


def test_containers_conf_missing_file() -> None:
    """Left missing for a default directory; made, and removed again, for another."""
    assert ContainersConf().configure(None, spec()).text is None
    fmt = ContainersConf(hooks_dir=OWN_HOOKS)
    new = fmt.configure(None, spec()).text
    assert new is not None and new.startswith(tomledit.BEGIN)
    assert tomllib.loads(new) == {"engine": {"hooks_dir": [*PODMAN_HOOKS_DIRS, OWN_HOOKS]}}
    left = fmt.unconfigure(new).text
    assert left == "" and fmt.empty(left)
    assert fmt.unconfigure(None).text is None


@pytest.mark.parametrize(
    "original",
    [
        "# podman, defaults but for the log\n[containers]\nlog_size_max = 1024\n",
        '[engine.runtimes]\ncrun = ["/usr/bin/crun"]\n',  # a sub-table, no [engine] header
    ],
)
def test_containers_conf_without_an_engine_table_gets_one_in_the_block(original: str) -> None:
    fmt = ContainersConf(hooks_dir=OWN_HOOKS)
    new = fmt.configure(original, spec()).text
    assert new is not None and new.startswith(original + "\n" + tomledit.BEGIN)
    after = tomllib.loads(new)
    assert after["engine"].pop("hooks_dir") == [*PODMAN_HOOKS_DIRS, OWN_HOOKS]
    prune(after)
    assert after == tomllib.loads(original)
    assert fmt.unconfigure(new).text == original


def test_containers_conf_crlf_lines_are_kept() -> None:
    original = '[engine]\r\nhooks_dir = [\r\n  "/a",\r\n]\r\nnum_locks = 2048\r\n'
    fmt = ContainersConf(hooks_dir=OWN_HOOKS)
    new = fmt.configure(original, spec()).text
    assert new is not None and "\n" not in new.replace("\r\n", "")
    assert hooks_dir_of(new) == ["/a", OWN_HOOKS]
    assert fmt.unconfigure(new).text == original


def test_containers_conf_the_default_directory_added_where_hooks_dir_leaves_it_out() -> None:
    original = '[engine]\nhooks_dir = ["/usr/share/containers/oci/hooks.d"]\n'
    for named in (True, False):  # the default file, unnamed, is edited for the default dir
        new = ContainersConf(named=named).configure(original, spec()).text
        assert new is not None and hooks_dir_of(new) == list(PODMAN_HOOKS_DIRS)


def test_containers_conf_an_empty_hooks_dir_gets_only_the_directory() -> None:
    """``hooks_dir = []``: podman reads no hooks at all; configure adds only its own."""
    new = ContainersConf().configure("[engine]\nhooks_dir = []\n", spec()).text
    assert new is not None and hooks_dir_of(new) == [PODMAN_HOOKS_DIRS[1]]


def test_containers_conf_an_unnamed_file_is_not_edited_for_a_directory_of_ones_own() -> None:
    """The default containers.conf is edited for another --hooks-dir only when named."""
    fmt = ContainersConf("/etc/containers/containers.conf", hooks_dir=OWN_HOOKS, named=False)
    with pytest.raises(UsageError, match="name the containers.conf your podman reads"):
        fmt.configure(None, spec())
    with pytest.raises(UsageError, match="--config"):
        fmt.configure((DATA / "containers-hooks-dir.conf").read_text(), spec())
    listed = f'[engine]\nhooks_dir = ["{OWN_HOOKS}"]\n'
    assert fmt.configure(listed, spec()).text == listed  # nothing to change: accepted


def test_containers_conf_unparseable_is_refused() -> None:
    text = (DATA / "containers-broken.conf").read_text()
    fmt = ContainersConf("containers.conf", hooks_dir=OWN_HOOKS)
    with pytest.raises(EngineConfigError, match="containers.conf is not valid TOML"):
        fmt.configure(text, spec())
    with pytest.raises(EngineConfigError, match="containers.conf is not valid TOML"):
        fmt.unconfigure(text)
    with pytest.raises(EngineConfigError, match="not valid TOML"):
        fmt.registration(text)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('[engine]\nhooks_dir = "/etc/containers/oci/hooks.d"\n', "expected a list"),
        ("[engine]\nhooks_dir = [1]\n", "expected a list"),
        ('engine = "podman"\n', "'engine' is a str, expected a table"),
    ],
)
def test_containers_conf_refuses_what_podman_would_not_read(text: str, says: str) -> None:
    with pytest.raises(EngineConfigError, match=says):
        ContainersConf(hooks_dir=OWN_HOOKS).configure(text, spec())


@pytest.mark.parametrize(
    "text",
    [
        'engine.hooks_dir = ["/a"]\n',  # dotted keys: no [engine] header
        'engine = { hooks_dir = ["/a"] }\n',  # inline
        '[containers]\nlabel = """\n[engine]\n"""\n',  # a header inside a string
    ],
)
def test_containers_conf_refuses_a_layout_it_cannot_edit_line_by_line(text: str) -> None:
    with pytest.raises(EngineConfigError, match="add this by hand"):
        ContainersConf(hooks_dir=OWN_HOOKS).configure(text, spec())


def test_containers_conf_refuses_a_block_that_never_ends() -> None:
    with pytest.raises(EngineConfigError, match="never ends"):
        ContainersConf().unconfigure("[engine]\n" + tomledit.BEGIN + "\n")


# trusthook's own files


def test_hooks_file_is_the_shipped_one() -> None:
    text = HooksJson().text(spec())
    assert text == (OCI_CONFIG / "hooks.d" / "trusthook.json").read_text()


def test_hooks_file_replaces_only_its_own() -> None:
    fmt = HooksJson()
    ours = fmt.text(spec())
    assert fmt.configure(ours, spec()).text == ours
    assert fmt.unconfigure(ours).text is None
    foreign = '{"version": "1.0.0", "hook": {"path": "/usr/bin/nvidia-hook", "args": ["x"]}}'
    with pytest.raises(ConflictError, match="not trusthook's hook"):
        fmt.configure(foreign, spec())
    with pytest.raises(ConflictError):
        fmt.unconfigure(foreign)
    found = fmt.registration(ours)
    assert found is not None and found.program == str(HOOK)


def test_crio_drop_in() -> None:
    fmt = CrioDropIn()
    text = fmt.configure(None, spec(default=True)).text
    assert text is not None
    data = tomllib.loads(text)
    assert data["crio"]["runtime"]["default_runtime"] == "trusthook"
    assert data["crio"]["runtime"]["runtimes"]["trusthook"]["runtime_path"] == SHIM
    assert fmt.configure(text, spec(default=True)).text == text
    assert fmt.unconfigure(text).text is None
    with pytest.raises(ConflictError, match="not written by trusthook"):
        fmt.configure("[crio.runtime]\n", spec())
    found = fmt.registration(text)
    assert found is not None and (found.program, found.default) == (SHIM, True)
    shipped = tomllib.loads((OCI_CONFIG / "crio-runtime.conf").read_text())
    ours = tomllib.loads(fmt.text(spec()))
    assert ours == shipped


# tomledit


def test_header_path_reads_every_key_form() -> None:
    assert tomledit.header_path("  [a.'b c'.\"d.e\"]  # x\n") == (("a", "b c", "d.e"), False)
    assert tomledit.header_path("[[a.b]]\n") == (("a", "b"), True)
    assert tomledit.header_path('key = "[x]"\n') is None
    assert tomledit.header_path("[not toml\n") is None


def test_set_key_adds_a_marked_line_after_the_header() -> None:
    lines = tomledit.lines_of("[a]\n    x = 1\n[b]\n")
    tomledit.set_key(lines, 0, "y", "v")
    text = "".join(lines)
    assert text == '[a]\n    y = "v"' + tomledit.ADDED + "\n    x = 1\n[b]\n"
    assert tomllib.loads(text) == {"a": {"x": 1, "y": "v"}, "b": {}}
    assert tomledit.remove_marked(text) == ("[a]\n    x = 1\n[b]\n", True)


def test_set_key_replaces_a_multi_line_value_and_restores_it() -> None:
    original = '[a]\n  k = [  # first\n    "x",\n  ]\n  j = 2\n[b]\n'
    lines = tomledit.lines_of(original)
    assert tomledit.key_span(lines, 0, "k") == (1, 4)
    tomledit.set_key(lines, 0, "k", ["x", "y"])
    text = "".join(lines)
    assert tomllib.loads(text) == {"a": {"k": ["x", "y"], "j": 2}, "b": {}}
    assert text.count(tomledit.HIDDEN) == 2
    assert tomledit.remove_marked(text) == (original, True)


def test_key_span_finds_quoted_keys_and_not_prefixes() -> None:
    lines = tomledit.lines_of("[a]\n  kk = 1\n  k.x = 2\n  'k' = [\n 3]\n")
    assert tomledit.key_span(lines, 0, "k") == (3, 5)
    assert tomledit.key_span(lines, 0, "kk") == (1, 2)
    assert tomledit.key_span(lines, 0, "x") is None


def test_value_text_of_a_list_is_a_toml_array() -> None:
    text = tomledit.value_text(["/a", 'b"c'])
    assert tomllib.loads(f"k = {text}") == {"k": ["/a", 'b"c']}
