"""Pieces every command line of the suite shares (``python -m genomics|audio|suite`` and their console scripts)."""
from __future__ import annotations

import argparse
import os
import sys


def program_name(module_form: str, script: str) -> str:
    """What the user typed: the console script's name (``mamba-genomics``) when run through it, else
    ``python -m genomics``, so that usage lines and examples match."""
    return script if os.path.basename(sys.argv[0]) == script else module_form


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    """``--version``: the installed suite's version."""
    from ssm_core import __version__
    parser.add_argument("--version", action="version", version=f"%(prog)s (mamba-seq-suite) {__version__}")
