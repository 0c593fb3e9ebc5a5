"""``trusthook``: measure a rootfs, run the agent, show and verify the event log, enroll and
attest this host, run the attestation server, work on encrypted images, verify audit bundles,
register trusthook with the container engines and check that a host is ready.

The parser (``parser``) is plain argparse; each subcommand's code lives in its own module,
imported only when that subcommand runs, so ``--help``, ``status`` and ``log show`` never load
the image stack, the server or tpm2-pytss.
"""

from __future__ import annotations

import importlib
import os
import sys

from trusthook.cli.parser import build_parser
from trusthook.common.config import load_config
from trusthook.errors import TrusthookError


def main(argv: list[str] | None = None) -> int:
    args = build_parser(__doc__).parse_args(argv)
    os.environ.setdefault("TSS2_LOG", "all+NONE")  # tpm2-tss logging off: our errors say it once
    module_name, _, function = args.run.partition(":")
    try:
        config = load_config(args.trusthook_config)
        module = importlib.import_module(f"trusthook.cli.{module_name}")
        _configure_logging(verbose=args.verbose)
        return int(getattr(module, function)(args, config))
    except TrusthookError as e:
        print(f"trusthook: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _configure_logging(*, verbose: bool) -> None:
    """Log to stderr if the command logs at all: every module that logs imports ``logging`` at
    its top (``log = logging.getLogger(__name__)``), so a command whose modules did not (``--help``,
    ``status``, ``log show``) does not pay for importing it."""
    if "logging" not in sys.modules:
        return
    import logging  # noqa: PLC0415 - already imported: see above

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="trusthook %(levelname)s %(name)s: %(message)s",
    )
