"""Audit mode is the host's setting, never the bundle's: a hook entry that says otherwise is
refused by the agent, and a host in audit mode lets a container it cannot measure start,
saying so."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Host, make_host, runc
from trusthook._devenv.swtpm import Swtpm

pytestmark = pytest.mark.integration


def test_a_bundle_cannot_put_an_enforcing_host_in_audit_mode(
    host: Host, bundle_factory: Any, tmp_path: Path
) -> None:
    """The review's bypass: an entry with --audit let the container start with no record."""
    entry = host.hook_entry()
    entry["args"] = [*entry["args"], "--audit"]
    out = tmp_path / "out"
    out.mkdir()
    mount = {"destination": "/out", "type": "bind", "source": str(out), "options": ["rbind"]}
    bundle = bundle_factory(
        ["/bin/touch", "/out/ran"], hooks={"createRuntime": [entry]}, mounts=[mount]
    )
    result = runc("run", "--bundle", str(bundle), f"mode-{uuid.uuid4().hex[:8]}")
    assert result.returncode != 0
    assert "the hook runs in audit mode, this host in enforce mode" in result.stderr
    assert not (out / "ran").exists()
    assert host.snapshot()[0] == []


def test_an_auditing_host_starts_what_it_cannot_measure_and_says_so(
    swtpm: Swtpm, bundle_factory: Any, tmp_path: Path
) -> None:
    (tmp_path / "host").mkdir()
    host = make_host(swtpm, tmp_path / "host", mode="audit")
    host.config.image_policy.parent.mkdir(parents=True, exist_ok=True)
    host.config.image_policy.write_text("allow_unencrypted = false\n")
    bundle = bundle_factory(hooks={"createRuntime": [host.hook_entry()]})
    host.agent.start()
    try:
        result = runc("run", "--bundle", str(bundle), f"audit-{uuid.uuid4().hex[:8]}")
        assert result.returncode == 0, result.stderr
        assert host.snapshot()[0] == []  # started, and unmeasured
        said = host.agent.output()  # runc shows a hook's output only when the hook fails
        assert "audit mode: container audit-" in said and "starts unmeasured" in said
        assert "unencrypted images are not allowed" in said
    finally:
        host.agent.stop()
