"""The `mimkit` command line: `main.py` builds the parser from one module per command group.

`mimkit.cli.main` as an attribute is the function (tests call `main([...])`); the module is
`importlib.import_module("mimkit.cli.main")`, which is also what the console script loads.
"""

from mimkit.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
