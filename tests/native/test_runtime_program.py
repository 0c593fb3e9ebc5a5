"""The compiled ``trusthook-runtime`` (native/trusthook_runtime.c) against peers the test runs
on a real unix socket and real runtimes: how it reads runc's and crun's command lines (the
cases of the Python shim it replaced), what it asks the agent, what it execs, what it refuses,
and when it removes a tmpfs root. The agent answering it is tested in tests/unit/test_bundles.py
and tests/integration. The program is the installed one, or ``$TRUSTHOOK_RUNTIME_PROGRAM``
(scripts/test-native-sanitized points it at an ASan + UBSan build)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.native.test_hook_program import Peer
from tests.support.peers import nobody_listening

PROGRAM = os.environ.get("TRUSTHOOK_RUNTIME_PROGRAM") or str(
    Path(sys.executable).parent / "trusthook-runtime"
)
RUNC = shutil.which("runc")
RECORDER = """#!/bin/sh
# the real runtime, as far as these tests need one: it records its arguments and exits $CODE
for a in "$@"; do printf '%s\\n' "$a"; done > "$(dirname "$0")/ran"
exit "${CODE:-0}"
"""


@dataclass
class Host:
    """A socket directory with the agent's runtime file in it, a runtime that records how it
    was run, a roots directory and a working directory."""

    tmp: Path
    peer: Peer

    @property
    def socket(self) -> Path:
        return self.peer.path

    @property
    def roots(self) -> Path:
        return self.tmp / "roots"

    @property
    def runtime(self) -> Path:
        return self.tmp / "bin" / "runtime"

    def write_file(self, runtime: str | None = None, text: str | None = None) -> Path:
        path = Path(f"{self.socket}.runtime")
        if text is None:
            text = f"version 1\nruntime {runtime or self.runtime}\nroots {self.roots}\ntimeout 5\n"
        path.write_text(text)
        path.chmod(0o644)
        return path

    def run(
        self, *args: str, env: dict[str, str] | None = None, code: int = 0
    ) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTHOOK_")}
        environ |= {"TRUSTHOOK_AGENT_SOCKET": str(self.socket), "CODE": str(code)}
        result = subprocess.run(
            [PROGRAM, *args],
            capture_output=True,
            check=False,
            timeout=60,
            cwd=self.tmp / "cwd",
            env={**environ, **(env or {})},
        )
        return subprocess.CompletedProcess(
            result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
        )

    def ran(self) -> list[str] | None:
        """The recording runtime's arguments, None if it did not run (and forgets them)."""
        path = self.runtime.parent / "ran"
        if not path.exists():
            return None
        args = path.read_text().splitlines()
        path.unlink()
        return args

    def prepared(self) -> list[dict[str, object]]:
        """The prepare requests the peer received (their params), in order."""
        out = []
        for request in self.peer.requests:
            header, _, body = request.partition(b"\n")
            message = json.loads(header)
            assert (message["op"], message["version"], body) == ("prepare", 1, b"")
            out.append(message["params"])
        return out


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    directory = tmp_path / "run"
    directory.mkdir(mode=0o700)
    (tmp_path / "bin").mkdir()
    (tmp_path / "cwd").mkdir()
    peer = Peer(directory / "agent.sock", answer=lambda request: b'ok\n{"root":null}')
    peer.serve()
    h = Host(tmp_path, peer)
    h.roots.mkdir(mode=0o700)
    h.runtime.write_text(RECORDER)
    h.runtime.chmod(0o755)
    h.write_file()
    yield h
    peer.close()


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.stderr.count("\n") == 1 and result.stderr.endswith("\n"), result.stderr
    return result.stderr.rstrip("\n")


# the command line, as runc and crun read it


