"""``trusthook measure``: the digests the agent would record for a rootfs and config.json."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from trusthook.common.config import Config
from trusthook.common.digest import digest_string
from trusthook.common.oci import read_config
from trusthook.errors import BundleError
from trusthook.measure.backend import select_hasher
from trusthook.measure.profile import config_digest, launch_profile_digest


def measure(args: argparse.Namespace, config: Config) -> int:
    hasher = select_hasher(config.hasher, threads=args.threads)
    rootfs = hasher.measure_rootfs(args.rootfs)
    out: dict[str, Any] = {
        "rootfs": os.path.abspath(args.rootfs),
        "rootfs_digest": digest_string(rootfs.digest),
        "rootfs_entries": rootfs.entries,
        "bytes_hashed": rootfs.bytes_hashed,
        "hasher": hasher.backend,
    }
    if args.oci_config:
        bundle = os.path.dirname(os.path.abspath(args.oci_config))
        if os.path.basename(args.oci_config) != "config.json":
            raise BundleError(f"--config must name a bundle's config.json, got {args.oci_config}")
        oci_config = read_config(bundle)
        out["config_digest"] = config_digest(oci_config)
        out["launch_profile_digest"] = launch_profile_digest(oci_config, args.container_id)
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        for key, value in out.items():
            print(f"{key:22} {value}")
    return 0
