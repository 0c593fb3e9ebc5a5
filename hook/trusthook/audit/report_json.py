"""The JSON report, the reference form of a compliance report: the model's members by the same
names, RFC 8785 canonical bytes (docs/reports.md, "JSON"), so that a report recomputed from
the same bundle and parameters is the same bytes. ``report_from_json`` reads one back and
refuses anything but the documented shape. Pure, standard library only.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Mapping
from enum import StrEnum
from functools import cache
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

from trusthook.audit.report_model import FORMAT, Report
from trusthook.common.jcs import canonicalize
from trusthook.errors import AuditLogError

_T = TypeVar("_T")


def report_to_json(report: Report) -> dict[str, Any]:
    """The report as a JSON value."""
    return {f.name: _encode(getattr(report, f.name)) for f in dataclasses.fields(report)}


def render_json(report: Report) -> bytes:
    """The report's canonical JSON (RFC 8785), UTF-8."""
    return canonicalize(report_to_json(report))


def _encode(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, StrEnum):
        return value.value
    if isinstance(value, tuple | list):
        return [_encode(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    return value


def report_from_json(raw: bytes | str) -> Report:
    """The report in a JSON report's text; AuditLogError naming the first member that is not
    as documented."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise AuditLogError(f"report is not valid JSON: {e}") from None
    if isinstance(data, dict) and data.get("format") != FORMAT:
        got = str(data.get("format"))[:40]
        raise AuditLogError(f"report format got {got!r}, expected {FORMAT!r}")
    report: Report = _decode(Report, data, "report")
    return report


@cache
def _hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _decode(tp: Any, value: object, where: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        options = get_args(tp)
        if value is None and type(None) in options:
            return None
        (inner,) = (t for t in options if t is not type(None))
        return _decode(inner, value, where)
    if origin is tuple:
        items = _typed(list, value, where, "an array")
        return tuple(_decode(get_args(tp)[0], v, f"{where}[{i}]") for i, v in enumerate(items))
    if origin is Mapping:
        obj = _typed(dict, value, where, "an object")
        return {k: _decode(get_args(tp)[1], v, f"{where}.{k}") for k, v in obj.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        obj = _typed(dict, value, where, "an object")
        hints = _hints(tp)
        names = [f.name for f in dataclasses.fields(tp)]
        for name in names:
            if name not in obj:
                raise AuditLogError(f"{where}.{name} got nothing, expected a member")
        extra = sorted(set(obj) - set(names))
        if extra:
            raise AuditLogError(f"{where} got member {extra[0][:40]!r}, expected none")
        return tp(**{n: _decode(hints[n], obj[n], f"{where}.{n}") for n in names})
    return _scalar(tp, value, where)


def _scalar(tp: Any, value: object, where: str) -> Any:
    if isinstance(tp, type) and issubclass(tp, StrEnum):
        choices = {m.value: m for m in tp}
        if not isinstance(value, str) or value not in choices:
            raise AuditLogError(f"{where} got {value!r:.40}, expected one of {', '.join(choices)}")
        return choices[value]
    if tp is bool:
        return _typed(bool, value, where, "true or false")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise AuditLogError(f"{where} got {value!r:.40}, expected an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise AuditLogError(f"{where} got {value!r:.40}, expected a number")
        return float(value)
    return _typed(str, value, where, "a string")


def _typed(kind: type[_T], value: object, where: str, expected: str) -> _T:
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise AuditLogError(f"{where} got {value!r:.40}, expected {expected}")
    return value
