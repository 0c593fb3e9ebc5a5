"""The workload policy manifest (policy/manifest.py, policy/selector.py): the shipped example
parses, its digest names its meaning, every mistake is refused with the line it is on, and
placement selectors say which host they admit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trusthook.errors import PolicyError
from trusthook.policy.manifest import (
    Action,
    Encryption,
    Manifest,
    Workload,
    changes,
    parse_manifest,
)
from trusthook.policy.selector import Op, SelectorError, parse_selector

EXAMPLE = Path(__file__).parents[2] / "oci-config" / "trusthook-policy.toml"
IMAGE = "sha256:" + "ab" * 32
OTHER = "sha256:" + "cd" * 32


def example() -> str:
    return EXAMPLE.read_text()


def parse(text: str) -> Manifest:
    return parse_manifest(text.encode(), "policy.toml")


def test_the_shipped_example_parses() -> None:
    m = parse(example())
    assert m.unknown_launch is Action.AUDIT and m.violation is Action.UNTRUST
    payments, batch = m.workloads
    assert payments.name == "payments/api" and payments.encryption is Encryption.REQUIRED
    assert [s.text for s in payments.placement] == [
        "country in [DE, FR]",
        "zone != dmz",
        "pci = true",
    ]
    assert payments.groups == {"payments"} and not payments.restore
    assert batch.violation is Action.AUDIT and batch.encryption is Encryption.OPTIONAL
    assert payments.line == example().splitlines().index("[[workload]]") + 1


def test_the_digest_names_the_meaning_not_the_text() -> None:
    base = parse(example())
    reformatted = parse("# another comment\n" + example().replace('["payments"]', '[ "payments" ]'))
    assert reformatted.digest == base.digest
    changed = parse(example().replace("zone != dmz", "zone != lab"))
    assert changed.digest != base.digest
    assert changes(base, changed) == [
        "workload 'payments/api': placement: ['country in [DE, FR]', 'zone != dmz',"
        " 'pci = true'] -> ['country in [DE, FR]', 'zone != lab', 'pci = true']"
    ]
    assert changes(base, reformatted) == []


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize(
    ("old", "new", "needle", "message"),
    [
        ("format = 1", "format = 2", "format = 2", "format got 2, expected format = 1"),
        ("unknown_launch =", "unknown_lunch =", "unknown_lunch", "unknown key 'unknown_lunch'"),
        ('violation = "untrust"', 'violation = "deny"', '"deny"', 'expected "audit" or'),
        ("restore = false", 'restore = "no"', 'restore = "no"', "restore got 'no', expected true"),
        ('"payments-api"', '"payments api"', '"payments api"', "match pattern 'payments api'"),
        ('encryption = "required"', 'encryption = "yes"', '"yes"', "encryption got 'yes'"),
        ('groups = ["payments"]', 'groups = ["pay ments"]', "pay ments", "is not a host group"),
        ("zone != dmz", "zone <> dmz", "zone <> dmz", "placement 'zone <> dmz': expected KEY"),
        ("country in [DE, FR]", "country in []", "country in []", "the list is empty"),
        ("[DE, FR]", "[DE, DE]", "[DE, DE]", "names a value twice"),
        ("5e6f708192a3b4c5d6e7f8091a2b3c4d5", "5e6f7", "5e6f7", "is not a digest"),
        ('name = "batch/reports"', 'name = "payments/api"', 'name = "payments/api"', "twice"),
        ('name = "batch/reports"', 'name = "Batch Reports"', "Batch Reports", "workload name"),
        ('name = "batch/reports"', 'nme = "batch/reports"', 'nme = "batch', "unknown key 'nme'"),
    ],
)
def test_each_mistake_is_refused_with_its_line(
    old: str, new: str, needle: str, message: str
) -> None:
    text = example().replace(old, new, 1)
    assert text != example()
    with pytest.raises(PolicyError) as refused:
        parse(text)
    where = f"policy.toml:{line_of(text, needle)}: "
    if "twice (first" in str(refused.value) or "defined twice" in str(refused.value):
        where = f"policy.toml:{text.splitlines().index('[[workload]]', 13) + 1}: "
    assert str(refused.value).startswith(where), str(refused.value)
    assert message in str(refused.value)


def test_a_workload_needs_images_or_rootfs_and_syntax_errors_have_lines() -> None:
    with pytest.raises(PolicyError, match=r"policy.toml:2: workload 'w': list its images"):
        parse('format = 1\n[[workload]]\nname = "w"\n')
    with pytest.raises(PolicyError, match=r"not valid TOML: .*line 2"):
        parse('format = 1\nname = = "w"\n')
    with pytest.raises(PolicyError, match="not UTF-8"):
        parse_manifest(b"format = 1\n#\xff\n", "policy.toml")


def test_a_launch_is_the_workload_its_identity_matches_else_the_one_its_image_is() -> None:
    m = parse(
        "format = 1\n"
        f'[[workload]]\nname = "web"\nmatch = ["shop/web-*"]\nimages = ["{IMAGE}"]\n'
        f'[[workload]]\nname = "db"\nimages = ["{OTHER}", "{IMAGE}"]\n'
    )

    def name(found: Workload | None) -> str | None:
        return None if found is None else found.name

    assert name(m.workload("shop/web-7f9c/web", None)) == "web"
    assert name(m.workload("db", IMAGE)) == "db"
    assert name(m.workload("unnamed", IMAGE)) == "web"
    assert name(m.workload(None, OTHER)) == "db"
    assert m.workload("unnamed", "sha256:" + "00" * 32) is None


@pytest.mark.parametrize(
    ("text", "attributes", "holds"),
    [
        ("country in [DE, FR]", {"country": "DE"}, True),
        ("country in [DE, FR]", {"country": "US"}, False),
        ("country in [DE, FR]", {}, False),
        ("country not in [US]", {"country": "DE"}, True),
        ("country not in [US]", {}, False),  # unassigned is not "elsewhere"
        ("zone != dmz", {"zone": "core"}, True),
        ("zone != dmz", {"zone": "dmz"}, False),
        ("zone != dmz", {}, False),
        ("pci = true", {"pci": "true"}, True),
        ("pci == true", {"pci": "false"}, False),
        ("rack", {"rack": "r12"}, True),
        ("rack", {}, False),
        ("!quarantine", {}, True),
        ("!quarantine", {"quarantine": ""}, False),
        ('site in ["Frankfurt am Main", Paris]', {"site": "Frankfurt am Main"}, True),
    ],
)
def test_selectors(text: str, attributes: dict[str, str], holds: bool) -> None:
    selector = parse_selector(text)
    assert selector.holds(attributes) is holds
    assert parse_selector(selector.text) == selector  # the canonical text means the same


def test_a_failed_selector_explains_itself() -> None:
    selector = parse_selector("country in [DE, FR]")
    assert selector.op is Op.IN
    assert selector.explain({"country": "US"}) == (
        "placement 'country in [DE, FR]': the host's country is US"
    )
    assert selector.explain({}) == "placement 'country in [DE, FR]': the host's country is not set"


@given(st.text(max_size=60))
def test_selector_text_is_a_selector_or_a_selector_error(text: str) -> None:
    try:
        selector = parse_selector(text)
    except SelectorError:
        return
    assert parse_selector(selector.text) == selector


PATTERNS = st.sampled_from(["shop/*", "shop/web-?", "shop/web-1", "db", "*", "[ab]*", "x*y*z"])


@given(
    st.lists(st.lists(PATTERNS, min_size=1, max_size=3, unique=True), min_size=1, max_size=6),
    st.sampled_from(["shop/web-1", "shop/web-22", "db", "axyz", "bz", "other", "xqyqz"]),
)
def test_the_index_finds_what_a_scan_in_order_finds(
    matches: list[list[str]], identity: str
) -> None:
    text = "format = 1\n" + "".join(
        f'[[workload]]\nname = "w{i}"\nmatch = {json.dumps(m)}\nimages = ["{IMAGE}"]\n'
        for i, m in enumerate(matches)
    )
    m = parse(text)
    scanned = next((w for w in m.workloads if w.matches(identity)), None)
    assert m.workload(identity, None) == scanned
    assert m.workload(identity, IMAGE) == (scanned or m.workloads[0])
