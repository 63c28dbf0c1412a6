"""The ``distmeta`` command line: each subcommand lives in the module that owns it
and registers itself through ``register(subparsers)``."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import List, Optional

# Before torch loads (libgomp reads it once): OpenMP threads that sleep instead of spinning
# while they wait. With the default, a 2-thread in-process sinusoid step beside other busy
# processes took 100-450 ms instead of 5-10 ms (benchmarks/README.md). The user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

SUBCOMMAND_MODULES = [
    "distmeta.commands",   # train, eval, validate
    "distmeta.data.cli",   # data prepare / info
    "distmeta.tune",       # tune
    "distmeta.jobs.cli",   # submit, jobs
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="distmeta",
        description="Distributed meta-learning on Ray: train, evaluate, tune and submit "
                    "MAML, Reptile, ProtoNets, Siamese and Meta-RL experiments.")
    from distmeta import __version__

    parser.add_argument("--version", action="version", version=f"distmeta {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


PACKAGE_DIR = Path(__file__).resolve().parent
python_warning_format = warnings.formatwarning


def warning_line(message, category, filename, lineno, line=None) -> str:
    """distmeta's own warnings as one ``distmeta: warning:`` line; others in Python's format."""
    if category is UserWarning and Path(filename).resolve().is_relative_to(PACKAGE_DIR):
        return f"distmeta: warning: {message}\n"
    return python_warning_format(message, category, filename, lineno, line)


def main(argv: Optional[List[str]] = None) -> int:
    warnings.formatwarning = warning_line
    try:
        return run_command(argv)
    finally:
        warnings.formatwarning = python_warning_format


def run_command(argv: Optional[List[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from distmeta.config import ConfigError
    from distmeta.engine.run_dir import CheckpointError
    from distmeta.errors import DistmetaError

    try:
        result = args.func(args)
    except (ConfigError, CheckpointError, DistmetaError, FileNotFoundError) as exc:
        print(f"distmeta: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("distmeta: interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
