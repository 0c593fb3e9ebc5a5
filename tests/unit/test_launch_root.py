"""The agent's check that an encrypted container's root is the shim's private tmpfs: the
mountinfo parsing it rests on."""

from __future__ import annotations

from pathlib import Path

from trusthook.agent.launch import mount_at

MOUNTINFO = """\
22 1 252:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
98 22 0:51 / /run/trusthook/roots/c1 rw,relatime - tmpfs tmpfs rw,mode=755
99 22 0:52 / /run/trusthook/roots/c2 rw,relatime shared:40 - tmpfs tmpfs rw,mode=755
100 22 0:53 / /run/trusthook/roots/with\\040space rw - tmpfs tmpfs rw
101 98 252:0 /x /run/trusthook/roots/c1 rw master:3 - ext4 /dev/vda rw
"""


def test_a_private_tmpfs_is_found() -> None:
    assert mount_at(Path("/run/trusthook/roots/c2"), MOUNTINFO) == ("tmpfs", True)
    assert mount_at(Path("/run/trusthook/roots/with space"), MOUNTINFO) == ("tmpfs", False)


def test_the_last_mount_on_a_path_wins_and_unmounted_paths_are_none() -> None:
    assert mount_at(Path("/run/trusthook/roots/c1"), MOUNTINFO) == ("ext4", False)
    assert mount_at(Path("/run/trusthook/roots/c3"), MOUNTINFO) is None
    assert mount_at(Path("/run/trusthook/roots/c3"), "garbage line\n\n") is None
