"""The parser alone: --help never loads torch, --version, and every option explains itself."""

import argparse
import importlib
import subprocess
import sys

import pytest

import mimkit
from mimkit.cli import build_parser, main

# Their options come from modules that import torch (compress.importance.METHODS,
# eval.linear's and eval.finetune's settings), so their own --help loads it; nothing else does.
TORCH_FOR_OWN_HELP = {("prune",), ("eval", "linear"), ("eval", "finetune")}


def commands(parser: argparse.ArgumentParser, prefix: tuple = ()):
    """Every (command path, parser) pair below `parser`, without configuring deferred options."""
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, (*prefix, name))


def test_help_does_not_import_torch():
    paths = [p for p, _ in commands(build_parser()) if p not in TORCH_FOR_OWN_HELP]
    assert ("eval", "knn") in paths and ("pretrain",) in paths
    script = (
        "import sys\n"
        "from mimkit.cli import main\n"
        f"for path in {paths!r}:\n"
        "    try:\n"
        "        main([*path, '--help'])\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code == 0, path\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("usage: mimkit") == len(paths)
    assert done.stdout.rstrip().endswith("ok")


def test_module_help_runs():
    done = subprocess.run(
        [sys.executable, "-m", "mimkit.cli", "--help"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    for command in ("pretrain", "eval", "data", "export", "import", "prune", "tome", "bench"):
        assert command in done.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    printed = capsys.readouterr().out.strip()
    assert printed == f"mimkit {importlib.import_module('mimkit.cli.main').version()}"
    assert printed.split()[1] == mimkit.__version__


def test_every_option_has_help():
    missing = []
    for path, parser in commands(build_parser()):
        parser.format_help()  # adds the deferred options
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction) and not action.help:
                missing.append((path, action.dest))
    assert not missing


def test_deferred_options_parse():
    args = build_parser().parse_args(["prune", "ckpt", "out", "--keep", "3"])
    assert (args.method, args.keep, args.func.__name__) == ("entropy", 3, "cmd_prune")
    args = build_parser().parse_args(["eval", "finetune", "ckpt", "--epochs", "2"])
    assert (args.epochs, args.func.__name__) == (2, "cmd_eval_finetune")