@pytest.mark.parametrize(
    ("args", "command"),
    [
        (["create", "--bundle", "/b", "id"], "create"),
        (["--root", "/run/x", "--log", "/l", "--log-format", "json", "create", "id"], "create"),
        (["--root=/run/x", "--systemd-cgroup", "run", "id"], "run"),
        (["--debug", "--rootless", "false", "state", "id"], None),
        # runc reads single-dash long flags like double-dash ones (Go's flag package)
        (["-root", "/tmp/r", "run", "id"], "run"),
        (["-root=/tmp/r", "-debug=false", "create", "id"], "create"),
        (["--", "create", "id"], "create"),
        (["--criu", "/c", "--cgroup-manager", "cgroupfs", "--log-level=error", "kill", "id"], None),
        ([], None),
    ],
)
def test_the_subcommand_after_the_global_flags(
    host: Host, args: list[str], command: str | None
) -> None:
    """What the shim took for the subcommand: prepared with the agent (create, run), or run
    straight away; the runtime gets the identical arguments either way."""
    result = host.run(*args)
    assert (result.returncode, result.stderr) == (0, "")
    assert host.ran() == args
    assert [p["command"] for p in host.prepared()] == ([command] if command else [])


@pytest.mark.parametrize(
    "args", [["--version"], ["-v"], ["--help", "create", "id"], ["-h"], ["--log", "/l", "-V"]]
)
def test_help_and_version_run_no_subcommand(host: Host, args: list[str]) -> None:
    result = host.run(*args)
    assert result.returncode == 0 and host.ran() == args and host.prepared() == []


def test_its_own_help_names_the_usage(host: Host) -> None:
    result = host.run("--help")
    assert result.returncode == 0 and host.ran() is None
    assert result.stdout.startswith("usage: trusthook-runtime [RUNTIME GLOBAL FLAGS] SUBCOMMAND")
    assert "TRUSTHOOK_AGENT_SOCKET" in result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ro", "/tmp/x", "run", "id"], "unknown global flag '--ro'"),  # crun's abbreviation
        (["--bogus", "run", "id"], "unknown global flag '--bogus'; trusthook-runtime refuses"),
        (["--debug=maybe", "run", "id"], "flag '--debug=maybe': expected a boolean value, got"),
        (["--root"], "global flag '--root' has no value"),
        (["---root", "/x", "run", "id"], "bad flag syntax '---root'"),
        (["--=x", "run", "id"], "unknown global flag '--=x'"),  # an empty name
        (["create", "--bundle"], "create flag '--bundle' has no value"),
        (["create", "-f", "other.json", "id"], "create -f is refused: crun's --config names"),
        (["run", "--config=other.json", "id"], "run --config=other.json is refused"),
        (["create", "--bun", "/b", "id"], "unknown create flag '--bun'; refusing to guess"),
        (["create", "a", "b"], "create needs exactly one container id, got 2 arguments"),
        (["create"], "create needs exactly one container id, got 0 arguments"),
        (["delete", "--regex", "a.*"], "delete --regex is refused: crun's delete --regex"),
        (["run", "--detach=later", "id"], "flag '--detach=later': expected a boolean value"),
        (["checkpoint", "--page-server", "h:1", "c"], "--page-server sends the container's"),
        (["checkpoint", "--leave", "c"], "unknown checkpoint flag '--leave'"),
        (["restore", "--config", "/x", "c"], "names another file"),
        (["restore", "a", "b"], "restore needs exactly one container id"),
        (["run", "--", "a", "b"], "run needs exactly one container id, got 2"),
    ],
)
def test_unclassifiable_command_lines_are_refused(
    host: Host, args: list[str], message: str
) -> None:
    """Fail closed: one line, exit 1, the runtime never runs and the agent is never asked."""
    result = host.run(*args)
    assert result.returncode == 1
    line = one_line(result)
    assert line.startswith("trusthook-runtime: ") and message in line, line
    assert host.ran() is None and host.peer.requests == []


def test_docker_style_invocation(host: Host) -> None:
    args = ["--root", "/var/run/docker/runtime-runc/moby", "--log", "/run/containerd/x/log.json"]
    args += ["--log-format", "json", "--systemd-cgroup", "create", "--bundle"]
    args += ["/run/containerd/b", "--pid-file", "/p", "--console-socket", "/s", "cid"]
    assert host.run(*args).returncode == 0 and host.ran() == args
    assert host.prepared() == [
        {"bundle": "/run/containerd/b", "command": "create", "container_id": "cid"}
    ]


