"""The host's local image policy: parsing with clear errors, and its decisions."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from trusthook.agent.imagepolicy import ImagePolicy, load_policy, parse_policy
from trusthook.errors import ConfigError, PolicyRefusedError

IMAGE = "sha256:" + "ab" * 32


def test_a_missing_file_allows_ordinary_images_and_no_encrypted_one(tmp_path: Path) -> None:
    policy = load_policy(tmp_path / "none.toml")
    assert policy == ImagePolicy()
    policy.check(encrypted=False, manifest=None)
    with pytest.raises(PolicyRefusedError, match=f"encrypted image {IMAGE} is not in"):
        policy.check(encrypted=True, manifest=IMAGE)


def test_enforce_refuses_unencrypted_images_when_told(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text(f'allow_unencrypted = false\n[[image]]\nmanifest = "{IMAGE}"\n')
    policy = load_policy(path)
    policy.check(encrypted=True, manifest=IMAGE)
    with pytest.raises(PolicyRefusedError, match="unencrypted images are not allowed"):
        policy.check(encrypted=False, manifest=None)


def test_audit_mode_logs_and_allows(caplog: pytest.LogCaptureFixture) -> None:
    policy = parse_policy({"mode": "audit", "allow_unencrypted": False}, "")
    with caplog.at_level(logging.WARNING):
        policy.check(encrypted=False, manifest=None)
        policy.check(encrypted=True, manifest=IMAGE)
    assert len(caplog.records) == 2
    assert "audit mode, allowed" in caplog.records[0].getMessage()


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"mode": "strict"}, "expected enforce or audit"),
        ({"allow_unencrypted": "yes"}, "true or false"),
        ({"image": {"manifest": IMAGE}}, r"array of tables: \[\[image\]\]"),
        ({"image": [{"manifest": "sha256:00"}]}, r"image\[0\].manifest"),
        ({"image": [{"manifest": IMAGE, "tag": "x"}]}, "takes only manifest and name"),
        ({"image": [{"manifest": IMAGE, "name": 3}]}, "name must be a string"),
        ({"images": []}, "unknown key"),
        ({"devices": "mknod"}, "devices got 'mknod', expected one of refuse, skip, allow"),
        ({"setuid": "drop"}, "setuid got 'drop', expected one of strip, refuse, keep"),
    ],
)
def test_bad_policies_are_refused_naming_the_key(data: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        parse_policy(data, " p.toml")


def test_extraction_settings_are_read() -> None:
    policy = parse_policy({"devices": "skip", "setuid": "keep"}, "")
    assert (policy.devices, policy.setuid) == ("skip", "keep")
    assert (ImagePolicy().devices, ImagePolicy().setuid) == ("refuse", "strip")


def test_unreadable_toml_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "p.toml"
    path.write_text("mode = ")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_policy(path)
