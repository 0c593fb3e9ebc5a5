"""The configuration file."""

from __future__ import annotations

from pathlib import Path

import pytest

from trusthook.common.config import Config, Mode, load_config
from trusthook.errors import ConfigError


def test_defaults_suit_a_production_host() -> None:
    config = Config()
    assert (config.tcti, config.pcr, config.mode) == ("device:/dev/tpmrm0", 23, Mode.ENFORCE)
    assert config.hook_args == ["--socket", "/run/trusthook/agent.sock", "--timeout", "30"]


def test_full_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[tpm]\ntcti = "swtpm:port=1"\npcr = 16\n'
        '[agent]\nsocket = "/s"\nstate_dir = "/d"\nhash_threads = 16\n'
        '[hook]\nmode = "audit"\ntimeout = 5\n[runtime]\npath = "crun"\nhook = "/h"\n'
    )
    config = load_config(path)
    assert config.hash_threads == 16
    assert (config.tcti, config.pcr, config.mode, config.runtime) == (
        "swtpm:port=1",
        16,
        Mode.AUDIT,
        "crun",
    )
    assert config.hook_args == ["--socket", "/s", "--timeout", "5", "--audit"]


def test_env_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[tpm]\npcr = 12\n")
    assert load_config(environ={"TRUSTHOOK_CONFIG": str(path)}).pcr == 12


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[tpm]\npcr = 24\n", "tpm.pcr .*got 24, expected a PCR index 0..23"),
        ("[tpm]\npcr = true\n", "tpm.pcr .*wrong type"),
        ("[tpm]\npcrs = 1\n", "unknown key tpm.pcrs"),
        ("[tmp]\n", r"unknown section \[tmp\]"),
        ('[hook]\nmode = "permissive"\n', "hook.mode .*expected 'enforce' or 'audit'"),
        ("[hook]\ntimeout = 0\n", "hook.timeout .*expected seconds > 0"),
        ("[hook]\ntimeout = inf\n", "hook.timeout .*expected seconds > 0"),
        ('[agent]\nhasher = "fast"\n', "agent.hasher .*expected one of auto, native, python"),
        ("[agent]\nhash_threads = -1\n", "agent.hash_threads .*expected 0..1024"),
        ("tpm = 1\n", r"\[tpm\] .*must be a table"),
        ("[tpm\n", "is not valid TOML"),
    ],
)
def test_bad_files_are_refused_with_the_reason(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_named_file_must_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.toml")


def test_attestation_section(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[attestation]\ninterval = 5\ntimeout = 2.5\n")
    config = load_config(path, environ={})
    assert (config.attest_interval, config.attest_timeout) == (5.0, 2.5)
    path.write_text("[attestation]\ninterval = 0\n")
    with pytest.raises(ConfigError, match="attestation.interval"):
        load_config(path, environ={})


def test_attestation_keep_alive_is_a_boolean(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    assert Config().attest_keep_alive is True
    path.write_text("[attestation]\nkeep_alive = false\n")
    assert load_config(path).attest_keep_alive is False
    path.write_text("[attestation]\nkeep_alive = 1\n")
    with pytest.raises(ConfigError, match="attestation.keep_alive.*wrong type"):
        load_config(path)
    path.write_text("[attestation]\ninterval = true\n")  # a boolean is still no number
    with pytest.raises(ConfigError, match="attestation.interval.*wrong type"):
        load_config(path)
