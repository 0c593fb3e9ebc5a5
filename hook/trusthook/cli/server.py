"""``trusthook server ...``: set up, run and administer the attestation server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from trusthook.common.config import Config
from trusthook.server import imagekeys
from trusthook.server import run as server_run
from trusthook.server.app import openapi_document
from trusthook.server.config import ServerConfig, load_server_config


def _config(args: argparse.Namespace) -> ServerConfig:
    return load_server_config(Path(args.config))


def init(args: argparse.Namespace, _config_: Config) -> int:
    for line in server_run.init_server(_config(args)):
        print(f"ready: {line}")
    return 0


def run(args: argparse.Namespace, _config_: Config) -> int:
    server_run.run_server(_config(args))
    return 0


def operator_cert(args: argparse.Namespace, _config_: Config) -> int:
    key, cert = server_run.operator_certificate(_config(args), args.name, Path(args.out))
    print(f"wrote {cert} and {key}")
    return 0


def openapi(_args: argparse.Namespace, _config_: Config) -> int:
    sys.stdout.write(openapi_document())
    return 0


def keys_create(args: argparse.Namespace, _config_: Config) -> int:
    path = imagekeys.create_key(_config(args).image_key_dir, args.name, args.type)
    print(f"created {path}; encrypt images to: trusthook server keys public {args.name}")
    return 0


def keys_public(args: argparse.Namespace, _config_: Config) -> int:
    sys.stdout.write(imagekeys.public_pem(_config(args).image_key_dir, args.name).decode())
    return 0


def keys_list(args: argparse.Namespace, _config_: Config) -> int:
    for name in imagekeys.list_keys(_config(args).image_key_dir):
        print(name)
    return 0
