"""Encrypted images end to end: runc through trusthook-runtime, the agent on swtpm, the server.

The image's keys are the server's; the host gets them only after its evidence (including this
container's launch record) passes and the release policy allows it, sealed to its TPM. Every
refusal leaves the container not started and no plaintext anywhere.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.attesting import enroll
from tests.integration.conftest import BIN, SHIM, AttestServer, Host, make_host, make_server, runc
from tests.integration.test_engines import (
    PODMAN_IMAGE,
    ULIMITS,
    dockerd_cli,
    podman_cli,
    runtime_wrapper,
)
from trusthook._devenv.bundle import write_bundle_config
from trusthook._devenv.ociimage import Entry, ImageSpec, build_image, busybox_entries, tar_bytes
from trusthook._devenv.serverproc import write_server_config
from trusthook._devenv.swtpm import Swtpm
from trusthook.image.layout import Layout

pytestmark = pytest.mark.integration
SECRET = b"the plaintext of layer two: " + uuid.uuid4().hex.encode()


@dataclass
class Scene:
    """A server holding the image key, an encrypted image, an enrolled host with its agent."""

    server: AttestServer
    host: Host
    layout: Path
    image: str
    tmp: Path

    def release_rules(self, rules: list[tuple[str, list[str], list[str]]]) -> None:
        """Rewrite the server's [[release]] rules and restart it."""
        self.server.process.stop()
        options = json.loads((self.tmp / "server-options.json").read_text())
        write_server_config(self.server.config_path, releases=rules, **options)
        self.server.process.start()

    def allow_locally(self, *digests: str, mode: str = "enforce") -> None:
        lines = [f'mode = "{mode}"'] + [f'[[image]]\nmanifest = "{d}"' for d in digests]
        (self.host.config.state_dir / "image-policy.toml").write_text("\n".join(lines) + "\n")

    def bundle(self, args: list[str], *, ref: str = "app") -> Path:
        bundle = self.tmp / f"bundle-{uuid.uuid4().hex[:8]}"
        (bundle / "rootfs").mkdir(parents=True)
        config = write_bundle_config(bundle, args)
        config["annotations"] = {
            "org.trusthook.image.layout": str(self.layout),
            "org.trusthook.image.ref": ref,
        }
        (bundle / "config.json").write_text(json.dumps(config))
        return bundle

    def run(self, bundle: Path) -> subprocess.CompletedProcess[str]:
        cid = f"enc-{uuid.uuid4().hex[:8]}"
        return runc("run", "--bundle", str(bundle), cid, binary=str(SHIM), env=self.host.env)

    def audit(self) -> list[tuple[str, str]]:
        db = self.server.process.config.state_dir / "trusthook.db"
        with sqlite3.connect(db) as conn:
            rows = conn.execute("SELECT event, detail FROM audit ORDER BY id").fetchall()
        return [(str(e), str(d)) for e, d in rows if str(e).startswith("release")]

    def assert_no_plaintext(self) -> None:
        """No tmpfs root left, and the secret in no file under the test's directories."""
        roots = self.host.config.image_roots
        assert not roots.exists() or list(roots.iterdir()) == []
        for path in self.tmp.rglob("*"):
            if path.is_file() and not path.is_symlink() and "plain" not in path.parts:
                assert SECRET not in path.read_bytes(), path


