"""Errors and notices raised by the audio readers, datasets and commands."""
from __future__ import annotations


class AudioInputError(ValueError):
    """Bad audio input: the message names the file (or list file and line) and what is wrong with it."""


class AudioNotice(UserWarning):
    """Something a user should know about their input that is not an error; the command line prints it as one
    ``notice:`` line on stderr."""


class AudioConversionWarning(AudioNotice):
    """A notice that input audio was converted on load (resampled, or mixed down to mono)."""


class MetricsError(AudioInputError):
    """The sample-quality metrics cannot be computed from the clips given: too few clips for the statistics, a
    classifier output that is not finite, or a matrix square root (FID) that failed."""
