"""The models a model directory may name: a registry, so that loading a file never imports what the file says.

``model.json`` records its model's class as a stable registered name (``"ssm_core.MambaLMHeadModel"``,
``"audio.SashimiModel"``); :func:`model_class` turns that name back into a class by looking it up here, and refuses
any name that is not registered. Each package registers its classes at import with :func:`register_model`.
A class is also known by its module path (``"ssm_core.models.backbone.MambaLMHeadModel"``), what checkpoints
record and what model directories recorded before the registry, so older runs still load.

``ssm_core`` never imports the packages built on it: they announce their models as entry points of the group
``ssm_core.models`` in their distribution's metadata (``pyproject.toml``: registered name = ``module:Class``), and
the first lookup of such a name loads that entry point. Only installed metadata is read, never a module named by
a file.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import entry_points

from torch import nn

from .errors import UnknownModelError


@dataclass(frozen=True)
class RegisteredModel:
    name: str                  # the stable name recorded in model.json
    cls: type[nn.Module]
    description: str           # what it is, for messages: "an audio waveform model"


_MODELS: dict[str, RegisteredModel] = {}
_BY_CLASS: dict[type, RegisteredModel] = {}
_MODULE_PATHS: dict[str, str] = {}  # "package.module.Class" -> registered name

ENTRY_POINT_GROUP = "ssm_core.models"


def _providers() -> dict[str, object]:
    """Registered name -> entry point, for every model an installed package announces (see the module docstring).
    The entry point's value (``module:Class``) also gives the module path older runs recorded."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def register_model(name: str, description: str):
    """Class decorator: make ``cls`` loadable from a model directory that records ``name``.

    The class needs a dataclass ``config`` attribute and a ``config_class`` (it is rebuilt as
    ``cls(cls.config_class(**config))``).
    """
    def register(cls: type[nn.Module]) -> type[nn.Module]:
        if not hasattr(cls, "config_class"):
            raise TypeError(f"{cls.__qualname__} needs a `config_class` attribute to be registered")
        known = _MODELS.get(name)
        if known is not None and known.cls.__qualname__ != cls.__qualname__:
            raise ValueError(f"model name {name!r} is already registered for {known.cls.__qualname__}")
        entry = RegisteredModel(name, cls, description)
        _MODELS[name] = entry
        _BY_CLASS[cls] = entry
        _MODULE_PATHS[f"{cls.__module__}.{cls.__qualname__}"] = name
        return cls
    return register


def registered(model_or_class: nn.Module | type) -> RegisteredModel:
    """The registry entry of a model (or model class); TypeError for a class that was never registered."""
    cls = model_or_class if isinstance(model_or_class, type) else type(getattr(model_or_class, "module",
                                                                              model_or_class))
    entry = _BY_CLASS.get(cls)
    if entry is None:
        raise TypeError(f"{cls.__module__}.{cls.__qualname__} is not a registered model: decorate it with "
                        "@ssm_core.models.register_model(name, description) so that a saved copy can be loaded")
    return entry


def describe(model_or_class: nn.Module | type) -> str:
    """What a registered model is, for messages: 'an audio waveform model (SashimiModel)'."""
    entry = registered(model_or_class)
    return f"{entry.description} ({entry.cls.__name__})"


def lookup(name: str, source: str = "model.json") -> RegisteredModel:
    """The registered model a file calls ``name``: a registered name, or the module path of a registered class.

    Anything else raises ``UnknownModelError`` naming ``source`` (the file), the field and the value.
    """
    if not isinstance(name, str):
        raise UnknownModelError(f"{source}: model_class must be a string naming a model; got {name!r}")
    providers = _providers() if name not in _MODELS and name not in _MODULE_PATHS else {}
    by_path = {ep.value.replace(":", "."): ep.name for ep in providers.values()}
    name = _MODULE_PATHS.get(name) or by_path.get(name) or name
    if name not in _MODELS and name in providers:
        try:
            providers[name].load()   # importing the module registers the class
        except ImportError as err:
            raise UnknownModelError(f"{source}: model_class {name!r} needs the package that provides it, which "
                                    f"cannot be imported ({err})") from None
    entry = _MODELS.get(name)
    if entry is None:
        known = sorted(set(_MODELS) | set(providers))
        raise UnknownModelError(f"{source}: model_class {name!r} is not a model of this suite; only these can be "
                                f"loaded: {', '.join(known)}")
    return entry
