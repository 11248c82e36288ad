"""What every command line shares: --quiet/--verbose through logging, progress that suits a log file, --device
where it does something (mps included), every default in --help."""
from __future__ import annotations

import argparse
import io
import logging

import pytest
import torch

from ssm_core.utils.cli import configure_logging
from ssm_core.utils.progress import progress_bar


def _parsers():
    """(name, parser) of every subcommand of every command line."""
    from audio.cli import build_parser as audio
    from genomics.cli import build_parser as genomics
    from suite.cli import build_parser as suite
    from ssm_core.synthetic.runner import build_parser as synthetic

    for tool, build in (("genomics", genomics), ("audio", audio), ("suite", suite)):
        for name, parser in build()._subparsers._group_actions[0].choices.items():
            yield f"{tool} {name}", parser
    yield "ssm_core.synthetic", synthetic()


@pytest.mark.parametrize("name,parser", list(_parsers()), ids=lambda x: x if isinstance(x, str) else "")
def test_every_command_takes_quiet_and_verbose_and_shows_its_defaults(name, parser):
    options = {s for action in parser._actions for s in action.option_strings}
    assert {"--quiet", "--verbose"} <= options, name
    text = parser.format_help()
    for action in parser._actions:
        shown = action.option_strings and action.help is not argparse.SUPPRESS
        if shown and action.default not in (None, False, [], argparse.SUPPRESS):
            assert "default" in parser._get_formatter()._expand_help(action).lower(), (name, action.option_strings)
    recipe = {"genomics finetune": "(default: 10240, the gpu recipe; see --recipe)", "genomics pretrain": "(default: 10000)",
              "audio train": "(default: 200000, the 6.1m preset's)"}
    if name in recipe:  # the engine flags show the command's own recipe, not nothing
        assert "optimiser steps " + recipe[name] in " ".join(text.split()), name


def test_quiet_and_verbose_set_the_level_of_the_suites_messages(capsys):
    log = logging.getLogger("genomics.cli")
    try:
        configure_logging(quiet=True)
        log.info("an information")
        log.warning("a warning")
        assert capsys.readouterr().err == "warning: a warning\n"
        configure_logging(verbose=True)
        log.debug("a detail")
        assert capsys.readouterr().err == "debug: a detail\n"
        configure_logging()
        log.info("an information")
        log.debug("a detail")
        assert capsys.readouterr().err == "an information\n"
    finally:
        configure_logging()


def test_progress_in_a_log_is_whole_lines_with_rate_and_eta_and_quiet_hides_it():
    log = io.StringIO()  # not a terminal
    bar = progress_bar(total=10, desc="work", unit="step", file=log, mininterval=0)
    for _ in range(10):
        bar.update(1)
    bar.close()
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    assert lines[0].startswith("work:  10% 1/10") and lines[-1].startswith("work: 100% 10/10")
    assert "step/s" in lines[-1] and "<00:00" in lines[-1]  # rate and time left
    log = io.StringIO()
    slow = progress_bar(total=1000, file=log)  # the default: a line every few seconds, not one per update
    for _ in range(1000):
        slow.update(1)
    slow.close()
    assert len(log.getvalue().splitlines()) == 1  # the end only, not a line per update
    try:
        configure_logging(quiet=True)
        log = io.StringIO()
        for _ in progress_bar(range(3), file=log, mininterval=0):
            pass
        assert log.getvalue() == ""
    finally:
        configure_logging()


def test_auto_picks_mps_where_pytorch_has_it_and_the_scan_runs_its_reference_there(monkeypatch):
    from ssm_core.ops.selective_scan import choose_backend
    from ssm_core.utils import device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(device, "mps_available", lambda: True)
    assert device.resolve_device("auto") == torch.device("mps")
    assert device.resolve_device("cpu") == torch.device("cpu")
    assert choose_backend("auto", torch.device("mps")) == "reference"
    assert choose_backend("auto", torch.device("cpu")) == "cpu"
    monkeypatch.setattr(device, "mps_available", lambda: False)
    assert device.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(RuntimeError, match="--device mps was requested"):
        device.resolve_device("mps")


def test_device_mps_is_accepted_by_the_commands_that_run_a_model(capsys, monkeypatch):
    from genomics.cli import main

    from ssm_core.utils import device

    monkeypatch.setattr(device, "mps_available", lambda: False)
    assert main(["classify", "--checkpoint", "x", "--fasta", "y", "--device", "mps"]) == 1  # parsed, then refused
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "error: --device mps was requested but this PyTorch has no Apple mps device here"


def test_the_main_job_runs_its_tools_as_quiet_as_itself(monkeypatch):
    from suite import stages

    seen = []
    try:
        for flags in (["--quiet"], ["--verbose"], []):
            configure_logging(quiet=flags == ["--quiet"], verbose=flags == ["--verbose"])
            stages.run_tool(lambda argv: seen.append(argv) or 0, ["presets"], "test")
            assert seen[-1] == ["presets", *flags]
    finally:
        configure_logging()
