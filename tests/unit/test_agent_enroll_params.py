"""The agent checks an enroll request's parameters before it touches the TPM or the network."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from trusthook.common.messages import EnrollParams
from trusthook.errors import RequestError

GOOD: dict[str, Any] = {
    "server": "https://verifier:8443",
    "server_ca": "/etc/trusthook/server-ca.pem",
    "hostname": "node-1",
    "note": "",
    "reenroll": False,
}


def test_good_params() -> None:
    params = EnrollParams.from_json(GOOD)
    assert params.server_ca == Path("/etc/trusthook/server-ca.pem")
    assert params.to_json() == GOOD


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        (None, "got null, expected an object"),
        ({**GOOD, "extra": 1}, "got member 'extra', expected only hostname, note, reenroll"),
        ({**GOOD, "group": "lab"}, "got member 'group', expected only hostname, note"),
        ({k: v for k, v in GOOD.items() if k != "note"}, "note got nothing, expected"),
        ({**GOOD, "hostname": ""}, "hostname got '', expected a non-empty string"),
        ({**GOOD, "server": 5}, "server got 5, expected a non-empty string"),
        ({**GOOD, "reenroll": "yes"}, "reenroll got 'yes', expected true or false"),
        ({**GOOD, "server_ca": "ca.pem"}, "server_ca got 'ca.pem', expected an absolute path"),
    ],
)
def test_bad_params(params: Any, needle: str) -> None:
    with pytest.raises(RequestError, match=f"^the enroll request is malformed: {needle}"):
        EnrollParams.from_json(params)
