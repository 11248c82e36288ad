"""Pieces every command line of the suite shares (``python -m genomics|audio|suite`` and their console scripts)."""
from __future__ import annotations

import argparse
import logging
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


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and epilogs as written, and every option's default in its help line (unless the line already
    says it): what a command does when a flag is left out is never a guess."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (action.option_strings and "default" not in text.lower() and default not in (None, False, [])
                and default is not argparse.SUPPRESS):
            text += " (default: %(default)s)"
        return text


# the suite's own loggers: --quiet and --verbose set their level, other libraries' stay at warnings
PACKAGES = ("ssm_core", "genomics", "audio", "suite")


def add_logging_arguments(parser: argparse.ArgumentParser) -> None:
    """``--quiet`` (warnings and errors only, no progress bars) and ``--verbose`` (debug messages too)."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", help="print warnings and errors only, no progress")
    group.add_argument("-v", "--verbose", action="store_true", help="also print debug messages")


def add_device_argument(parser, help: str = "where to run", default: str | None = "auto") -> None:
    """``--device``, for the commands where it changes something (``parser``: a parser or an argument group);
    ``default=None`` leaves the choice to the run's config (the engine flags, whose config says ``auto``)."""
    from ssm_core.utils.device import DEVICES

    shown = default or "the config's, auto"
    parser.add_argument("--device", choices=DEVICES, default=default,
                        help=f"{help}: auto picks CUDA, then Apple's mps, then the CPU (default: {shown})")


class DeviceUnavailableError(RuntimeError):
    """``--device cuda`` or ``--device mps`` on a machine without that device."""


def check_device_argument(args: argparse.Namespace) -> None:
    """Refuse an absent ``--device cuda``/``mps`` up front, before any work (DeviceUnavailableError)."""
    from ssm_core.utils.device import resolve_device

    if getattr(args, "device", None) in ("cuda", "mps"):
        try:
            resolve_device(args.device)
        except RuntimeError as err:
            raise DeviceUnavailableError(str(err)) from None


def add_overwrite_argument(parser: argparse.ArgumentParser) -> None:
    """``--overwrite``, on every subcommand that writes a path the user names."""
    parser.add_argument("--overwrite", action="store_true",
                        help="write over an existing output that this command did not write (an output that is "
                             "also an input is refused even so)")


def add_ignored_device_argument(parser: argparse.ArgumentParser) -> None:
    """A hidden ``--device`` on commands that run nothing on a device: accepted so that old scripts still run, with
    a deprecation warning (:func:`apply_common_arguments`)."""
    parser.add_argument("--device", dest="ignored_device", help=argparse.SUPPRESS)


def add_common_arguments(subparsers) -> None:
    """What every subcommand takes: ``--quiet``/``--verbose``; a subcommand without ``--device`` gets the hidden one."""
    for parser in subparsers.choices.values():
        add_logging_arguments(parser)
        if not any("--device" in action.option_strings for action in parser._actions):
            add_ignored_device_argument(parser)


class _Console(logging.Handler):
    """One line per message on the current stderr, through tqdm so that a bar being drawn is not broken."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 (logging's own contract: report, never raise)
            self.handleError(record)


class _Prefixed(logging.Formatter):
    """``warning: ...``, ``error: ...`` and ``debug: ...`` lines; plain text for information."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).rstrip("\n")
        if record.name == "py.warnings":  # already formatted by warnings.formatwarning (audio's `notice: ...`)
            return text
        prefix = {logging.DEBUG: "debug: ", logging.INFO: ""}.get(record.levelno, f"{record.levelname.lower()}: ")
        return prefix + text


def configure_logging(quiet: bool = False, verbose: bool = False) -> None:
    """Route the suite's messages and Python warnings to stderr at the level the flags ask (information by
    default); called again (as tests do), it replaces its earlier set-up."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _Console)]:
        root.removeHandler(handler)
    handler = _Console()
    handler.setFormatter(_Prefixed("%(message)s"))
    root.addHandler(handler)
    for name in PACKAGES:
        logging.getLogger(name).setLevel(level)
    logging.captureWarnings(True)


def ensure_logging() -> None:
    """:func:`configure_logging` at its defaults, unless it has run already (a tool that parsed no logging flags)."""
    if not any(isinstance(h, _Console) for h in logging.getLogger().handlers):
        configure_logging()


def apply_common_arguments(args: argparse.Namespace) -> None:
    """Act on what :func:`add_common_arguments` added: set up logging, warn about an ignored ``--device``."""
    configure_logging(getattr(args, "quiet", False), getattr(args, "verbose", False))
    if getattr(args, "ignored_device", None) is not None:
        logging.getLogger("ssm_core.cli").warning(
            f"--device {args.ignored_device} is ignored: this command runs nothing on a device (the option will be "
            "removed)")


def verbosity_flags() -> list[str]:
    """``--quiet`` or ``--verbose`` as :func:`configure_logging` was last asked, for a command run in-process (the
    main job's tools), which sets up logging again."""
    level = logging.getLogger(PACKAGES[0]).level
    return ["--quiet"] if level == logging.WARNING else ["--verbose"] if level == logging.DEBUG else []
