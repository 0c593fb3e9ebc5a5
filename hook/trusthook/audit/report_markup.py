"""The HTML report's markup: escaping (every string from the log, in text and in attributes),
the coloured state labels, and tables whose rows carry ``data-`` attributes (docs/reports.md,
"HTML"). Pure, standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape

from trusthook.audit.report_model import MoveKind, Reason, TrustState
from trusthook.audit.report_svg import MOVE_COLOURS, STATE_COLOURS


class Html(str):
    """Markup made here, not to be escaped again."""

    __slots__ = ()


def esc(value: object) -> str:
    if isinstance(value, Html):
        return value
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return escape(str(value), quote=True)


def mono(value: object) -> Html:
    return Html(f'<span class="mono">{esc(value)}</span>') if value is not None else Html("")


def state_label(state: TrustState | None, label: str | None = None) -> Html:
    if state is None:
        return Html('<span class="state" style="background:#777">unknown</span>')
    colour = STATE_COLOURS[state]
    text = label or state.value
    return Html(
        f'<span class="state" style="background:{colour}" data-state="{state.value}">'
        f"{esc(text)}</span>"
    )


def verdict_label(trusted: bool | None) -> Html:
    if trusted is None:
        return state_label(None)
    return state_label(TrustState.TRUSTED if trusted else TrustState.UNTRUSTED)


def compliance_label(compliant: bool | None) -> Html:
    if compliant is None:
        return Html('<span class="state" style="background:#777">no policy</span>')
    if compliant:
        return state_label(TrustState.TRUSTED, "compliant")
    return state_label(TrustState.UNTRUSTED, "not compliant")


def move_label(move: MoveKind | None) -> Html:
    if move is None:
        return Html("")
    colour = MOVE_COLOURS.get(move, "#777")
    return Html(
        f'<span class="state" style="background:{colour}" data-move="{move.value}">'
        f"{esc(move.value)}</span>"
    )


def attributes_text(attributes: Mapping[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(attributes.items()))


def reasons_html(reasons: Iterable[Reason]) -> Html:
    parts = []
    for r in reasons:
        text = f"<b>{esc(r.check)}</b>: {esc(r.message)}"
        if r.expected is not None or r.got is not None:
            text += f" (expected {esc(r.expected)}, got {esc(r.got)})"
        parts.append(text)
    return Html("<br>".join(parts))


@dataclass(frozen=True, slots=True)
class Row:
    cells: Sequence[object]
    data: Mapping[str, str]


def table_html(name: str, headers: Sequence[str], rows: Sequence[Row], empty: str) -> str:
    if not rows:
        return f'<p class="empty" data-table="{name}" data-rows="0">{esc(empty)}</p>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        attrs = "".join(f' data-{k}="{esc(v)}"' for k, v in row.data.items())
        body.append(f"<tr{attrs}>" + "".join(f"<td>{esc(c)}</td>" for c in row.cells) + "</tr>")
    return (
        f'<table data-table="{name}" data-rows="{len(rows)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )
