"""The `mimkit` command line: `main.py` builds the parser from one module per command group."""

from mimkit.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