def test_podman_conmon_style_invocation(host: Host) -> None:
    args = ["--root", "/run/crun", "--log-level=error", "--systemd-cgroup", "create"]
    args += ["--bundle", "/var/lib/c/b", "--pid-file", "/p", "--no-new-keyring", "cid"]
    assert host.run(*args).returncode == 0
    assert host.prepared() == [
        {"bundle": "/var/lib/c/b", "command": "create", "container_id": "cid"}
    ]


@pytest.mark.parametrize(
    ("sub_args", "bundle"),
    [
        (["-b", "rel", "id"], "cwd/rel"),
        (["--bundle=/abs", "id"], "/abs"),
        (["-b=/abs", "id"], "/abs"),
        (["id"], "cwd"),
        (["id", "--bundle", "/after"], "/after"),  # runc moves flags before the argument
        (["--pid-file", "--bundle", "id"], "cwd"),  # a value flag takes the next argument
    ],
)
def test_the_bundle(host: Host, sub_args: list[str], bundle: str) -> None:
    assert host.run("create", *sub_args).returncode == 0
    (params,) = host.prepared()
    expected = bundle if bundle.startswith("/") else str(host.tmp / bundle)
    assert (params["bundle"], params["container_id"]) == (expected, "id")


def test_checkpoint_and_restore_are_prepared_with_their_flags(host: Host) -> None:
    checkpoint = ["checkpoint", "--image-path", "/i", "--leave-running", "c1", "--work-path=/w"]
    restore = ["restore", "-d", "--bundle", "/b", "--image-path", "/i", "--tcp-established", "c2"]
    for args in (checkpoint, restore):
        assert host.run(*args).returncode == 0 and host.ran() == args
    assert host.prepared() == [
        {"bundle": None, "command": "checkpoint", "container_id": "c1"},
        {"bundle": "/b", "command": "restore", "container_id": "c2"},
    ]


def test_a_container_id_is_sent_as_json(host: Host) -> None:
    name = 'a"b\\c\x01d'
    assert host.run("run", "--bundle", "/b", name).returncode == 0
    assert host.prepared()[0]["container_id"] == name


# the agent's answers


@pytest.mark.parametrize("command", ["create", "run", "checkpoint", "restore"])
def test_a_refusal_is_one_line_and_the_runtime_never_runs(host: Host, command: str) -> None:
    host.peer.answer = lambda request: b"error the server says no\n"
    result = host.run(command, "c1")
    assert result.returncode == 1 and host.ran() is None
    assert one_line(result) == (
        f"trusthook-runtime: {command} of container c1 is refused: the server says no"
    )


@pytest.mark.parametrize(
    "answer",
    [
        b"ok\n{}",
        b'ok\n{"root":"/elsewhere/c1"}',  # only ever a root under the roots directory
        b'ok\n{"root":null} ',
        b'ok\n{"root":1}',
        b"ok\n",
        b"maybe\n",
        b"",
    ],
)
def test_a_malformed_answer_is_refused(host: Host, answer: bytes) -> None:
    host.peer.answer = lambda request: answer
    result = host.run("run", "c1")
    assert result.returncode == 1 and host.ran() is None
    assert one_line(result).startswith("trusthook-runtime: run of container c1 is refused: ")


def test_without_an_agent_create_run_checkpoint_and_restore_are_refused(host: Host) -> None:
    host.peer.close()
    host.socket.unlink()
    for command in ("create", "run", "checkpoint", "restore"):
        result = host.run("--log", str(host.tmp / "log"), command, "c1")
        assert result.returncode == 1 and host.ran() is None
        assert one_line(result) == (
            f"trusthook-runtime: {command} of container c1 is refused: agent socket"
            f" {host.socket} does not exist; is the trusthook agent running?"
        )
    # what needs no agent still runs: the engine can list, stop and remove containers
    for args in (["state", "c1"], ["kill", "c1", "KILL"], ["delete", "--force", "c1"]):
        assert host.run(*args).returncode == 0 and host.ran() == args
    assert len((host.tmp / "log").read_text().splitlines()) == 4


