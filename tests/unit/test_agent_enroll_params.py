"""The agent checks an enroll request's parameters before it touches the TPM or the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trusthook.agent.service import parse_enroll_params
from trusthook.errors import RequestError

GOOD: dict[str, Any] = {
    "server": "https://verifier:8443",
    "server_ca": "/etc/trusthook/server-ca.pem",
    "hostname": "node-1",
    "group": "lab",
    "reenroll": False,
}


def test_good_params() -> None:
    assert parse_enroll_params(GOOD)["server_ca"] == Path("/etc/trusthook/server-ca.pem")


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        (None, "exactly the params"),
        ({**GOOD, "extra": 1}, "exactly the params"),
        ({k: v for k, v in GOOD.items() if k != "group"}, "exactly the params"),
        ({**GOOD, "hostname": ""}, "'hostname' must be a non-empty string"),
        ({**GOOD, "server": 5}, "'server' must be a non-empty string"),
        ({**GOOD, "reenroll": "yes"}, "'reenroll' must be true or false"),
        ({**GOOD, "server_ca": "ca.pem"}, "absolute path"),
    ],
)
def test_bad_params(params: Any, needle: str) -> None:
    with pytest.raises(RequestError, match=needle):
        parse_enroll_params(params)
