"""The container engines ``trusthook runtime configure`` and ``trusthook doctor`` know.
Standard library only (the CLI's parser imports it)."""

from __future__ import annotations

from enum import StrEnum


class Engine(StrEnum):
    DOCKER = "docker"
    CONTAINERD = "containerd"
    PODMAN = "podman"
    CRIO = "crio"