def test_a_peer_that_is_not_root_is_refused(host: Host) -> None:
    host.peer.close()
    host.socket.unlink()
    with nobody_listening(host.socket):
        result = host.run("create", "c1")
        assert result.returncode == 1 and host.ran() is None
        assert one_line(result) == (
            "trusthook-runtime: create of container c1 is refused: the process listening on"
            f" agent socket {host.socket} runs as uid 65534, not root; refusing to talk to it"
        )


def test_a_refusal_reaches_the_engine_through_the_runtime_log(host: Host) -> None:
    host.peer.answer = lambda request: b'error config.json: "hooks" must be an object\n'
    log = host.tmp / "log.json"
    args = ["--log", str(log), "--log-format", "json", "create", "--bundle", "/b", "id"]
    result = host.run(*args)
    message = 'trusthook-runtime: create of container id is refused: config.json: "hooks" must'
    message += " be an object"
    assert one_line(result) == message
    entry = json.loads(log.read_text())
    assert (entry["level"], entry["msg"]) == ("error", message)
    assert entry["time"].endswith("Z") and len(entry["time"]) == 27
    text_log = host.tmp / "log.txt"
    host.run("--log", str(text_log), "create", "id")
    line = text_log.read_text()
    assert line.startswith('time="') and f'level=error msg="{message}"\n' in line


# tmpfs roots: the agent made one, the shim removes it when the container is gone


def _with_root(host: Host) -> Path:
    """The agent's answer for an encrypted image: the root the shim made, now the container's."""
    root = host.roots / "c1"

    def answer(request: bytes) -> bytes:
        assert root.is_dir() and not any(root.iterdir())  # made by the shim before it asked
        return b'ok\n{"root":"' + str(root).encode() + b'"}'

    host.peer.answer = answer
    return root


@pytest.mark.parametrize(
    ("args", "code", "kept"),
    [
        (["run", "c1"], 0, False),  # attached: the container is gone when run returns
        (["run", "c1"], 3, False),
        (["run", "-d", "c1"], 0, True),
        (["run", "--detach=false", "c1"], 0, False),
        (["run", "-d", "c1"], 3, False),
        (["create", "c1"], 0, True),
        (["create", "c1"], 2, False),  # no container: no root
    ],
)
def test_a_root_goes_with_its_container(host: Host, args: list[str], code: int, kept: bool) -> None:
    root = _with_root(host)
    result = host.run(*args, code=code)
    assert (result.returncode, result.stderr) == (code, "")
    assert host.ran() == args  # as a child, with the same arguments
    assert root.exists() == kept


@pytest.mark.parametrize("command", ["create", "run"])
def test_the_shim_makes_the_root_directory_and_removes_it_unless_a_root_is_mounted(
    host: Host, command: str
) -> None:
    """Made exclusively before the agent is asked, so that whatever happens to the agent the
    shim knows the directory is its own to remove."""
    made: list[bool] = []

    def answer(request: bytes) -> bytes:
        made.append((host.roots / "c1").is_dir())
        return b'ok\n{"root":null}'

    host.peer.answer = answer
    assert host.run(command, "c1").returncode == 0 and made == [True]
    assert list(host.roots.iterdir()) == []  # an ordinary container: no root


@pytest.mark.parametrize("answer", [b"error no\n", b"", None, b'ok\n{"root":"/x/c1"}'], ids=str)
def test_the_made_directory_goes_when_the_agent_refuses_or_does_not_answer(
    host: Host, answer: bytes | None
) -> None:
    host.peer.answer = lambda request: answer
    result = host.run("run", "c1")
    assert result.returncode == 1 and host.ran() is None
    assert one_line(result).startswith("trusthook-runtime: run of container c1 is refused: ")
    assert list(host.roots.iterdir()) == []


