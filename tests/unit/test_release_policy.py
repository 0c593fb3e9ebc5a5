"""The server's key-release decisions without I/O: the launch record, the rules, the unwrap."""

from __future__ import annotations

import json

import pytest
from jwcrypto import jwk

from trusthook.common.eventlog import LaunchEvent, Record
from trusthook.errors import AttestationError
from trusthook.image.cipher import PrivateOptions, PublicOptions
from trusthook.image.keywrap import Recipient, wrap
from trusthook.image.model import ANNOTATION_JWE, ANNOTATION_PUBOPTS
from trusthook.server.config import ReleaseRule
from trusthook.server.release import check_policy, find_launch, unwrap_layers

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


def test_release_rules_need_the_image_the_group_and_an_allowed_profile() -> None:
    launch = _record(1).event
    rule = ReleaseRule(image=IMAGE, groups=frozenset({"lab"}), launch_profiles=frozenset())
    check_policy([rule], IMAGE, "lab", launch)
    with pytest.raises(AttestationError, match="no release rule lets host group 'prod'"):
        check_policy([rule], IMAGE, "prod", launch)
    with pytest.raises(AttestationError, match="no release rule"):
        check_policy([rule], "sha256:" + "e" * 64, "lab", launch)
    with pytest.raises(AttestationError, match="no release rule"):
        check_policy([], IMAGE, "lab", launch)
    pinned = ReleaseRule(
        image=IMAGE, groups=frozenset({"lab"}), launch_profiles=frozenset({DIGEST})
    )
    with pytest.raises(AttestationError, match="does not allow this launch profile") as e:
        check_policy([pinned], IMAGE, "lab", launch)
    assert (e.value.check, e.value.got) == ("policy", PROFILE)


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
