"""Numeric ranges shared by the command lines (argparse ``type=``) and the config dataclasses' checks.

A :class:`Range` parses one command-line value and refuses text that is not a number, NaN, infinities and
values outside the range, saying what the range is; argparse puts the flag in front, e.g.
``argument --top-p: must be in (0, 1], got 0``. :func:`check_ranges` applies the same ranges to the fields of a
config dataclass (values from ``--config FILE`` or ``--set``), naming the class and field.
"""
from __future__ import annotations

import argparse
import math
import numbers
from dataclasses import dataclass


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else f"{x:.10g}"


@dataclass(frozen=True)
class Range:
    """Finite numbers between ``low`` and ``high`` (None: unbounded), the ends included unless ``*_open``;
    integers only with ``integer``."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def __str__(self) -> str:
        kind = "an integer " if self.integer else ""
        if self.low is not None and self.high is not None:
            return (f"{kind}in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                    f"{')' if self.high_open else ']'}")
        if self.low is not None:
            return f"{kind}{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high is not None:
            return f"{kind}{'<' if self.high_open else '<='} {_number(self.high)}"
        return "an integer" if self.integer else "a finite number"

    def contains(self, value) -> bool:
        """True for a finite number inside the range (and an integer, not a bool, where integers are asked)."""
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return False
        if self.integer and not isinstance(value, numbers.Integral):
            return False
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return not (self.high is not None and (value >= self.high if self.high_open else value > self.high))

    def __call__(self, text: str) -> int | float:
        """argparse ``type=``: the value of ``text``, or ArgumentTypeError saying the range."""
        try:
            value = int(text) if self.integer else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self}, got {text!r}") from None
        if not self.contains(value):
            raise argparse.ArgumentTypeError(f"must be {self}, got {text}")
        return value


POSITIVE_INT = Range(1, integer=True)
NONNEGATIVE_INT = Range(0, integer=True)
POSITIVE = Range(0, low_open=True)
NONNEGATIVE = Range(0)
FRACTION = Range(0, 1)  # [0, 1]
SEED = Range(0, 2**32 - 1, integer=True)  # what every generator in the suite accepts (NumPy's legacy seeding)


def check_ranges(config, **ranges: Range) -> None:
    """Raise ValueError naming ``Class.field`` and its range for the first field of ``config`` outside it."""
    for name, allowed in ranges.items():
        value = getattr(config, name)
        if not allowed.contains(value):
            raise ValueError(f"{type(config).__name__}.{name} must be {allowed}; got {value!r}")