def test_the_made_directory_goes_when_the_agent_is_gone(host: Host) -> None:
    host.peer.close()
    host.socket.unlink()
    assert host.run("create", "c1").returncode == 1
    assert list(host.roots.iterdir()) == []


def test_a_root_directory_that_exists_is_refused_before_the_agent_is_asked(host: Host) -> None:
    """Another container's, perhaps: never the shim's to prepare or to remove."""
    (host.roots / "c1").mkdir()
    result = host.run("run", "c1")
    assert result.returncode == 1 and host.ran() is None and host.peer.requests == []
    assert one_line(result) == (
        f"trusthook-runtime: {host.roots}/c1 already exists: another container with id 'c1'?"
    )
    assert (host.roots / "c1").is_dir()


def test_a_delete_removes_the_root_after_the_runtime_deleted_the_container(host: Host) -> None:
    root = host.roots / "c1"
    root.mkdir(parents=True)
    result = host.run("delete", "c1", code=1)  # the runtime failed: the container is there
    assert result.returncode == 1 and root.exists() and host.ran() == ["delete", "c1"]
    assert host.run("delete", "--force", "c1").returncode == 0 and not root.exists()
    assert host.peer.requests == []  # a delete never asks the agent


def test_a_delete_of_a_name_that_would_escape_the_roots_is_refused(host: Host) -> None:
    for name in ("..", "."):
        result = host.run("delete", name)
        assert result.returncode == 1 and host.ran() is None
        assert one_line(result) == f"trusthook-runtime: container id '{name}' is not a valid name"


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_mounted_root_is_unmounted_and_removed(host: Host) -> None:
    root = host.roots / "c1"

    def answer(request: bytes) -> bytes:  # as the agent does
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(root)], check=True)
        (root / "plaintext").write_text("secret")
        return b'ok\n{"root":"' + str(root).encode() + b'"}'

    host.peer.answer = answer
    try:
        assert host.run("run", "c1").returncode == 0
        assert not root.exists()
    finally:
        subprocess.run(["umount", str(root)], check=False, capture_output=True)


def test_a_signal_to_the_shim_reaches_the_runtime(host: Host) -> None:
    root = _with_root(host)
    host.runtime.write_text(
        "#!/bin/sh\ntrap 'exit 7' TERM\necho up\nwhile :; do sleep 0.05; done\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRUSTHOOK_")}
    env["TRUSTHOOK_AGENT_SOCKET"] = str(host.socket)
    shim = subprocess.Popen(
        [PROGRAM, "run", "c1"], env=env, cwd=host.tmp / "cwd", stdout=subprocess.PIPE
    )
    assert shim.stdout is not None and shim.stdout.readline() == b"up\n"
    shim.terminate()
    assert shim.wait(timeout=30) == 7
    assert not root.exists()


# where the agent and the runtime are


def test_the_runtime_file_must_exist_and_be_roots_alone(host: Host) -> None:
    path = host.write_file()
    path.chmod(0o666)
    result = host.run("state", "c1")
    assert result.returncode == 1 and host.ran() is None
    assert one_line(result) == (
        f"trusthook-runtime: {path} is not a file of root's alone (owner uid 0, mode 666);"
        " refusing it"
    )
    path.unlink()
    result = host.run("state", "c1")
    assert result.returncode == 1 and f"{path} does not exist" in one_line(result)
    host.write_file()
    host.socket.parent.chmod(0o777)
    try:
        result = host.run("--version")
        assert result.returncode == 1 and "is not root's alone" in one_line(result)
    finally:
        host.socket.parent.chmod(0o700)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "has 1 lines, expected 4"),
        ("version 2\nruntime /r\nroots /x\ntimeout 5\n", "is version 2, expected 1"),
        ("version 1\nruntime /r\nroots /x\ntimeout 5\nmore 1\n", "has more than 4 lines"),
        ("version 1\nroots /x\nruntime /r\ntimeout 5\n", "line 2: expected 'runtime VALUE'"),
        ("version 1\nruntime /r\nroots x\ntimeout 5\n", "roots must be an absolute path"),
        ("version 1\nruntime /r\nroots /x\ntimeout -1\n", "timeout must be a number"),
        ("version 1\nruntime /r\nroots /x\ntimeout nan\n", "timeout must be a number"),
        ("version 1\nruntime \nroots /x\ntimeout 5\n", "line 2: expected 'runtime VALUE'"),
    ],
)
def test_a_malformed_runtime_file_is_refused(host: Host, text: str, message: str) -> None:
    host.write_file(text=text)
    result = host.run("--version")
    assert result.returncode == 1 and host.ran() is None
    assert message in one_line(result)


