"""RFC 8785 canonical JSON."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trusthook.common.jcs import MAX_DEPTH, canonicalize, encode
from trusthook.errors import CanonicalizationError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # RFC 8785 appendix B and ECMAScript Number.prototype.toString cases
        (0.0, "0"),
        (-0.0, "0"),
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (1e-6, "0.000001"),
        (123456789012345680000.0, "123456789012345680000"),
        (4.5, "4.5"),
        (0.002, "0.002"),
        (333333333.3333333, "333333333.3333333"),
        (5e-324, "5e-324"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (-1.5e-9, "-1.5e-9"),
        (2**53 - 1, "9007199254740991"),
        (2**60, "1152921504606847000"),
    ],
)
def test_numbers(value: float, expected: str) -> None:
    assert canonicalize(value) == expected.encode()


def test_rfc8785_object_ordering_and_escapes() -> None:
    value = {"\u20ac": "Euro", "\r": "CR", "\ufb33": "H", "1": "One", "\U0001f600": "E", "\x80": 1}
    assert canonicalize(value).decode() == (
        '{"\\r":"CR","1":"One","\x80":1,"\u20ac":"Euro","\U0001f600":"E","\ufb33":"H"}'
    )
    assert canonicalize(['\x01\b\t\n\f\r"\\/']) == b'["\\u0001\\b\\t\\n\\f\\r\\"\\\\/"]'


@pytest.mark.parametrize(
    "bad", [math.nan, math.inf, -math.inf, "\ud800", {1: 2}, b"x", {"a": {1}}, 10**400]
)
def test_values_without_canonical_form_are_refused(bad: Any) -> None:
    with pytest.raises(CanonicalizationError):
        canonicalize(bad)


_text = st.text(alphabet=st.characters(exclude_categories=["Cs"]))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _text,
    lambda children: st.lists(children, max_size=5) | st.dictionaries(_text, children, max_size=5),
    max_leaves=30,
)


@given(json_values)
def test_canonical_form_is_a_fixed_point_and_parses_back(value: Any) -> None:
    once = canonicalize(value)
    assert canonicalize(json.loads(once)) == once
    # JSON does not keep int and float apart: "1e+21" is a float, "54914804347491570" an int
    assert json.loads(once, parse_int=float) == value


@given(st.dictionaries(st.text(max_size=4), st.integers(), max_size=8))
def test_key_order_does_not_matter(d: dict[str, int]) -> None:
    assert canonicalize(dict(reversed(list(d.items())))) == canonicalize(d)


_any_text = st.text()  # lone surrogates included: refused by both
_keys = st.text(max_size=3) | st.sampled_from(["a", "\ue000", "\U0001f600", "é", "\x7f", "\n"])
hostile_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # beyond 2**53 too: written as doubles
    | st.floats(allow_nan=False, allow_infinity=False)
    | _any_text,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children)
        | st.dictionaries(_keys, children, max_size=4)
    ),
    max_leaves=25,
)


def _outcome(f: Any, value: Any) -> bytes | str:
    try:
        return bytes(f(value))
    except CanonicalizationError as e:
        return f"refused: {e}"


@given(hostile_values)
def test_the_fast_path_writes_exactly_what_the_reference_encoder_writes(value: Any) -> None:
    """``canonicalize`` hands plain values to the json module's C encoder; ``encode`` is the
    value-by-value reference. Keys outside ASCII (U+E000 against U+1F600 sort differently by
    UTF-16 code unit than by code point), big integers, floats and lone surrogates included."""
    assert _outcome(canonicalize, value) == _outcome(encode, value)


def test_the_fast_path_keeps_the_depth_limit() -> None:
    deep: Any = "x"
    for _ in range(MAX_DEPTH):
        deep = [deep]
    assert canonicalize(deep) == encode(deep)
    with pytest.raises(CanonicalizationError, match="nested deeper"):
        canonicalize([deep])
