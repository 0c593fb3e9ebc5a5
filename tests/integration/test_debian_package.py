"""The Debian package (scripts/build-deb): built from this checkout, installed with apt into a
fresh Debian 12 root made by mmdebstrap from this machine's own apt mirror, run there (the
agent on a swtpm of the host's loopback), then removed and purged. docs/deploy.md, "Debian
package", is the spec.

The root is a chroot (bind-mounted on itself, for runc) with /proc, /sys, /sys/fs/cgroup and
/dev mounted in a private mount namespace of each command (``unshare --mount``), so nothing is
ever mounted in the host's namespace and the namespace's mounts end with the command. systemd
is installed in the root but not running, as in an image build: the maintainer scripts must
cope, and ``systemd-analyze verify`` checks the units there. One root serves the whole session;
mmdebstrap makes it (20-40 s) while scripts/build-deb builds the package, as a tarball kept
between runs in ``ROOT_CACHE`` (keyed by mmdebstrap's arguments and the apt sources; a week at
most): later runs only extract it.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from trusthook._devenv.swtpm import Swtpm

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
APT_SOURCES = Path("/etc/apt")


def machine_sources(apt: Path = APT_SOURCES) -> tuple[str, ...]:
    """This machine's own Debian 12 apt sources, as one-line entries for mmdebstrap: the mirror
    is whatever the machine uses (no host name is written into the repository). Reads
    sources.list and sources.list.d/*.list (one-line) and sources.list.d/*.sources (deb822);
    keeps enabled ``deb`` entries of the bookworm suites."""
    entries: list[tuple[str, str, str]] = []
    lists = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]
    for path in lists:
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if len(words) >= 4 and words[0] == "deb" and not words[1].startswith("["):
                entries.append((words[1], words[2], " ".join(words[3:])))
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in path.read_text().split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line and not line.startswith(("#", " ")) and ":" in line:
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
                continue
            for uri in fields.get("uris", "").split():
                for suite in fields.get("suites", "").split():
                    entries.append((uri, suite, fields.get("components", "main")))
    found = tuple(
        f"deb {uri} {suite} {components}"
        for uri, suite, components in entries
        if suite.split("-")[0] == "bookworm"
    )
    assert found, f"no Debian 12 (bookworm) apt source on this machine under {apt}"
    return found


CONFFILES = ("/etc/trusthook/config.toml", "/etc/trusthook/server.toml")
UNITS = ("trusthook-agent.service", "trusthook-server.service")
PROGRAMS = ("trusthook", "trusthook-hook", "trusthook-runtime")
STATE_DIRS = ("/var/lib/trusthook", "/var/lib/trusthook-server")
# What apt, dpkg and the tests themselves write in the root, and the kernel's trees.
NOT_COMPARED = ("proc", "sys", "dev", "run", "tmp", "var/cache", "var/log", "var/lib/apt")
# Files the package owns no longer, which survive dpkg -r as on every Debian service package:
# dpkg's record of the removed package, and deb-systemd-helper's of the units' enablement.
KEPT_BY_DPKG = ("var/lib/dpkg/",)
KEPT_BY_DSH = ("var/lib/systemd/deb-systemd-helper-enabled/",)
CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
}
# minbase (apt, dpkg, perl-base, init-system-helpers) and systemd, for systemctl and
# systemd-analyze; apt's lists kept, so that apt installs the package's dependencies at once.
MMDEBSTRAP = (
    "mmdebstrap",
    "--variant=minbase",
    "--mode=root",
    "--include=systemd",
    "--skip=cleanup/apt/lists",
    "--quiet",
)
# mmdebstrap's tarballs, outside the repository; an entry is written under a temporary name and
# renamed once complete, so a partial one is never taken.
ROOT_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or "/var/cache") / "trusthook-tests"
ROOT_CACHE_DAYS = 7  # then the apt lists kept in the root are too old to trust
TAR_EXTRACT = ("tar", "--numeric-owner", "--xattrs", "--xattrs-include=*", "-xpf")
UNSHARE = ("unshare", "--mount", "--propagation", "private", "--")
# Mounts made inside the command's own mount namespace (unshare), gone when it exits. The root
# is a mount point of its own, as runc needs to make it rslave; the cgroup trees are for runc.
MOUNT_AND_CHROOT = """set -e
root=$1; shift
mount --bind "$root" "$root"
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --rbind /dev "$root/dev"
mount --rbind /sys/fs/cgroup "$root/sys/fs/cgroup"
exec chroot "$root" "$@"
"""


@dataclass(frozen=True)
class DebianRoot:
    path: Path
    cached: bool = False  # extracted from ROOT_CACHE: apt's lists may be days old

    def run(
        self, *argv: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` run in the root, with /proc, /sys and /dev mounted for it alone."""
        return subprocess.run(
            [*UNSHARE, "sh", "-c", MOUNT_AND_CHROOT, "sh", str(self.path), *argv],
            input=stdin,
            capture_output=True,
            text=True,
            env={**CHROOT_ENV, **(env or {})},
            check=False,
            timeout=300,
        )

    def ok(self, *argv: str, stdin: str | None = None, env: dict[str, str] | None = None) -> str:
        result = self.run(*argv, stdin=stdin, env=env)
        assert result.returncode == 0, f"{argv}: {result.stdout}{result.stderr}"
        return result.stdout

    def inside(self, path: str) -> Path:
        return self.path / path.lstrip("/")

    def canonical(self, path: str) -> str:
        """``path`` (relative) through the root's own symlinks: usrmerge makes lib/ usr/lib/."""
        real = os.path.realpath(self.path / path)
        return os.path.relpath(real, os.path.realpath(self.path))

    def files(self) -> set[str]:
        """Every file, symlink and directory of the root (relative), but for NOT_COMPARED."""
        found: set[str] = set()
        for top, dirs, names in os.walk(self.path):
            rel = os.path.relpath(top, self.path)
            rel = "" if rel == "." else rel + "/"
            dirs[:] = [d for d in dirs if not (rel + d).startswith(NOT_COMPARED)]
            for name in names + dirs:
                found.add(rel + name)
        return found


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this (the host's) namespace."""
    prefix = str(path.resolve())
    with open("/proc/self/mounts") as f:
        points = [line.split()[1].replace("\\040", " ") for line in f]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


@dataclass(frozen=True)
class Bootstrap:
    """mmdebstrap making the Debian 12 root, in the background while the package builds."""

    root: Path
    process: subprocess.Popen[bytes]
    log: Path
    cache: Path
    partial: Path | None  # the tarball mmdebstrap writes, if the cache has none to extract

    def finish(self) -> None:
        """The root, once ``process`` is done: mmdebstrap's tarball renamed into the cache and
        extracted; a cached one that does not extract is removed, and made anew."""
        code = self.process.wait(timeout=600)
        if self.partial is None:
            if code == 0:
                return
            # Never a mount under the root here: tar makes none.
            subprocess.run(["rm", "-rf", "--one-file-system", str(self.root)], check=True)
            self.cache.unlink(missing_ok=True)
            partial = partial_name(self.cache)
            try:
                result = subprocess.run(
                    mmdebstrap_argv(partial), capture_output=True, text=True, check=False
                )
                assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
                os.rename(partial, self.cache)
            finally:
                partial.unlink(missing_ok=True)
        else:
            assert code == 0, self.log.read_text()[-4000:]
            os.rename(self.partial, self.cache)
        self.root.mkdir()
        subprocess.run([*TAR_EXTRACT, str(self.cache), "-C", str(self.root)], check=True)


def mmdebstrap_argv(tarball: Path) -> list[str]:
    """mmdebstrap writing the root as a tarball, in a mount namespace of its own: the /proc,
    /sys and /dev that it mounts in the root cannot outlive it, even if it is killed."""
    return [*UNSHARE, *MMDEBSTRAP, "--format=tar", "bookworm", str(tarball), *machine_sources()]


def root_cache_entry() -> Path:
    key = json.dumps([MMDEBSTRAP, "--format=tar", "bookworm", machine_sources()]).encode()
    return ROOT_CACHE / f"debian12-{hashlib.sha256(key).hexdigest()[:16]}.tar"


def partial_name(cache: Path) -> Path:
    return cache.with_name(f"{cache.name}.{uuid.uuid4().hex}.partial")


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[Bootstrap]:
    for tool in ("mmdebstrap", "unshare", "chroot", "tar"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run scripts/setup")
    scratch = Path(tempfile.mkdtemp(prefix="trusthook-debian12-"))
    log = scratch / "mmdebstrap.log"
    root = scratch / "root"
    ROOT_CACHE.mkdir(parents=True, exist_ok=True)
    cache = root_cache_entry()
    fresh = cache.is_file() and time.time() - cache.stat().st_mtime < ROOT_CACHE_DAYS * 86400
    partial: Path | None = None
    if fresh:
        root.mkdir()
        argv = [*TAR_EXTRACT, str(cache), "-C", str(root)]
    else:
        partial = partial_name(cache)
        argv = mmdebstrap_argv(partial)
    try:
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        try:
            yield Bootstrap(root, process, log, cache, partial)
        finally:
            if process.poll() is None:
                process.terminate()
            process.wait(timeout=60)
            if partial is not None:
                partial.unlink(missing_ok=True)
    finally:
        # Never remove a tree with something mounted in it: it would reach the host's /dev,
        # /proc or /sys. Every mount was made in another namespace, so none should be here.
        left = mounts_under(scratch)
        assert not left, f"still mounted, {scratch} is kept: {left}"
        subprocess.run(["rm", "-rf", "--one-file-system", str(scratch)], check=True)


@pytest.fixture(scope="session")
def debian_root(bootstrap: Bootstrap) -> DebianRoot:
    """A fresh Debian 12 root (minbase and systemd), one for the session."""
    bootstrap.finish()
    return DebianRoot(bootstrap.root, cached=bootstrap.partial is None)


@pytest.fixture(scope="session")
def deb(tmp_path_factory: pytest.TempPathFactory, bootstrap: Bootstrap) -> Path:
    """The package, built by scripts/build-deb while mmdebstrap runs (``bootstrap``); zstd,
    since xz takes a minute longer here."""
    out = tmp_path_factory.mktemp("deb")
    result = subprocess.run(
        [str(REPO / "scripts" / "build-deb"), "--output", str(out), "--compression", "zstd"],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    (package,) = out.glob("trusthook_*_amd64.deb")
    return package


def deb_files(package: Path) -> list[str]:
    """The paths in the package's data (relative, directories with a trailing slash)."""
    listing = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(package)], capture_output=True, check=True
    ).stdout
    names = subprocess.run(
        ["tar", "-t"], input=listing, capture_output=True, check=True
    ).stdout.decode()
    return [n.removeprefix("./") for n in names.splitlines() if n not in ("./", "")]


@pytest.fixture(scope="session")
def installed(debian_root: DebianRoot, deb: Path) -> DebianRoot:
    """The package installed by apt, which brings its dependencies from the mirror; of what it
    recommends only runc (runc's own recommendations, criu and iproute2, would double apt's
    time)."""
    shutil.copy(deb, debian_root.inside("/tmp"))
    no_fsync = "Dpkg::Options::=--force-unsafe-io"  # the root is thrown away
    apt = ("apt-get", "install", "-y", "-q", "--no-install-recommends", "-o", no_fsync)
    if debian_root.cached:
        debian_root.ok("apt-get", "update", "-q")
    debian_root.ok(*apt, f"/tmp/{deb.name}", "runc")
    os.unlink(debian_root.inside(f"/tmp/{deb.name}"))
    return debian_root


def roff_text(page: str) -> str:
    """A generated man page's preformatted text, as ``--help`` prints it."""
    text = page.replace("\\-", "-").replace("\\e", "\\").replace("\\&", "")
    return "\n".join(line.rstrip() for line in text.splitlines())


def test_package_fields_and_contents(deb: Path, tmp_path: Path) -> None:
    fields = subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Package", "Architecture", "Depends", "Recommends"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Package: trusthook\n" in fields
    assert "Architecture: amd64\n" in fields
    assert "Recommends: runc | crun\n" in fields
    depends = re.search(r"^Depends: (.*)$", fields, re.M)
    assert depends is not None
    for need in ("python3.11", "libtss2-esys-3.0.2-0", "libtss2-tctildr0", "libssl3"):
        assert need in depends[1]
    conffiles = subprocess.run(
        ["dpkg-deb", "--info", str(deb), "conffiles"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert tuple(conffiles) == CONFFILES

    files = deb_files(deb)
    for want in (
        *(f"usr/bin/{p}" for p in PROGRAMS),
        *(f"usr/share/man/man1/{p}.1.gz" for p in PROGRAMS),
        *(f"lib/systemd/system/{u}" for u in UNITS),
        *(c.lstrip("/") for c in CONFFILES),
        "usr/lib/trusthook/trusthook/_native.abi3.so",
        "usr/lib/trusthook/trusthook/__pycache__/__init__.cpython-311.pyc",
        "usr/share/trusthook/oci-config/hooks.d/trusthook.json",
        "usr/share/doc/trusthook/copyright",
        "usr/share/doc/trusthook/docs/attestation.md",
    ):
        assert want in files, want
    assert not [f for f in files if f.startswith(("usr/local", "var/", "run/"))]
    # Every module comes byte-compiled: nothing is written under /usr/lib/trusthook at run time.
    pycs = {f for f in files if f.endswith(".pyc")}
    for source in (f for f in files if f.endswith(".py")):
        folder, _, name = source.rpartition("/")
        assert f"{folder}/__pycache__/{name[:-3]}.cpython-311.pyc" in pycs, source

    # No compiled file looks for libraries on a path of the build machine (a wheel built by
    # another Python can carry its RUNPATH): only inside the package, relative to itself.
    subprocess.run(["dpkg-deb", "--extract", str(deb), str(tmp_path)], check=True)
    for so in (f for f in files if re.search(r"\.so(\.[0-9]+)*$", f)):
        dynamic = subprocess.run(
            ["readelf", "--dynamic", str(tmp_path / so)], capture_output=True, text=True, check=True
        ).stdout
        paths = re.findall(r"\((?:RPATH|RUNPATH)\).*\[(.*)\]", dynamic)
        assert all(p.startswith("$ORIGIN") for path in paths for p in path.split(":")), so

    # /usr/lib/trusthook holds exactly the pinned runtime set (and trusthook).
    pinned = re.findall(
        r"^([A-Za-z0-9._-]+)==([^ \\]+)", (REPO / "requirements/runtime.txt").read_text(), re.M
    )

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "_", name).lower()

    shipped = {
        norm(m[1]) + "==" + m[2]
        for f in files
        if (m := re.fullmatch(r"usr/lib/trusthook/([^/]+)-([^-/]+)\.dist-info/", f))
    }
    assert shipped == {norm(n) + "==" + v for n, v in pinned} | {"trusthook==" + version(deb)}


def version(deb: Path) -> str:
    return subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Version"], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_programs_run_in_debian12(installed: DebianRoot) -> None:
    root = installed
    usage = root.ok("trusthook", "--help")
    assert usage.startswith("usage: trusthook ")

    # The native hasher, built by the package's cffi build; TRUSTHOOK_HASHER=native refuses
    # to fall back to the Python reference.
    measured = json.loads(
        root.ok(
            "trusthook",
            "measure",
            "/usr/share/trusthook",
            "--json",
            env={"TRUSTHOOK_HASHER": "native"},
        )
    )
    assert measured["hasher"] == "native"
    assert measured["rootfs_digest"].startswith("sha256:")

    # Every pinned dependency imports on Debian's Python and libraries (tpm2-pytss: libtss2;
    # psycopg: its binary build); the server's API builds.
    root.ok(
        "/usr/bin/python3.11",
        "-ISB",
        "-c",
        "import sys; sys.path.append('/usr/lib/trusthook')\n"
        "import cryptography.hazmat.bindings._rust, fastapi, jwcrypto, psutil, sqlalchemy\n"
        "import tpm2_pytss, uvicorn, zstandard, psycopg\n"
        "assert psycopg.pq.__impl__ == 'binary', psycopg.pq.__impl__",
    )
    assert json.loads(root.ok("trusthook", "server", "openapi"))["openapi"].startswith("3.")

    # The hook fails closed without an agent, and lets the container start in audit mode.
    state = json.dumps(
        {"ociVersion": "1.0.2", "id": "c1", "status": "creating", "pid": 1, "bundle": "/tmp"}
    )
    closed = root.run("trusthook-hook", stdin=state)
    assert closed.returncode == 1
    assert closed.stderr.startswith("trusthook-hook: ") and "/run/trusthook" in closed.stderr
    audit = root.run("trusthook-hook", "--audit", stdin=state)
    assert audit.returncode == 0, audit.stderr
    assert "audit mode, container starts unmeasured" in audit.stderr

    # The shim reads no config file: the agent, which has not started here, tells it which
    # runtime to run (/run/trusthook/agent.sock.runtime); without that, it refuses.
    shim = root.run("trusthook-runtime", "--version")
    assert (
        shim.returncode == 1 and "/run/trusthook/agent.sock.runtime does not exist" in shim.stderr
    )

    # Running the programs wrote nothing of its own under /usr/lib/trusthook (no .pyc).
    owned = set(root.ok("dpkg-query", "--listfiles", "trusthook").split())
    present = root.ok("find", "/usr/lib/trusthook").split()
    assert [p for p in present if p not in owned] == []


def test_man_pages_match_help(installed: DebianRoot) -> None:
    for program in PROGRAMS:
        page = gzip.decompress(installed.inside(f"/usr/share/man/man1/{program}.1.gz").read_bytes())
        assert page.startswith(f".TH {program.upper()} 1 ".encode())
    text = roff_text(
        gzip.decompress(
            installed.inside("/usr/share/man/man1/trusthook.1.gz").read_bytes()
        ).decode()
    )
    env = {"COLUMNS": "80"}
    for argv in ((), ("server", "hosts", "admit"), ("image", "unpack"), ("log", "show")):
        shown = installed.ok("trusthook", *argv, "--help", env=env)
        body = "\n".join(line.rstrip() for line in shown.splitlines())
        assert body in text, argv
    hook = roff_text(
        gzip.decompress(
            installed.inside("/usr/share/man/man1/trusthook-hook.1.gz").read_bytes()
        ).decode()
    )
    bad = installed.run("trusthook-hook", "--no-such-flag")
    assert bad.stderr.rsplit("usage: ", 1)[1].strip() in hook


def test_units_and_configs(installed: DebianRoot) -> None:
    root = installed
    result = root.run("systemd-analyze", "verify", *UNITS)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    for unit in UNITS:
        text = root.inside(f"/lib/systemd/system/{unit}").read_text()
        assert "ExecStart=/usr/bin/trusthook " in text
        # The package enables and starts nothing: the operator does, after configuring.
        assert root.run("systemctl", "is-enabled", unit).stdout.strip() == "disabled"
    config = root.inside("/etc/trusthook/config.toml").read_text()
    assert 'hook = "/usr/bin/trusthook-hook"' in config
    hooks_d = json.loads(
        root.inside("/usr/share/trusthook/oci-config/hooks.d/trusthook.json").read_text()
    )
    assert hooks_d["hook"]["path"] == "/usr/bin/trusthook-hook"
    assert not root.inside("/etc/containers/oci/hooks.d/trusthook.json").exists()
    assert not root.inside("/usr/share/containers/oci/hooks.d/trusthook.json").exists()


def test_agent_records_a_launch(installed: DebianRoot, tmp_path: Path) -> None:
    """The packaged agent on a swtpm (on the host's loopback, which the chroot shares) measures
    a real container that the packaged shim starts with runc (a static busybox that exits 0),
    and ``trusthook log verify`` replays the record."""
    root = installed
    bundle = root.inside("/tmp/bundle")
    (bundle / "rootfs" / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", bundle / "rootfs" / "bin" / "busybox")
    root.ok("runc", "spec", "--bundle", "/tmp/bundle")
    spec = json.loads((bundle / "config.json").read_text())
    spec["process"].update(terminal=False, args=["/bin/busybox", "true"])
    (bundle / "config.json").write_text(json.dumps(spec))
    container = f"trusthook-test-{uuid.uuid4().hex[:12]}"
    runc = ("--root", f"/run/runc-{container}")
    with Swtpm(tmp_path / "swtpm") as tpm:
        root.inside("/tmp/agent.toml").write_text(f'[tpm]\ntcti = "{tpm.tcti}"\n')
        cli = ("trusthook", "--trusthook-config", "/tmp/agent.toml")
        log = tmp_path / "agent.log"
        with log.open("wb") as out:
            # The process is the agent itself: unshare, sh and chroot each exec the next.
            agent = subprocess.Popen(
                [*UNSHARE, "sh", "-c", MOUNT_AND_CHROOT, "sh", str(root.path), *cli, "agent"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=CHROOT_ENV,
            )
        try:
            socket = root.inside("/run/trusthook/agent.sock")
            deadline = time.monotonic() + 60
            while not socket.exists():
                assert agent.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            # The agent told the shim the real runtime (runc, which the package recommends and
            # apt installed).
            assert "runc version" in root.ok("trusthook-runtime", "--version")
            # runc cannot pivot_root in a chroot; --keep, so that the delete below is checked.
            started = root.run(
                "trusthook-runtime",
                *runc,
                "run",
                "--no-pivot",
                "--keep",
                "--bundle",
                "/tmp/bundle",
                container,
            )
            assert started.returncode == 0, started.stdout + started.stderr + log.read_text()
            shown = root.ok(*cli, "log", "show")
            root.ok(*cli, "log", "verify")
        finally:
            agent.terminate()
            agent.wait(timeout=30)
            root.run("runc", *runc, "delete", "--force", container)
    assert not root.inside(f"/run/runc-{container}/{container}").exists()
    root.inside(f"/run/runc-{container}").rmdir()
    # The shim wrote its hook into the bundle for runc.
    hooks = json.loads((bundle / "config.json").read_text())["hooks"]["createRuntime"]
    assert [h["path"] for h in hooks] == ["/usr/bin/trusthook-hook"]
    measured = json.loads(root.ok("trusthook", "measure", "/tmp/bundle/rootfs", "--json"))
    assert re.findall(r"^  container  (\S+)  \(createRuntime, ", shown, re.M) == [container]
    assert f"  rootfs     {measured['rootfs_digest']} (" in shown
    records = [
        line
        for path in root.inside("/var/lib/trusthook/eventlog").glob("*.cel.jsonl")
        for line in path.read_text().splitlines()
        if container in line
    ]
    assert len(records) == 1, records


def test_remove_then_purge(installed: DebianRoot, deb: Path) -> None:
    root = installed
    # What an operator would have done: the server's state, an edited conffile, the agent
    # enabled; and an event log (written here: the root has no TPM for an agent to run on).
    root.ok("trusthook", "server", "init", "--config", "/etc/trusthook/server.toml")
    eventlog = root.inside("/var/lib/trusthook/eventlog/boot.cel.jsonl")
    eventlog.parent.mkdir(parents=True, exist_ok=True)
    eventlog.write_text('{"recnum":0}\n')
    config = root.inside("/etc/trusthook/config.toml")
    config.write_text(config.read_text() + "# edited by the operator\n")
    root.ok("systemctl", "enable", "trusthook-agent.service")
    wants = root.inside("/etc/systemd/system/multi-user.target.wants/trusthook-agent.service")
    assert wants.is_symlink()
    state = {d: sorted(root.inside(d).rglob("*")) for d in STATE_DIRS}

    # Removed and installed again: the operator's conffile and enablement are as they were.
    root.ok("dpkg", "--remove", "trusthook")
    shutil.copy(deb, root.inside("/tmp"))
    root.ok("dpkg", "--install", f"/tmp/{deb.name}")
    os.unlink(root.inside(f"/tmp/{deb.name}"))
    assert "# edited by the operator" in config.read_text()
    assert root.ok("systemctl", "is-enabled", "trusthook-agent.service").strip() == "enabled"
    assert root.run("systemctl", "is-enabled", "trusthook-server.service").stdout == "disabled\n"

    # As if systemd ran: the maintainer scripts look for /run/systemd/system, and find
    # deb-systemd-invoke and systemctl in PATH, where stand-ins in /usr/local/sbin record them.
    calls = root.inside("/tmp/systemd-calls")
    running = {"PATH": "/usr/local/sbin:" + CHROOT_ENV["PATH"]}
    root.inside("/run/systemd/system").mkdir(parents=True)
    for tool in ("deb-systemd-invoke", "systemctl"):
        stand_in = root.inside(f"/usr/local/sbin/{tool}")
        stand_in.write_text(f'#!/bin/sh\necho "{tool} $*" >>/tmp/systemd-calls\n')
        stand_in.chmod(0o755)

    before = root.files()
    removed = root.run("dpkg", "--remove", "trusthook", env=running)
    assert removed.returncode == 0, removed.stderr
    after = root.files()
    # dpkg -r stops the services (prerm) and reloads systemd once their units are gone (postrm).
    assert calls.read_text().splitlines() == [
        "deb-systemd-invoke stop trusthook-agent.service trusthook-server.service",
        "systemctl --system daemon-reload",
    ]
    assert (
        root.ok("dpkg-query", "-W", "-f", "${Status}", "trusthook") == "deinstall ok config-files"
    )
    # dpkg -r takes away every file and directory the package shipped but the conffiles (and
    # the directory that holds them), and adds nothing.
    listed = deb_files(deb)
    shipped = {root.canonical(f) for f in listed}
    shipped_dirs = {root.canonical(f) for f in listed if f.endswith("/")}
    kept = {c.lstrip("/") for c in CONFFILES} | {"etc/trusthook"}
    gone = {f for f in before - after if not f.startswith(KEPT_BY_DPKG)}
    assert gone == (shipped - kept) - {d for d in shipped_dirs if d in after}
    assert not [f for f in shipped - kept - shipped_dirs if f in after]
    assert {f for f in after - before if not f.startswith(KEPT_BY_DPKG)} == set()
    assert "# edited by the operator" in config.read_text()
    assert {d: sorted(root.inside(d).rglob("*")) for d in STATE_DIRS} == state
    # Nothing named trusthook is left but the conffiles, the state, the operator's enablement
    # (kept for a reinstall, as every Debian service keeps it) and dpkg's own records.
    assert leftovers(after) == {
        "etc/trusthook",
        "etc/systemd/system/multi-user.target.wants/trusthook-agent.service",
        *(d.lstrip("/") for d in STATE_DIRS),
    }

    purged = root.run("dpkg", "--purge", "trusthook", env=running)
    assert purged.returncode == 0, purged.stderr
    # Purge only reloads (deb-systemd-helper once more, as it forgets the units' symlinks).
    reloads = calls.read_text().splitlines()[2:]
    assert reloads and all(c.endswith(" daemon-reload") for c in reloads), reloads
    for tool in ("deb-systemd-invoke", "systemctl"):
        root.inside(f"/usr/local/sbin/{tool}").unlink()
    root.inside("/run/systemd/system").rmdir()
    assert root.run("dpkg-query", "-W", "trusthook").returncode != 0
    for directory in STATE_DIRS:
        assert f"trusthook: kept {directory} (" in purged.stderr
        assert f"rm -rf {directory}" in purged.stderr
    assert {d: sorted(root.inside(d).rglob("*")) for d in STATE_DIRS} == state
    final = root.files()
    assert not config.exists() and not root.inside("/etc/trusthook").exists()
    assert not os.path.lexists(wants)
    assert leftovers(final, dpkg_records=False) == {d.lstrip("/") for d in STATE_DIRS}
    assert not [f for f in final if f.startswith(KEPT_BY_DSH) and "trusthook" in f]


def leftovers(files: set[str], *, dpkg_records: bool = True) -> set[str]:
    """The top-most paths named ``*trusthook*`` in ``files``; dpkg's and deb-systemd-helper's
    records of a removed package (while it has config-files) left out."""
    named = {f for f in files if "trusthook" in f}
    if dpkg_records:
        named = {f for f in named if not f.startswith(KEPT_BY_DPKG + KEPT_BY_DSH)}
    return {f for f in named if not any(f.startswith(other + "/") for other in named)}