def test_a_runtime_the_agent_did_not_find_is_refused(host: Host) -> None:
    for runtime in ("/nonexistent/runc", "runc", str(host.tmp)):
        host.write_file(runtime=runtime)
        log = host.tmp / "log.json"
        args = ["--log", str(log), "--log-format", "json", "create", "--bundle", "/b", "id"]
        result = host.run(*args)
        message = f"trusthook-runtime: runtime '{runtime}' not found or not executable"
        assert result.returncode == 1 and one_line(result) == message
        assert json.loads(log.read_text().splitlines()[-1])["msg"] == message
        assert host.peer.requests == []  # refused before the agent prepares anything


def test_a_config_file_without_the_socket_is_refused(host: Host) -> None:
    """The shim reads no config file: one named for it would be ignored, and another agent's
    bundle work would be done; it refuses instead."""
    result = host.run(
        "--version", env={"TRUSTHOOK_CONFIG": "/etc/x.toml", "TRUSTHOOK_AGENT_SOCKET": ""}
    )
    assert result.returncode == 1 and host.ran() is None
    assert one_line(result) == (
        "trusthook-runtime: TRUSTHOOK_CONFIG is set, and trusthook-runtime reads no config file:"
        " set TRUSTHOOK_AGENT_SOCKET to that config's [agent] socket as well"
    )


# the real runc behind it


def _untimed(log: str) -> str:
    return re.sub(r'time="[^"]*"', 'time="…"', log)


@pytest.mark.skipif(RUNC is None, reason="runc is installed by scripts/setup")
def test_pass_through_to_the_real_runc_without_the_agent(host: Host) -> None:
    assert RUNC is not None
    host.write_file(runtime=RUNC)
    host.peer.close()
    host.socket.unlink()
    root = host.tmp / "runc-root"
    for args in (
        ["--version"],
        ["--root", str(root), "list", "--format", "json"],
        ["--root", str(root), "state", "nonexistent"],
        ["--root", str(root), "delete", "nonexistent"],
    ):
        via = host.run(*args)
        direct = subprocess.run([RUNC, *args], capture_output=True, text=True, check=False)
        assert (via.returncode, via.stdout) == (direct.returncode, direct.stdout), args
        assert _untimed(via.stderr.replace(RUNC, "runc")) == _untimed(
            direct.stderr.replace(RUNC, "runc")
        )  # runc's log lines carry the second they were written: the two runs may differ


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    args=st.lists(
        st.sampled_from(
            ["--root", "-root=/r", "--log", "--debug", "--debug=x", "--", "-", "-b", "--bundle",
             "-d", "--detach=0", "create", "run", "delete", "checkpoint", "restore", "state",
             "c1", "--page-server", "--force", "=", "--=", "---x", "-f", ""]
        ) | st.text(max_size=8),
        max_size=8,
    )
)  # fmt: skip
def test_any_command_line_ends_in_a_status_and_at_most_one_line(
    host: Host, args: list[str]
) -> None:
    result = host.run(*[a.replace("\0", "") for a in args])
    host.ran()
    assert result.returncode in (0, 1)
    assert result.stderr.count("\n") <= 1, result.stderr
