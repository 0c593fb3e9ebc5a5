"""RFC 8785 JSON Canonicalization Scheme (JCS). Pure, standard library only.

Numbers follow RFC 8785 section 3.2.2.3 (ECMAScript ``Number.prototype.toString``): integers
are exact below 2**53 in magnitude; larger integers and all floats are rendered as the IEEE 754
double nearest to them, exactly as JCS requires. Values nested deeper than ``MAX_DEPTH``
are refused (``CanonicalizationError``), as a lone surrogate or a NaN is.
"""

from __future__ import annotations

import json
import math
from json.encoder import encode_basestring
from typing import Any

from trusthook.errors import CanonicalizationError

_LITERALS = {None: "null", True: "true", False: "false"}
MAX_DEPTH = 128  # arrays and objects nested deeper have no canonical form here (recursion)
_EXACT = 2**53  # integers below this in magnitude are written as their decimal digits


def _string(s: str) -> str:
    # The json module's C string encoder escapes exactly what RFC 8785 3.2.2.2 asks: the two
    # characters '"' and '\\', \b \t \n \f \r by name, other controls as lowercase \u00xx,
    # and nothing else. It passes lone surrogates through, which JCS forbids.
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(s[e.start])
        raise CanonicalizationError(f"string contains a lone surrogate U+{code:04X}") from None
    return encode_basestring(s)


def _number(x: float) -> str:
    if math.isnan(x) or math.isinf(x):
        raise CanonicalizationError(f"{x} has no JSON representation")
    if x == 0:
        return "0"
    sign = "-" if x < 0 else ""
    # repr gives the shortest digit string that round-trips, as ECMAScript requires.
    mantissa, _, exp_text = repr(abs(x)).partition("e")
    int_part, _, frac_part = mantissa.partition(".")
    raw = int_part + frac_part
    # n: where the decimal point sits relative to the first significant digit (ECMA-262 7.1.12.1)
    n = len(int_part) + int(exp_text or 0)
    significant = raw.lstrip("0")
    n -= len(raw) - len(significant)
    digits = significant.rstrip("0")
    k = len(digits)
    if k <= n <= 21:
        body = digits + "0" * (n - k)
    elif 0 < n <= 21:
        body = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        body = "0." + "0" * (-n) + digits
    else:
        e = n - 1
        exp = f"e{'+' if e >= 0 else '-'}{abs(e)}"
        body = digits + exp if k == 1 else digits[0] + "." + digits[1:] + exp
    return sign + body


def _as_double(value: int) -> float:
    try:
        return float(value)
    except OverflowError:
        raise CanonicalizationError(
            f"integer {str(value)[:20]}... is beyond IEEE 754 range"
        ) from None


def _array(value: list[Any] | tuple[Any, ...], out: list[str], depth: int) -> None:
    out.append("[")
    for i, item in enumerate(value):
        if i:
            out.append(",")
        _encode(item, out, depth)
    out.append("]")


def _object(value: dict[Any, Any], out: list[str], depth: int) -> None:
    for key in value:
        if not isinstance(key, str):
            raise CanonicalizationError(f"object key {key!r} is not a string")
    out.append("{")
    # RFC 8785 3.2.3: members sorted by their names as arrays of UTF-16 code units
    for i, key in enumerate(sorted(value, key=lambda k: k.encode("utf-16-be", "surrogatepass"))):
        if i:
            out.append(",")
        out.append(_string(key))
        out.append(":")
        _encode(value[key], out, depth)
    out.append("}")


def _encode(value: Any, out: list[str], depth: int) -> None:
    if value is None or isinstance(value, bool):
        out.append(_LITERALS[value])
    elif isinstance(value, int):
        out.append(str(value) if abs(value) < 2**53 else _number(_as_double(value)))
    elif isinstance(value, float):
        out.append(_number(value))
    elif isinstance(value, str):
        out.append(_string(value))
    elif isinstance(value, list | tuple | dict) and depth >= MAX_DEPTH:
        raise CanonicalizationError(f"value is nested deeper than {MAX_DEPTH} arrays or objects")
    elif isinstance(value, list | tuple):
        _array(value, out, depth + 1)
    elif isinstance(value, dict):
        _object(value, out, depth + 1)
    else:
        raise CanonicalizationError(f"{type(value).__name__} is not a JSON type")


def _plain(value: Any, depth: int) -> bool:
    """Whether the json module writes ``value`` exactly as JCS does, so that its C encoder can
    (``canonicalize``): strings (the same escapes, ``_string``), booleans, null, integers
    written exactly, and arrays and objects of them, within ``MAX_DEPTH``, whose keys are ASCII
    (sorted by code point, as by UTF-16 code unit). Not floats: ``repr`` is not ECMAScript's
    number form. A lone surrogate passes here and fails the UTF-8 encoding after."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return True
    if kind is int:
        return -_EXACT < int(value) < _EXACT
    if depth >= MAX_DEPTH:
        return False
    if kind is dict:
        return all(
            type(k) is str and k.isascii() and _plain(v, depth + 1) for k, v in value.items()
        )
    if kind is list or kind is tuple:
        return all(_plain(v, depth + 1) for v in value)
    return False


def canonicalize(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of a parsed JSON value."""
    if _plain(value, 0):  # the common case, about three times faster (test_jcs.py: the same)
        text = json.dumps(
            value, ensure_ascii=False, sort_keys=True, separators=(",", ":"), check_circular=False
        )
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            pass  # a lone surrogate: the encoder below says where
    return encode(value)


def encode(value: Any) -> bytes:
    """``canonicalize`` value by value, for every JSON value (the reference)."""
    out: list[str] = []
    _encode(value, out, 0)
    return "".join(out).encode("utf-8")
