"""``python -m suite run``: the main job (``make demo``).

Runs every stage of :mod:`suite.stages` not yet finished in --out, then writes the report. Started again after
an interruption, it skips the finished stages and resumes the interrupted training run. As in the domain CLIs, the
subcommand has an ``add_run_parser(subparsers)`` that declares its arguments and a ``cmd_run(args) -> int`` that
runs it.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ssm_core.utils.cli import HelpFormatter, add_device_argument

EPILOG = """\
examples:
  python -m suite run --out runs/main               # the default size: about 7 minutes on 2 CPU cores
  python -m suite run --out runs/h100 --size h100-20min   # one GPU, about 14 min on an H100 (measured 2026-12-06)
  python -m suite run --out runs/main               # again after Ctrl-C: continues at the stage it reached
  python -m suite run --out runs/full --full        # the papers' presets, on a GPU (hours)
  python -m suite run --out /tmp/q --size quick     # every stage in seconds (what the tests run)

Stages: core (induction heads, step mode) -> genomics (simulate, pretrain, fine-tune at several windows, classify
held-out FASTA files) -> audio (spoken digits, SaShiMi-Mamba, generation, classifier, FID/IS/mIS/AM) -> report.
RUN/stages.json records the finished stages; RUN/report/report.html (and report.md) is the report.
"""


GPU_SIZES = ("h100-20min", "full")  # refused on a machine without a GPU unless --device cpu insists


def add_run_parser(subparsers) -> argparse.ArgumentParser:
    from suite.stages import SIZES

    p = subparsers.add_parser("run", help="run the whole suite and write its report",
                              description=__doc__.split("\n\n")[0], epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--out", default="runs/main",
                   help="run directory: new, empty, or a main job run to continue (default: runs/main)")
    p.add_argument("--overwrite", action="store_true",
                   help="use an --out that holds other files, and write over files in the way of the report")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--size", choices=list(SIZES), default="default",
                      help="how big every stage is: quick (seconds), default (~7 min on 2 CPU cores), "
                           "h100-20min (one GPU, about 14 min on an H100, measured 2026-12-06), "
                           "full (the papers' presets, hours on a GPU)")
    size.add_argument("--full", "--gpu", dest="size", action="store_const", const="full",
                      help="the papers' presets (same as --size full); needs a GPU")
    add_device_argument(p, help="where every tool runs")
    p.set_defaults(func=cmd_run)
    return p


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from suite.stages import SIZES, StageError, run_suite

    if args.size in GPU_SIZES and not torch.cuda.is_available() and args.device != "cpu":
        print(f"error: --size {args.size} is made for a GPU (hours to days on a CPU); add --device cpu to insist",
              file=sys.stderr)
        return 1
    if args.size == "default" and torch.cuda.is_available() and args.device != "cpu":
        print("note: a GPU is present. `--size h100-20min` (make demo ARGS='--size h100-20min') trains bigger "
              "models for longer, sized for one GPU: about 14 min on an H100 (measured 2026-12-06)", flush=True)
    try:
        run_suite(args.out, SIZES[args.size], args.device, overwrite=args.overwrite)
    except (StageError, OSError) as err:  # OSError: an --out that is not a main job run, or one in use, ...
        print(f"error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\ninterrupted: run the same command again to continue from the stage reached ({args.out}/stages.json)",
              file=sys.stderr)
        return 130
    return 0


def build_parser() -> argparse.ArgumentParser:
    from ssm_core.utils.cli import add_common_arguments, add_version_argument, program_name

    parser = argparse.ArgumentParser(prog=program_name("python -m suite", "mamba-suite"),
                                     description="The Mamba suite's main job.", formatter_class=HelpFormatter)
    add_version_argument(parser)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_run_parser(subparsers)
    add_common_arguments(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from ssm_core.utils.cli import apply_common_arguments

    args = build_parser().parse_args(argv)
    apply_common_arguments(args)
    return args.func(args)