def _cli(*args: str) -> str:
    result = subprocess.run(
        [str(BIN / "trusthook"), *args], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture
def scene(swtpm: Swtpm, ek_bundle: Path, tmp_path: Path) -> Iterator[Scene]:
    options = {
        "state_dir": str(tmp_path / "server" / "state"),
        "port": 0,
        "ek_ca_bundle": str(ek_bundle),
    }
    server = make_server(tmp_path / "server", ek_bundle)
    options["port"] = server.process.config.port
    (tmp_path / "server-options.json").write_text(json.dumps(options))
    config = str(server.config_path)
    _cli("server", "keys", "create", "images", "--config", config)
    public = tmp_path / "images.pub.pem"
    public.write_text(_cli("server", "keys", "public", "images", "--config", config))
    app = [
        Entry(name="app/", kind=b"5", mode=0o755),
        Entry(name="app/secret.txt", data=SECRET, mode=0o644),
    ]
    plain = tmp_path / "plain"
    build_image(
        plain,
        "app",
        ImageSpec(
            layers=[tar_bytes(busybox_entries()), tar_bytes(app)],
            compression="gzip",
            cmd=("/bin/cat", "/app/secret.txt"),
            user="0:0",
        ),
    )
    layout = tmp_path / "encrypted"
    _cli("image", "encrypt", f"{plain}:app", f"{layout}:app", "--recipient", str(public))
    image = Layout.open(layout).resolve("app").digest
    (tmp_path / "host").mkdir()
    host = make_host(swtpm, tmp_path / "host")
    s = Scene(server=server, host=host, layout=layout, image=image, tmp=tmp_path)
    s.release_rules([(image, ["lab"], ["any"])])
    host.agent.start()
    enroll(host, server)
    s.allow_locally(image)
    try:
        yield s
    finally:
        host.agent.stop()
        server.process.stop()


def test_an_encrypted_image_runs_after_attestation_and_leaves_no_plaintext(scene: Scene) -> None:
    result = scene.run(scene.bundle(["/bin/cat", "/app/secret.txt"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == SECRET
    records, _ = scene.host.snapshot()
    release, launch = records[-2].event, records[-1].event
    assert (release.stage, launch.stage) == ("release", "createRuntime")
    assert release.image_digest == launch.image_digest == scene.image
    assert release.rootfs_digest != launch.rootfs_digest  # empty root, then the decrypted one
    assert [event for event, _ in scene.audit()] == ["released"]
    scene.assert_no_plaintext()


def test_keys_go_only_to_a_host_inside_the_workloads_placement(scene: Scene) -> None:
    """With a policy manifest in force, the launch must be a workload of it, on a host whose
    admission attributes satisfy its placement: refused naming the selector, released once
    the operator tags the host into place (trusthook server hosts tag)."""
    config = str(scene.server.config_path)
    policy = scene.tmp / "policy.toml"
    policy.write_text(
        'format = 1\n[[workload]]\nname = "shop/secret"\n'
        f'images = ["{scene.image}"]\nencryption = "required"\ngroups = ["lab"]\n'
        'placement = ["region = eu-1"]\nviolation = "audit"\n'
    )
    _cli("server", "policy", "apply", str(policy), "--config", config)
    result = scene.run(scene.bundle(["/bin/cat", "/app/secret.txt"]))
    assert result.returncode != 0
    assert "placement 'region = eu-1': the host's region is not set" in result.stderr
    assert "its keys are not released (policy version 1)" in result.stderr
    assert [event for event, _ in scene.audit()] == ["release_refused"]
    scene.assert_no_plaintext()
    (view,) = json.loads(_cli("server", "hosts", "list", "--json", "--config", config))
    host_id = view["admission"]["ek_sha256"]
    _cli("server", "hosts", "tag", host_id, "region=eu-1", "--reason", "racked", "--config", config)
    result = scene.run(scene.bundle(["/bin/cat", "/app/secret.txt"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.encode() == SECRET
    assert [event for event, _ in scene.audit()] == ["release_refused", "released"]
    assert json.loads(scene.audit()[-1][1])["policy_version"] == 1


def test_the_release_policy_refuses_an_image_it_does_not_name(scene: Scene) -> None:
    scene.release_rules([("sha256:" + "1" * 64, ["lab"], [])])
    result = scene.run(scene.bundle(["/bin/cat", "/app/secret.txt"]))
    assert result.returncode != 0
    assert "no release rule lets host group 'lab'" in result.stderr
    assert [event for event, _ in scene.audit()] == ["release_refused"]
    scene.assert_no_plaintext()


def test_a_launch_profile_outside_the_rule_is_refused(scene: Scene) -> None:
    scene.release_rules([(scene.image, ["lab"], ["sha256:" + "2" * 64])])
    result = scene.run(scene.bundle(["/bin/cat", "/app/secret.txt"]))
    assert result.returncode != 0
    assert "release rule release[0] does not allow this launch profile" in result.stderr
    assert "2" * 64 not in result.stderr  # the allowed profiles are for operators only
    scene.assert_no_plaintext()


def test_the_local_policy_refuses_before_any_network_call(scene: Scene) -> None:
    scene.allow_locally()  # no image allowed
    result = scene.run(scene.bundle(["/bin/cat", "/app/secret.txt"]))
    assert result.returncode != 0
    assert f"encrypted image {scene.image} is not in the host's image policy" in result.stderr
    assert scene.audit() == []  # the server never heard of it
    scene.assert_no_plaintext()


def test_an_untrusted_host_gets_no_keys(scene: Scene) -> None:
    options = json.loads((scene.tmp / "server-options.json").read_text())
    scene.server.process.stop()
    write_server_config(
        scene.server.config_path,
        groups={"lab": {0: ["ab" * 32]}},
        releases=[(scene.image, ["lab"], ["any"])],
        **options,
    )
    scene.server.process.start()
    result = scene.run(scene.bundle(["/bin/cat", "/app/secret.txt"]))
    assert result.returncode != 0
    assert "the host is not trusted" in result.stderr and "golden" in result.stderr
    scene.assert_no_plaintext()


def test_an_unreachable_server_fails_closed(scene: Scene) -> None:
    scene.server.process.stop()
    result = scene.run(scene.bundle(["/bin/cat", "/app/secret.txt"]))
    assert result.returncode != 0
    assert "attestation server" in result.stderr
    scene.assert_no_plaintext()
    scene.server.process.start()


def test_a_flipped_ciphertext_bit_stops_the_container(scene: Scene) -> None:
    layout = Layout.open(scene.layout)
    _, manifest = layout.manifest("app")
    blob = layout.blob_path(manifest.layers[1].digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x10
    blob.write_bytes(bytes(data))
    result = scene.run(scene.bundle(["/bin/cat", "/app/secret.txt"]))
    assert result.returncode != 0
    assert "tampered or corrupt" in result.stderr
    scene.assert_no_plaintext()


def test_without_the_shim_an_encrypted_image_is_refused(scene: Scene) -> None:
    bundle = scene.bundle(["/bin/cat", "/app/secret.txt"])
    config = json.loads((bundle / "config.json").read_text())
    config["hooks"] = {"createRuntime": [scene.host.hook_entry()]}
    (bundle / "config.json").write_text(json.dumps(config))
    result = runc("run", "--bundle", str(bundle), f"plain-{uuid.uuid4().hex[:6]}")
    assert result.returncode != 0
    assert "must be a tmpfs that trusthook-runtime mounted" in result.stderr
    scene.assert_no_plaintext()


def test_a_sealed_image_runs_under_docker_run_with_no_other_change(
    scene: Scene, busybox_rootfs: Path
) -> None:
    sealed = scene.tmp / "sealed.tar"
    _cli("image", "seal", f"{scene.layout}:app", str(sealed), "--tag", "app:sealed")
    assert SECRET not in sealed.read_bytes()
    (scene.tmp / "docker").mkdir()
    with dockerd_cli(scene.host, busybox_rootfs, scene.tmp / "docker") as docker:
        subprocess.run([*docker, "load", "-i", str(sealed)], check=True, capture_output=True)
        run = [*docker, "run", "--rm", "--network", "none", "--runtime", "trusthook"]
        result = subprocess.run([*run, "app:sealed"], capture_output=True, check=False)
        assert result.returncode == 0, result.stderr
        assert result.stdout == SECRET
        scene.allow_locally()  # the same image, refused by this host's policy now
        refused = subprocess.run([*run, "app:sealed"], capture_output=True, text=True, check=False)
        assert refused.returncode != 0
        assert "is not in the host's image policy" in refused.stderr
    scene.assert_no_plaintext()


def test_podman_runs_an_encrypted_image_named_by_annotations(
    scene: Scene, busybox_rootfs: Path
) -> None:
    wrapper = runtime_wrapper(scene.host, scene.tmp / "trusthook-runtime")
    (scene.tmp / "podman").mkdir()
    with podman_cli(scene.host, busybox_rootfs, scene.tmp / "podman") as podman:
        result = subprocess.run(
            [
                *podman,
                "run",
                "--rm",
                "--network",
                "none",
                *ULIMITS,
                "--runtime",
                str(wrapper),
                "--annotation",
                f"org.trusthook.image.layout={scene.layout}",
                "--annotation",
                "org.trusthook.image.ref=app",
                PODMAN_IMAGE,
                "/bin/cat",
                "/app/secret.txt",
            ],
            capture_output=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == SECRET
    scene.assert_no_plaintext()


def test_a_host_that_is_not_enrolled_gets_nothing(scene: Scene, tmp_path: Path) -> None:
    (scene.host.config.state_dir / "attest" / "enrollment.json").unlink()
    result = scene.run(scene.bundle(["/bin/cat", "/app/secret.txt"]))
    assert result.returncode != 0
    assert "encrypted images need an enrolled host" in result.stderr
    assert scene.audit() == []
    scene.assert_no_plaintext()


def test_a_rewritten_manifest_is_refused_by_the_pinned_digest(scene: Scene) -> None:
    """An attacker with write access to the layout edits the config (a diff_id) and so the
    manifest: the digest changes and the local policy no longer names the image."""
    layout = Layout.open(scene.layout)
    desc, manifest = layout.manifest("app")
    config = json.loads(layout.read_blob(manifest.config))
    config["rootfs"]["diff_ids"][1] = "sha256:" + "0" * 64
    blob = json.dumps(config).encode()
    raw = json.loads(layout.read_blob(desc))
    raw["config"].update(digest=layout.write_blob(blob), size=len(blob))
    layout.add_manifest(raw, "app")
    result = scene.run(scene.bundle(["/bin/cat", "/app/secret.txt"]))
    assert result.returncode != 0
    assert "is not in the host's image policy" in result.stderr
    assert scene.audit() == []
    scene.assert_no_plaintext()


def test_a_hostile_layer_is_refused_and_nothing_escapes(scene: Scene) -> None:
    """An image whose owner is trusted but whose second layer writes through a symlink."""
    outside = scene.tmp / "outside"
    outside.mkdir()
    hostile = [
        Entry(name="escape", kind=b"2", linkname=str(outside)),
        Entry(name="escape/owned", data=SECRET),
    ]
    build_image(
        scene.tmp / "plain",
        "hostile",
        ImageSpec(layers=[tar_bytes(busybox_entries()), tar_bytes(hostile)], compression="zstd"),
    )
    public = scene.tmp / "images.pub.pem"
    _cli(
        "image",
        "encrypt",
        f"{scene.tmp / 'plain'}:hostile",
        f"{scene.layout}:hostile",
        "--recipient",
        str(public),
    )
    image = Layout.open(scene.layout).resolve("hostile").digest
    scene.release_rules([(image, ["lab"], ["any"])])
    scene.allow_locally(image)
    result = scene.run(scene.bundle(["/bin/true"], ref="hostile"))
    assert result.returncode != 0
    assert "layer 1" in result.stderr and "escape" in result.stderr
    assert list(outside.iterdir()) == []
    scene.assert_no_plaintext()


class HeldBlob:
    """A layer blob replaced by a FIFO that serves it whole to the reader process's first open
    (pass 1 authenticates the whole ciphertext before anything is extracted) and all but its
    last ``hold_back`` bytes to the next (pass 2, extraction), holding those back until the
    block ends: extraction starts, and cannot finish, however fast or slow the machine is."""

    def __init__(self, path: Path, reader: int, hold_back: int) -> None:
        self._path = path
        self._reader = reader
        self._data = path.read_bytes()
        assert len(self._data) > 2 * hold_back
        self._held = self._data[:-hold_back]
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _open_by_reader(self) -> bool:
        target = str(self._path.resolve())
        try:
            fds = list(Path(f"/proc/{self._reader}/fd").iterdir())
        except OSError:  # it has exited
            return False
        for fd in fds:
            with contextlib.suppress(OSError):
                if os.readlink(fd) == target:
                    return True
        return False

    def _serve(self) -> None:
        for part in (self._data, self._held):
            fd = os.open(self._path, os.O_WRONLY)  # waits for a reader
            with contextlib.suppress(BrokenPipeError), os.fdopen(fd, "wb") as f:
                if self._done.is_set():
                    return
                f.write(part)
                f.flush()
                if part is self._held:
                    self._done.wait()
            # the reader closes the FIFO at EOF: not before that may the next open go through
            deadline = time.monotonic() + 30
            while self._open_by_reader() and time.monotonic() < deadline:
                time.sleep(0.01)

    def __enter__(self) -> HeldBlob:
        self._path.unlink()
        os.mkfifo(self._path, 0o644)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        fd = os.open(self._path, os.O_RDONLY | os.O_NONBLOCK)  # lets a waiting open through
        try:
            self._thread.join(timeout=30)
        finally:
            os.close(fd)
        assert not self._thread.is_alive()
        self._path.unlink()
        self._path.write_bytes(self._data)


def test_killing_the_agent_mid_decryption_leaves_no_plaintext(scene: Scene) -> None:
    """The agent is killed once the layer's files appear, its last 4 MiB withheld (HeldBlob)."""
    big = [Entry(name="data/", kind=b"5", mode=0o755)] + [
        Entry(name=f"data/f{i:04}", data=SECRET + os.urandom(200_000)) for i in range(80)
    ]
    build_image(
        scene.tmp / "plain",
        "big",
        ImageSpec(layers=[tar_bytes(busybox_entries()), tar_bytes(big)], compression="gzip"),
    )
    _cli(
        "image",
        "encrypt",
        f"{scene.tmp / 'plain'}:big",
        f"{scene.layout}:big",
        "--recipient",
        str(scene.tmp / "images.pub.pem"),
    )
    image = Layout.open(scene.layout).resolve("big").digest
    scene.release_rules([(image, ["lab"], ["any"])])
    scene.allow_locally(image)
    cid = f"killed-{uuid.uuid4().hex[:6]}"
    bundle = scene.bundle(["/bin/true"], ref="big")
    _, manifest = Layout.open(scene.layout).manifest("big")
    blob = Layout.open(scene.layout).blob_path(manifest.layers[1].digest)
    assert scene.host.agent.proc is not None
    with HeldBlob(blob, scene.host.agent.proc.pid, hold_back=4 << 20):
        run = subprocess.Popen(
            [str(SHIM), "run", "--bundle", str(bundle), cid],
            env=scene.host.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        data = scene.host.config.image_roots / cid / "data"
        deadline = time.monotonic() + 60
        while not (data.is_dir() and any(data.iterdir())):
            assert run.poll() is None, run.communicate()
            assert time.monotonic() < deadline, "decryption never started"
            time.sleep(0.01)
        scene.host.agent.proc.kill()
        _, stderr = run.communicate(timeout=60)
    assert run.returncode != 0
    assert b"agent" in stderr
    scene.assert_no_plaintext()


def test_an_image_not_encrypted_to_the_server_gets_no_keys(scene: Scene) -> None:
    other = scene.tmp / "other"
    other.mkdir()
    _cli("server", "keys", "create", "other", "--config", str(scene.server.config_path))
    public = other / "other.pub.pem"
    public.write_text(
        _cli("server", "keys", "public", "other", "--config", str(scene.server.config_path))
    )
    # Encrypt to "other", then remove that key from the server: no server key is a recipient.
    _cli(
        "image",
        "encrypt",
        f"{scene.tmp / 'plain'}:app",
        f"{scene.layout}:other",
        "--recipient",
        str(public),
    )
    (scene.server.process.config.image_key_dir / "other.pem").unlink()
    image = Layout.open(scene.layout).resolve("other").digest
    scene.release_rules([(image, ["lab"], ["any"])])
    scene.allow_locally(image)
    result = scene.run(scene.bundle(["/bin/cat", "/app/secret.txt"], ref="other"))
    assert result.returncode != 0
    assert "none of the 1 decryption key(s) is a recipient" in result.stderr
    assert [event for event, _ in scene.audit()] == ["release_refused"]
    scene.assert_no_plaintext()


@pytest.mark.parametrize(
    ("mount", "message"),
    [
        ([], "is not a tmpfs mount (got no mount)"),
        (["--make-shared"], "is a shared mount"),
    ],
)
def test_a_root_under_the_roots_directory_must_be_a_private_tmpfs(
    scene: Scene, mount: list[str], message: str
) -> None:
    """Roots made by hand: a plain directory (plaintext would reach disk), and a shared tmpfs
    (mounts made in the container could propagate into it)."""
    cid = f"byhand-{uuid.uuid4().hex[:6]}"
    root = scene.host.config.image_roots / cid
    root.mkdir(parents=True)
    if mount:
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(root)], check=True)
    try:
        if mount:
            subprocess.run(["mount", *mount, str(root)], check=True)
        bundle = scene.bundle(["/bin/cat", "/app/secret.txt"])
        config = json.loads((bundle / "config.json").read_text())
        config["root"]["path"] = str(root)
        config["hooks"] = {"createRuntime": [scene.host.hook_entry()]}
        (bundle / "config.json").write_text(json.dumps(config))
        result = runc("run", "--bundle", str(bundle), cid)
        assert result.returncode != 0
        assert message in result.stderr
        assert scene.audit() == []
    finally:
        if mount:
            subprocess.run(["umount", str(root)], check=True)
        shutil.rmtree(root)
    scene.assert_no_plaintext()


def test_a_host_that_allows_only_encrypted_images_refuses_an_ordinary_one(
    scene: Scene, bundle_factory: Any
) -> None:
    policy = scene.host.config.state_dir / "image-policy.toml"
    policy.write_text(f'allow_unencrypted = false\n[[image]]\nmanifest = "{scene.image}"\n')
    plain = runc(
        "run", "--bundle", str(bundle_factory(["/bin/true"])), f"plain-{uuid.uuid4().hex[:6]}",
        binary=str(SHIM), env=scene.host.env,
    )  # fmt: skip
    assert plain.returncode != 0
    assert "unencrypted images are not allowed on this host" in plain.stderr
    encrypted = scene.run(scene.bundle(["/bin/cat", "/app/secret.txt"]))
    assert encrypted.returncode == 0, encrypted.stderr
    assert encrypted.stdout.encode() == SECRET


def test_a_layer_cannot_remove_a_runtime_mount_point(scene: Scene) -> None:
    """The review's bypass: the layers are unpacked after runc made the mount points in the
    tmpfs root; `.wh.data` plus `data/token` removed the mount point of a read-only host bind
    mount at /data and the container read the image's file instead of the host's."""
    entries = [
        Entry(name=".wh.data", data=b"", mode=0o644),
        Entry(name="data/", kind=b"5", mode=0o755),
        Entry(name="data/token", data=b"from the image", mode=0o644),
    ]
    plain = scene.tmp / "plain-mounts"
    spec = ImageSpec(
        layers=[tar_bytes(busybox_entries()), tar_bytes(entries)], compression="gzip", user="0:0"
    )
    build_image(plain, "app", spec)
    public = scene.tmp / "images.pub.pem"
    layout = scene.tmp / "encrypted-mounts"
    _cli("image", "encrypt", f"{plain}:app", f"{layout}:app", "--recipient", str(public))
    image = Layout.open(layout).resolve("app").digest
    scene.release_rules([(image, ["lab"], ["any"])])
    scene.allow_locally(image)
    host_data = scene.tmp / "host-data"
    host_data.mkdir()
    (host_data / "token").write_text("from the host")
    bundle = scene.bundle(["/bin/cat", "/data/token"])
    config = json.loads((bundle / "config.json").read_text())
    config["annotations"]["org.trusthook.image.layout"] = str(layout)
    config["mounts"].append(
        {
            "destination": "/data",
            "type": "bind",
            "source": str(host_data),
            "options": ["rbind", "ro"],
        }
    )
    (bundle / "config.json").write_text(json.dumps(config))
    result = scene.run(bundle)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "from the host"
    assert (host_data / "token").read_text() == "from the host"
