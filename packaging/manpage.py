"""Write a section-1 man page for one of the Debian package's programs, from the program itself.

``python:MODULE``: from the module's argparse parser when it has ``build_parser`` (``trusthook``:
the top-level ``--help`` and then every subcommand's, exactly as ``--help`` prints them), else
from its docstring and its ``USAGE``.
``exe:PATH``: the ``--help`` output of a compiled program (``trusthook-hook``,
``trusthook-runtime``).

    manpage.py --lib DIR --version V --date YYYY-MM-DD --out FILE NAME SOURCE

Run by scripts/build-deb with the interpreter the package uses; imports trusthook from ``--lib``.
"""

from __future__ import annotations

import argparse
import importlib
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

WIDTH = "80"  # argparse wraps --help to $COLUMNS; a man page is read at about this width
SEE_ALSO = ("trusthook", "trusthook-hook", "trusthook-runtime")
FILES = (
    ("/etc/trusthook/config.toml", "the host's configuration (agent, hook, real runtime)"),
    ("/etc/trusthook/server.toml", "the attestation server's configuration"),
    ("/var/lib/trusthook", "the agent's state: the event log, the host's enrollment"),
    ("/var/lib/trusthook-server", "the server's state: CA, TLS key, database, image keys"),
    ("/run/trusthook/agent.sock", "the agent's socket (root only)"),
    ("/run/trusthook/agent.sock.runtime", "the real runtime, as the agent tells the shim"),
    ("/usr/share/trusthook/oci-config", "hooks.d, Docker, containerd and CRI-O snippets"),
)


def roff(text: str) -> str:
    """``text`` as roff: backslashes and hyphens literal, no line read as a request."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = text.splitlines()
    return "\n".join("\\&" + line if line.startswith((".", "'")) else line for line in lines)


def prose(text: str) -> str:
    """A docstring's paragraphs as roff, ``literal`` in bold."""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", text.strip()) if p.strip()]
    out = [re.sub(r"``(.+?)``", r"\\fB\1\\fR", roff(p)) for p in paragraphs]
    return "\n.PP\n".join(out)


def preformatted(text: str) -> str:
    return f".nf\n{roff(text.rstrip())}\n.fi"


def subparsers(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every subcommand under ``parser``, depth first, with its full name."""
    for action in parser._actions:  # argparse has no public walk
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield name, sub
                for deeper, subsub in subparsers(sub):
                    yield f"{name} {deeper}", subsub


def summary(name: str, paragraph: str) -> str:
    """The NAME line's text: a docstring's first paragraph without its ``name``: prefix."""
    return " ".join(paragraph.split()).removeprefix(f"``{name}``:").strip().rstrip(".")


def from_parser(name: str, parser: argparse.ArgumentParser) -> tuple[str, str, str]:
    description = parser.description or ""
    first, _, rest = description.strip().partition("\n\n")
    usage = parser.format_usage().removeprefix("usage: ")
    body = [
        ".SH DESCRIPTION",
        prose(rest or first),
        ".PP",
        f"Below is what \\fB{roff(name)} \\-\\-help\\fR prints, then the \\fB\\-\\-help\\fR of each"
        " of its commands.",
        ".SH COMMANDS",
        f'.SS "{roff(name)}"',
        preformatted(parser.format_help()),
    ]
    for command, sub in subparsers(parser):
        body += [f'.SS "{roff(name + " " + command)}"', preformatted(sub.format_help())]
    return summary(name, first), usage, "\n".join(body)


def from_module(name: str, module_name: str) -> tuple[str, str, str]:
    module = importlib.import_module(module_name)
    build = getattr(module, "build_parser", None)
    if build is not None:
        return from_parser(name, build(module.__doc__))
    first, _, rest = (module.__doc__ or "").strip().partition("\n\n")
    usage = getattr(module, "USAGE", f"{name} [ARGUMENTS]").removeprefix("usage: ")
    return summary(name, first), usage, ".SH DESCRIPTION\n" + prose(rest or first)


def from_executable(name: str, path: str) -> tuple[str, str, str]:
    result = subprocess.run([path, "--help"], capture_output=True, text=True, check=True)
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    usage = lines[0].removeprefix("usage: ") if lines else name
    title = lines[1].strip() if len(lines) > 1 else name
    return title, usage, ".SH DESCRIPTION\n" + preformatted(result.stdout)


def page(name: str, source: str, version: str, date: str) -> str:
    kind, _, what = source.partition(":")
    if kind == "python":
        title, usage, body = from_module(name, what)
    elif kind == "exe":
        title, usage, body = from_executable(name, what)
    else:
        raise SystemExit(f"manpage.py: got source {source!r}, expected python:MODULE or exe:PATH")
    files = "\n".join(f".TP\n.B {roff(path)}\n{roff(what)}" for path, what in FILES)
    see_also = ",\n".join(f".BR {other} (1)" for other in SEE_ALSO if other != name)
    return "\n".join(
        [
            f'.TH {name.upper()} 1 "{date}" "trusthook {version}" "trusthook"',
            ".SH NAME",
            f"{roff(name)} \\- {roff(title)}",
            ".SH SYNOPSIS",
            preformatted(usage),
            body,
            ".SH FILES",
            files,
            ".SH SEE ALSO",
            see_also + ",",
            "and /usr/share/doc/trusthook/ (README.md, docs/deploy.md and the formats).",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--lib", required=True, type=Path, help="where the trusthook package is")
    p.add_argument("--version", required=True)
    p.add_argument("--date", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("name")
    p.add_argument("source", help="python:MODULE or exe:PATH")
    args = p.parse_args(argv)
    os.environ["COLUMNS"] = WIDTH
    sys.path.append(str(args.lib))
    args.out.write_text(page(args.name, args.source, args.version, args.date))
    return 0


if __name__ == "__main__":
    sys.exit(main())
