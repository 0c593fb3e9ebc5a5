"""The server's key-release decisions without I/O: the launch record, the rules (an empty
`launch_profiles` releases nothing, `["any"]` anything), the unwrap."""

from __future__ import annotations

import json
from typing import Any

import pytest
from jwcrypto import jwk

from trusthook.common.eventlog import LaunchEvent, Record
from trusthook.errors import AttestationError, ConfigError
from trusthook.image.cipher import PrivateOptions, PublicOptions
from trusthook.image.keywrap import Recipient, wrap
from trusthook.image.model import ANNOTATION_JWE, ANNOTATION_PUBOPTS
from trusthook.server.config import ReleaseRule, parse_server_config
from trusthook.server.release import check_policy, find_launch, rule_warnings, unwrap_layers

IMAGE = "sha256:" + "a" * 64
PROFILE = "sha256:" + "b" * 64
DIGEST = "sha256:" + "c" * 64


def _record(recnum: int, image: str | None = IMAGE) -> Record:
    event = LaunchEvent(
        container_id="c1",
        bundle="/b",
        image_reference=None,
        image_digest=image,
        rootfs_digest=DIGEST,
        rootfs_entries=3,
        config_digest=DIGEST,
        launch_profile_digest=PROFILE,
        stage="release",
        time="2026-11-28T00:00:00Z",
        boot_id="boot",
    )
    return Record.for_event(recnum=recnum, pcr=23, event=event)


def test_the_launch_record_must_be_among_the_verified_ones_and_for_the_image() -> None:
    events = [_record(4), _record(5)]
    assert find_launch(events, 5, IMAGE).container_id == "c1"
    with pytest.raises(AttestationError, match="not among the records verified") as e:
        find_launch(events, 3, IMAGE)
    assert (e.value.check, e.value.got) == ("launch_event", "records 4..5")
    with pytest.raises(AttestationError, match="for another image"):
        find_launch([_record(4, "sha256:" + "d" * 64)], 4, IMAGE)
    with pytest.raises(AttestationError, match="for another image"):
        find_launch([_record(4, None)], 4, IMAGE)


def _rule(index: int, profiles: frozenset[str], *, any_profile: bool = False) -> ReleaseRule:
    return ReleaseRule(
        name=f"release[{index}]",
        image=IMAGE,
        groups=frozenset({"lab"}),
        launch_profiles=profiles,
        any_profile=any_profile,
    )


def test_release_rules_need_the_image_and_the_group() -> None:
    launch = _record(1).event
    rule = _rule(0, frozenset({PROFILE}))
    assert check_policy([rule], IMAGE, "lab", launch) is rule
    with pytest.raises(AttestationError, match="no release rule lets host group 'prod'"):
        check_policy([rule], IMAGE, "prod", launch)
    with pytest.raises(AttestationError, match="no release rule"):
        check_policy([rule], "sha256:" + "e" * 64, "lab", launch)
    with pytest.raises(AttestationError, match="no release rule"):
        check_policy([], IMAGE, "lab", launch)


def test_a_rule_that_lists_no_launch_profile_releases_nothing() -> None:
    with pytest.raises(AttestationError, match=r"release rule release\[0\] lists no launch") as e:
        check_policy([_rule(0, frozenset())], IMAGE, "lab", _record(1).event)
    assert (e.value.check, e.value.expected, e.value.got) == (
        "policy",
        "no launch profile",
        PROFILE,
    )


def test_a_rule_allows_the_listed_profiles_or_explicitly_any() -> None:
    launch = _record(1).event
    pinned = _rule(0, frozenset({DIGEST, "sha256:" + "f" * 64}))
    with pytest.raises(AttestationError, match="does not allow this launch profile") as e:
        check_policy([pinned], IMAGE, "lab", launch)
    assert "release[0]" in e.value.message
    assert DIGEST not in e.value.message and PROFILE not in e.value.message  # the host reads it
    assert (e.value.check, e.value.got) == ("policy", PROFILE)
    assert e.value.expected == f"{DIGEST}, sha256:{'f' * 64}"  # for operators
    anything = _rule(1, frozenset(), any_profile=True)
    assert check_policy([pinned, anything], IMAGE, "lab", launch) is anything
    allowing = _rule(2, frozenset({PROFILE}))
    assert check_policy([pinned, allowing], IMAGE, "lab", launch) is allowing
    with pytest.raises(AttestationError, match=r"release\[0\], release\[3\] does not"):
        check_policy([pinned, _rule(3, frozenset())], IMAGE, "lab", launch)


def test_start_up_warnings_name_the_rules_that_allow_any_profile_or_none() -> None:
    rules = [_rule(0, frozenset({PROFILE})), _rule(1, frozenset(), any_profile=True)]
    (warning,) = rule_warnings(rules)
    assert warning.startswith(f"release[1] (image {IMAGE}) allows any launch profile")
    (warning,) = rule_warnings([_rule(4, frozenset())])
    assert warning == f"release[4] (image {IMAGE}) lists no launch profile: it releases nothing"


@pytest.mark.parametrize(
    ("listed", "profiles", "any_profile"),
    [
        (["any"], frozenset(), True),
        ([], frozenset(), False),
        ([PROFILE, DIGEST], frozenset({PROFILE, DIGEST}), False),
    ],
)
def test_launch_profiles_parse_as_digests_or_an_explicit_any(
    listed: list[str], profiles: frozenset[str], any_profile: bool
) -> None:
    (rule,) = parse_server_config(_server_config(listed)).releases
    assert (rule.name, rule.launch_profiles, rule.any_profile) == (
        "release[0]",
        profiles,
        any_profile,
    )


@pytest.mark.parametrize("listed", [["any", PROFILE], ["ANY"], ["*"], [""], [1]])
def test_anything_else_in_launch_profiles_is_refused(listed: list[Any]) -> None:
    with pytest.raises(ConfigError, match=r'release\[0\].launch_profiles: got .*, or \["any"\]'):
        parse_server_config(_server_config(listed))


def _server_config(profiles: list[Any]) -> dict[str, Any]:
    return {
        "groups": {"lab": {}},
        "release": [{"image": IMAGE, "groups": ["lab"], "launch_profiles": profiles}],
    }


def _manifest(annotations: dict[str, str], media_type: str) -> bytes:
    return json.dumps(
        {
            "schemaVersion": 2,
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": DIGEST,
                "size": 2,
            },
            "layers": [
                {"mediaType": media_type, "digest": IMAGE, "size": 9, "annotations": annotations}
            ],
        }
    ).encode()


def test_unwrap_uses_any_server_key_and_names_a_layer_it_cannot_open() -> None:
    server_key = jwk.JWK.generate(kty="EC", crv="P-256")
    public = jwk.JWK.from_json(server_key.export_public())
    options = PrivateOptions.generate(DIGEST)
    annotations = {
        ANNOTATION_JWE: wrap(options.to_json(), [Recipient(key=public, alg="ECDH-ES+A256KW")]),
        ANNOTATION_PUBOPTS: PublicOptions(hmac=b"h" * 32).to_annotation(),
    }
    manifest = _manifest(annotations, "application/vnd.oci.image.layer.v1.tar+gzip+encrypted")
    other = jwk.JWK.generate(kty="RSA", size=2048)
    released = unwrap_layers(manifest, [other, server_key])
    assert PrivateOptions.from_json(released[IMAGE]) == options
    with pytest.raises(AttestationError, match="none of the 1 decryption key") as e:
        unwrap_layers(manifest, [other])
    assert e.value.check == "unwrap"


def test_a_manifest_without_encrypted_layers_or_malformed_is_refused() -> None:
    plain = _manifest({}, "application/vnd.oci.image.layer.v1.tar")
    with pytest.raises(AttestationError, match="no encrypted layers"):
        unwrap_layers(plain, [])
    with pytest.raises(AttestationError, match="not valid JSON") as e:
        unwrap_layers(b"{", [])
    assert e.value.check == "manifest"
