"""The `mimkit` command line. Bad input prints one line naming what and where, and exits 2.

Parsing (and every `--help`) imports no torch: each command module registers its options with
`add_parser(subparsers)` and loads the heavy modules inside its `cmd_*` functions.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from mimkit import __version__
from mimkit.cli import bench, compress, data, interop, pretrain
from mimkit.cli import eval as evaluate
from mimkit.cli import inspect as inspection
from mimkit.cli.parsing import Parser
from mimkit.errors import MimkitError

# in the order `mimkit --help` lists them
COMMAND_GROUPS = (pretrain, evaluate, data, interop, compress, inspection, bench)


class _Version(argparse.Action):
    """`--version`: the version is looked up only when asked for."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        print(f"mimkit {version()}")
        parser.exit()


def version() -> str:
    """The installed distribution's version; the package's own when mimkit is not installed."""
    # imported when asked: importlib.metadata costs a little on every start
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("mimkit")
    except PackageNotFoundError:
        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="mimkit", description="Masked image modelling for Vision Transformers.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action=_Version, help="print the version and exit")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # key=value overrides may also come after options, e.g. `--no-resume a.b=1`
        if not (
            hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra)
        ):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = [*args.overrides, *extra]
    # imported after parsing: --help imports nothing of train/
    from mimkit.train.logging import setup_console_logging

    setup_console_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        return args.func(args)
    except MimkitError as exc:
        print(f"mimkit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mimkit: interrupted", file=sys.stderr)
        return 130
