"""A small busybox OCI bundle: a static busybox, its applets as symlinks, a runc config."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trusthook.errors import ServiceError

BUSYBOX = Path("/bin/busybox")


def build_rootfs(rootfs: Path) -> Path:
    """A busybox rootfs at ``rootfs``: /bin/busybox and one symlink per applet."""
    if not BUSYBOX.exists():
        raise ServiceError(f"{BUSYBOX} is missing; install busybox-static")
    for d in ("bin", "dev", "proc", "sys", "etc", "tmp", "root"):
        (rootfs / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, rootfs / "bin" / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], check=True, capture_output=True, text=True
    ).stdout.split()
    for applet in applets:
        link = rootfs / "bin" / applet
        if applet != "busybox" and not link.is_symlink():
            link.symlink_to("busybox")
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    return rootfs


def write_bundle_config(
    bundle: Path, args: Sequence[str], *, readonly: bool = True
) -> dict[str, Any]:
    """``runc spec``'s default config with ``args``, no terminal, and the given root mode."""
    config_path = bundle / "config.json"
    config_path.unlink(missing_ok=True)
    subprocess.run(["runc", "spec", "--bundle", str(bundle)], check=True)
    config: dict[str, Any] = json.loads(config_path.read_text())
    config["process"]["args"] = list(args)
    config["process"]["terminal"] = False
    config["root"] = {"path": "rootfs", "readonly": readonly}
    config_path.write_text(json.dumps(config, indent=2))
    return config


def make_bundle(bundle: Path, args: Sequence[str] = ("/bin/true",)) -> Path:
    """A complete busybox bundle at ``bundle``."""
    build_rootfs(bundle / "rootfs")
    write_bundle_config(bundle, args)
    return bundle
