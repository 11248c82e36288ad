"""The one progress bar of the suite: a tqdm bar redrawn in place (``\\r``) on a terminal, and a plain line every
few seconds when stderr is a log file or a pipe, both with the rate and the time left. ``--quiet`` hides both."""
from __future__ import annotations

import logging
import sys
import time

from tqdm.auto import tqdm as interactive_tqdm
from tqdm.std import tqdm

LINE_INTERVAL_S = 5.0  # seconds between two progress lines in a log


class LineProgress(tqdm):
    """tqdm that writes whole lines at most every ``mininterval`` seconds (and once at the end) instead
    of redrawing a bar with ``\\r``, so a log file holds a readable history."""

    def clear(self, nolock: bool = False) -> None:
        pass  # nothing drawn in place, nothing to wipe before tqdm.write

    def refresh(self, nolock: bool = False, lock_args=None) -> bool:
        if self.disable:  # a disabled tqdm never set its intervals
            return False
        if not hasattr(self, "_last_line"):  # tqdm's opening refresh: a 0% line says nothing, the clock starts
            self._last_line = time.monotonic()
        elif time.monotonic() - self._last_line >= self.mininterval:
            self.display()
        return True

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        if msg == "":  # tqdm clearing the bar: a line already written stays
            return False
        self._last_line = time.monotonic()
        self.fp.write((msg if msg is not None else self.__str__()).strip() + "\n")
        self.fp.flush()
        return True

    def close(self) -> None:
        if not self.disable and (self.leave or (self.leave is None and not self.pos)) and self.n != self.last_print_n:
            self.display()  # the final count, when the last line was written before it
        self.leave = False  # tqdm's own close would then add a blank line
        super().close()


def _interactive(stream) -> bool:
    """A terminal, or a Jupyter kernel (whose tqdm.auto draws a widget)."""
    return stream.isatty() or "ipykernel" in sys.modules


def progress_bar(iterable=None, **kwargs) -> tqdm:
    """A tqdm bar (same arguments) that suits where stderr goes; hidden under ``--quiet``. ``disable=None`` (tqdm's
    "hide unless a terminal") is read as shown: a log gets lines instead."""
    stream = kwargs.get("file") or sys.stderr
    quiet = logging.getLogger("ssm_core").level > logging.INFO  # set by configure_logging; unset (0) in a library
    kwargs["disable"] = bool(kwargs.get("disable")) or quiet
    if _interactive(stream):
        return interactive_tqdm(iterable, **kwargs)
    kwargs.pop("dynamic_ncols", None)
    kwargs.setdefault("mininterval", LINE_INTERVAL_S)
    kwargs.setdefault("ncols", 0)  # no bar: counts, elapsed and left, rate
    return LineProgress(iterable, **kwargs)
