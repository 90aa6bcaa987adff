"""The argument parser every `mimkit` command is built from: shows defaults, can defer its options.

Imports nothing beyond the standard library, so that parsing (and `--help`) never loads torch.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Any

DEVICE_HELP = "cpu, cuda, cuda:N, or auto (cuda when available)"


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" to an option's help, except where there is nothing to say.

    Skipped: no default (None), off switches (False), and help that already explains its default.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        nothing = action.default is None or action.default is False  # `in` would also skip 0
        if nothing or action.default == argparse.SUPPRESS or "default" in text:
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose options may be added on first use rather than at construction.

    `configure(parser)` runs before the parser's first parse or help. A sub-command whose defaults
    or choices come from a module that loads torch (eval.finetune's settings, compress's importance
    methods) registers through it, so `mimkit --help` and `mimkit eval --help` stay fast.
    Sub-parsers inherit the class (argparse makes them with `type(parent)`).
    """

    def __init__(
        self, *args: Any, configure: Callable[[Parser], None] | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)
        self._configure = configure

    def _configured(self) -> None:
        configure, self._configure = self._configure, None
        if configure is not None:
            configure(self)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self._configured()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._configured()
        return super().format_help()
