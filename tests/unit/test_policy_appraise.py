"""A launch appraised against the manifest (policy/appraise.py), purely: which workload it is,
and each rule it breaks as one ``workload`` reason with expected and got."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trusthook.common.eventlog import RELEASE_STAGE, Identity, LaunchEvent
from trusthook.common.oci import identity_of, image_of
from trusthook.errors import StateError
from trusthook.policy.appraise import (
    HostPlace,
    _complies,
    _reasons,
    appraise_launch,
    identity_text,
)
from trusthook.policy.manifest import Action, Manifest, parse_manifest

IMAGE, ROOTFS, PROFILE = ("sha256:" + c * 64 for c in "abc")
OTHER = "sha256:" + "d" * 64
HERE = HostPlace(group="payments", attributes={"country": "DE", "zone": "core"})


def manifest(extra: str = "", unknown: str = "audit") -> Manifest:
    return parse_manifest(
        (
            f'format = 1\n[defaults]\nunknown_launch = "{unknown}"\n'
            '[[workload]]\nname = "payments/api"\nmatch = ["payments/api-*"]\n'
            f'images = ["{IMAGE}"]\nrootfs = ["{ROOTFS}"]\nlaunch_profiles = ["{PROFILE}"]\n'
            'groups = ["payments"]\nplacement = ["country in [DE, FR]", "zone != dmz"]\n' + extra
        ).encode(),
        "p.toml",
    )


def launch(**changes: object) -> LaunchEvent:
    event = LaunchEvent(
        container_id="c1",
        bundle="/run/b",
        image_reference="registry.example/api:3",
        image_digest=IMAGE,
        rootfs_digest=ROOTFS,
        rootfs_entries=10,
        config_digest=OTHER,
        launch_profile_digest=PROFILE,
        stage="createRuntime",
        time="2026-12-02T00:00:00.000000Z",
        boot_id="b",
        identity=Identity(workload="payments/api-7"),
        encrypted=False,
    )
    return replace(event, **changes)  # type: ignore[arg-type]


def test_a_compliant_launch() -> None:
    result = appraise_launch(manifest(), launch(), HERE)
    assert result.workload == "payments/api" and result.compliant and not result.untrusts


@pytest.mark.parametrize(
    ("changes", "host", "message", "expected", "got"),
    [
        ({"image_digest": OTHER}, HERE, "its image is not one", IMAGE, OTHER),
        ({"image_digest": None}, HERE, "its image is not one", IMAGE, "no image digest (the"),
        ({"rootfs_digest": OTHER}, HERE, "its root filesystem is not one", ROOTFS, OTHER),
        ({"launch_profile_digest": OTHER}, HERE, "its launch profile", PROFILE, OTHER),
        ({}, replace(HERE, group="lab"), "the host's group", "payments", "lab"),
        (
            {},
            replace(HERE, attributes={"country": "US", "zone": "core"}),
            "placement 'country in [DE, FR]': the host's country is US",
            "country in [DE, FR]",
            "country = US",
        ),
        (
            {},
            replace(HERE, attributes={"country": "DE"}),
            "placement 'zone != dmz': the host's zone is not set",
            "zone != dmz",
            "zone not set",
        ),
    ],
)
def test_each_rule_broken_is_one_reason(
    changes: dict[str, object], host: HostPlace, message: str, expected: str, got: str
) -> None:
    result = appraise_launch(manifest(), launch(**changes), host)
    (reason,) = result.reasons
    assert reason.check == "workload" and result.workload == "payments/api"
    assert reason.message.startswith("container c1 of workload payments/api: ")
    assert message in reason.message and reason.expected == expected
    assert (reason.got or "").startswith(got)
    assert result.untrusts and result.action is Action.UNTRUST


def test_encryption_required_and_every_failure_reported() -> None:
    result = appraise_launch(
        manifest('encryption = "required"\nviolation = "audit"\n'),
        launch(encrypted=False, rootfs_digest=OTHER),
        replace(HERE, group="lab"),
    )
    assert [r.message.split(": ", 1)[1][:20] for r in result.reasons] == [
        "its root filesystem ",
        "it must run from an ",
        "the host's group is ",
    ]
    assert not result.compliant and not result.untrusts  # violation = "audit"
    assert appraise_launch(
        manifest('encryption = "required"\n'), launch(encrypted=True), HERE
    ).compliant


def test_unknown_launches_follow_unknown_launch() -> None:
    stranger = launch(identity=Identity(workload="shop/web"), image_digest=OTHER)
    audited = appraise_launch(manifest(), stranger, HERE)
    assert audited.workload is None and not audited.compliant and not audited.untrusts
    assert audited.reasons[0].message == (
        "container c1 (identity shop/web) is no workload of the policy manifest"
    )
    assert appraise_launch(manifest(unknown="untrust"), stranger, HERE).untrusts
    by_image = appraise_launch(manifest(), launch(identity=None), HERE)  # a version 1 record
    assert by_image.workload == "payments/api" and by_image.compliant


def test_identity_precedence() -> None:
    assert identity_text(Identity(workload="w", kubernetes=("ns", "pod", "c"))) == "w"
    assert identity_text(Identity(kubernetes=("ns", "pod", "c"))) == "ns/pod/c"
    assert identity_text(Identity()) is None and identity_text(None) is None


@pytest.mark.parametrize(
    ("annotations", "text"),
    [
        ({"org.trusthook.workload": "shop/web", "io.kubernetes.pod.name": "p"}, "shop/web"),
        (
            {
                "io.kubernetes.pod.namespace": "shop",
                "io.kubernetes.pod.name": "web-5d8f",
                "io.kubernetes.container.name": "web",
            },
            "shop/web-5d8f/web",
        ),
        (
            {
                "io.kubernetes.cri.sandbox-namespace": "shop",
                "io.kubernetes.cri.sandbox-name": "web-5d8f",
                "io.kubernetes.cri.container-type": "sandbox",
            },
            "shop/web-5d8f/POD",
        ),
        ({"io.kubernetes.pod.name": "web-5d8f"}, None),  # no namespace: no identity
        ({"io.container.manager": "libpod"}, None),
    ],
)
def test_identity_from_the_engines_annotations(
    annotations: dict[str, str], text: str | None
) -> None:
    assert identity_text(identity_of(annotations)) == text


@pytest.mark.parametrize(
    ("key", "limit"),
    [
        ("org.trusthook.workload", 253),
        ("io.kubernetes.pod.name", 253),
        ("io.kubernetes.container.name", 253),
        ("org.opencontainers.image.ref.name", 1024),
        ("org.opencontainers.image.digest", 253),
    ],
)
@pytest.mark.parametrize("char", ["r", "\u00e9"])  # one byte, two bytes
def test_an_annotation_too_long_for_a_record_is_refused_naming_it(
    key: str, limit: int, char: str
) -> None:
    def annotations(value: str) -> dict[str, str]:
        return {"io.kubernetes.pod.namespace": "shop", "io.kubernetes.pod.name": "web", key: value}

    fits = char * (limit // len(char.encode()))
    kept = f"{identity_text(identity_of(annotations(fits)))} {image_of(annotations(fits))}"
    assert fits in kept
    over = fits + char
    size = len(over.encode())
    message = f"^state JSON: annotation {key} is {size} bytes, expected at most {limit}$"
    with pytest.raises(StateError, match=message):
        identity_of(annotations(over))
        image_of(annotations(over))


DIGESTS = st.sampled_from([IMAGE, ROOTFS, PROFILE, OTHER])


@given(
    image=st.none() | DIGESTS,
    rootfs=DIGESTS,
    profile=DIGESTS,
    encrypted=st.booleans(),
    stage=st.sampled_from(["createRuntime", RELEASE_STAGE]),
    group=st.sampled_from(["payments", "lab", None]),
    country=st.sampled_from(["DE", "US", None]),
    zone=st.sampled_from(["core", "dmz", None]),
    extra=st.sampled_from(["", 'encryption = "required"\n']),
)
def test_the_fast_path_agrees_with_the_reasons(
    image: str | None,
    rootfs: str,
    profile: str,
    encrypted: bool,
    stage: str,
    group: str | None,
    country: str | None,
    zone: str | None,
    extra: str,
) -> None:
    """``_complies`` (no reason built) is true exactly when ``_reasons`` finds none."""
    (workload,) = manifest(extra).workloads
    event = launch(
        image_digest=image,
        rootfs_digest=rootfs,
        launch_profile_digest=profile,
        encrypted=encrypted,
        stage=stage,
    )
    attributes = {k: v for k, v in (("country", country), ("zone", zone)) if v is not None}
    host = HostPlace(group=group, attributes=attributes)
    assert _complies(workload, event, host) == (not _reasons(workload, event, host))
