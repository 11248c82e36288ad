"""The errors loading a model directory raises; each message names the file (and field) and what is wrong."""
from __future__ import annotations


class ModelFileError(ValueError):
    """A model directory or weights file that cannot be loaded: a missing or foreign model.json, an unknown
    model class, weights that do not fit the model, a model of another kind than the one asked for."""


class ModelFileMissingError(ModelFileError, FileNotFoundError):
    """A model directory without the file needed (model.json, model.safetensors)."""


class UnknownModelError(ModelFileError):
    """A model file names a model class that is not one of the suite's registered models."""


class WrongModelError(ModelFileError):
    """A model of another kind than the one asked for (an audio model where a DNA classifier is expected)."""


class ModelCardExistsError(FileExistsError):
    """Saving into a directory whose README.md is the user's own, not a model card this suite wrote."""
