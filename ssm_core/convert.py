"""Convert a mamba-ssm language model (the state-spaces/mamba-* checkpoints) into a model directory of this suite.

    python -m ssm_core.convert mamba-ssm IN OUT

IN is a directory with mamba-ssm's ``config.json`` and its weights, ``model.safetensors`` or ``pytorch_model.bin``
(what ``huggingface-cli download state-spaces/mamba-130m --local-dir IN`` leaves), or the weights file itself
with ``config.json`` beside it. OUT must be new or empty; it becomes a model directory (model.safetensors,
model.json, README.md) that ``ssm_core.from_pretrained(OUT)`` loads as an ``ssm_core.MambaLMHeadModel`` computing
the same logits. Nothing is downloaded; the tokenizer (GPT-NeoX's for state-spaces/mamba-*) is not part of it.

mamba-ssm's ``MambaLMHeadModel`` state dict maps name for name, except that the mixer's per-direction parameters
sit in its ``fwd`` branch here::

    backbone.embedding.weight                                   -> backbone.embedding.weight
    backbone.layers.N.norm.weight                               -> backbone.layers.N.norm.weight
    backbone.layers.N.mixer.{in_proj,out_proj}.*                -> backbone.layers.N.mixer.{in_proj,out_proj}.*
    backbone.layers.N.mixer.{conv1d.*,x_proj.weight,dt_proj.*,A_log,D}
                                                                -> backbone.layers.N.mixer.fwd.{...}
    backbone.norm_f.weight                                      -> backbone.norm_f.weight
    lm_head.weight                                              -> lm_head.weight (tied to the embedding)

and its config.json (d_model, n_layer, vocab_size, ssm_cfg, pad_vocab_size_multiple, tie_embeddings) becomes a
``MambaConfig``. Both block layouts compute h + mixer(norm(h)) per layer, then norm_f (mamba-ssm adds the residual
before the next norm, "fused_add_norm", which changes nothing but speed); the residual stream stays in float32 here
(``residual_in_fp32``). Mamba-2 mixers, attention layers, MLP blocks (``d_intermediate`` > 0) and LayerNorm models
(``rms_norm`` false) have no counterpart in this suite and are refused, naming the setting.

A ``.bin`` is read with ``torch.load(weights_only=True)``: tensors only, no pickled code runs.
"""
from __future__ import annotations

import argparse
import json
import pickle
import re
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .models import MambaConfig, MambaLMHeadModel, ModelFileError, ModelInfo, save_model

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_BRANCH_PARAM = re.compile(r"^backbone\.layers\.(\d+)\.mixer\.(conv1d\.weight|conv1d\.bias|x_proj\.weight|"
                           r"dt_proj\.weight|dt_proj\.bias|A_log|D)$")
_SAME_NAME = re.compile(r"^(backbone\.embedding\.weight|backbone\.norm_f\.weight|lm_head\.weight|"
                        r"backbone\.layers\.\d+\.(norm\.weight|mixer\.(in|out)_proj\.(weight|bias)))$")
# mamba-ssm's Mamba arguments that shape the weights (MambaConfig has the same names), and those that only choose
# an initialisation or a kernel
_SSM_SETTINGS = ("d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init_floor", "conv_bias", "bias")
_SSM_IGNORED = ("dt_init", "dt_scale", "use_fast_path")
# config.json keys that change nothing here (bookkeeping, or numerics ssm_core always does its own way)
_IGNORED = ("residual_in_fp32", "fused_add_norm", "architectures", "model_type", "torch_dtype",
            "transformers_version")


def mamba_ssm_config(config: dict[str, Any], source: str) -> MambaConfig:
    """The ``MambaConfig`` of a mamba-ssm ``config.json`` (``source`` names it in errors)."""
    if not isinstance(config, dict):
        raise ModelFileError(f"{source}: expected a JSON object of mamba-ssm settings")

    def refuse(what: str):
        raise ModelFileError(f"{source}: {what}, which ssm_core's MambaLMHeadModel does not have; not converted")

    missing = [k for k in ("d_model", "n_layer", "vocab_size") if k not in config]
    if missing:
        raise ModelFileError(f"{source}: not a mamba-ssm config (no {', '.join(missing)})")
    if config.get("rms_norm", True) is not True:
        refuse("rms_norm is false (LayerNorm blocks)")
    if config.get("d_intermediate", 0):
        refuse(f"d_intermediate is {config['d_intermediate']} (an MLP after each mixer)")
    if config.get("attn_layer_idx"):
        refuse(f"attn_layer_idx is {config['attn_layer_idx']} (attention layers)")
    known = {"d_model", "n_layer", "vocab_size", "ssm_cfg", "rms_norm", "d_intermediate", "attn_layer_idx",
             "attn_cfg", "pad_vocab_size_multiple", "tie_embeddings", *_IGNORED}
    unknown = sorted(k for k in config if k not in known and not k.startswith("_"))
    if unknown:
        raise ModelFileError(f"{source}: unknown mamba-ssm settings {unknown}; not converted")
    ssm = dict(config.get("ssm_cfg") or {})
    layer = ssm.pop("layer", "Mamba1")
    if layer != "Mamba1":
        refuse(f"ssm_cfg.layer is {layer!r} (only Mamba-1 mixers convert)")
    unknown = sorted(k for k in ssm if k not in _SSM_SETTINGS + _SSM_IGNORED)
    if unknown:
        raise ModelFileError(f"{source}: unknown ssm_cfg settings {unknown}; not converted")
    try:
        return MambaConfig(d_model=config["d_model"], n_layer=config["n_layer"], vocab_size=config["vocab_size"],
                           pad_vocab_multiple=config.get("pad_vocab_size_multiple", 8),
                           tie_embeddings=config.get("tie_embeddings", True),
                           **{k: v for k, v in ssm.items() if k in _SSM_SETTINGS})
    except (TypeError, ValueError) as err:
        raise ModelFileError(f"{source}: {err}") from None


def from_mamba_ssm_state_dict(state: dict[str, torch.Tensor], config: MambaConfig,
                              source: str) -> dict[str, torch.Tensor]:
    """mamba-ssm ``MambaLMHeadModel`` parameter names -> ``ssm_core.MambaLMHeadModel`` ones (see the module
    docstring); a key of any other layout is refused, naming it."""
    out, unknown = {}, []
    for key, tensor in state.items():
        if (m := _BRANCH_PARAM.match(key)) is not None:
            out[f"backbone.layers.{m.group(1)}.mixer.fwd.{m.group(2)}"] = tensor
        elif _SAME_NAME.match(key):
            out[key] = tensor
        else:
            unknown.append(key)
    if unknown:
        raise ModelFileError(f"{source}: not the state dict of a mamba-ssm Mamba-1 language model (unexpected "
                             f"{', '.join(sorted(unknown)[:5])}{' ...' if len(unknown) > 5 else ''})")
    head, embedding = out.get("lm_head.weight"), out.get("backbone.embedding.weight")
    if config.tie_embeddings and head is not None:
        if embedding is not None and not torch.equal(head, embedding):
            raise ModelFileError(f"{source}: tie_embeddings is true, but lm_head.weight differs from "
                                 "backbone.embedding.weight")
        del out["lm_head.weight"]  # the tied head is the embedding
    return out


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or a PyTorch ``.bin`` state dict, read without running any code."""
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, EOFError, OSError) as err:
        raise ModelFileError(f"{path}: not a readable state dict of tensors ({type(err).__name__}: "
                             f"{str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ModelFileError(f"{path}: not a state dict (a mapping of parameter names to tensors)")
    return state


def _locate(path: Path) -> tuple[Path, Path]:
    """(config.json, weights file) of what the user named: a checkpoint directory or its weights file."""
    if path.is_dir():
        weights = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
        if weights is None:
            raise ModelFileError(f"{path}: no {' or '.join(WEIGHT_FILES)} here (a mamba-ssm checkpoint directory "
                                 "holds config.json and one of them)")
    elif path.is_file():
        weights = path
    else:
        raise ModelFileError(f"{path}: no such file or directory")
    config = weights.parent / "config.json"
    if not config.is_file():
        raise ModelFileError(f"{config}: missing (mamba-ssm's config.json goes beside the weights)")
    return config, weights


def load_mamba_ssm(path: str | Path) -> MambaLMHeadModel:
    """An ``ssm_core.MambaLMHeadModel`` with the weights of the mamba-ssm checkpoint at ``path`` (a directory with
    config.json + model.safetensors or pytorch_model.bin, or the weights file), float32, in eval mode."""
    config_path, weights = _locate(Path(path))
    try:
        raw = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelFileError(f"{config_path}: not valid JSON ({err})") from None
    config = mamba_ssm_config(raw, str(config_path))
    state = from_mamba_ssm_state_dict(read_state_dict(weights), config, str(weights))
    model = MambaLMHeadModel(config)
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state and not (config.tie_embeddings and k == "lm_head.weight"))
    extra = sorted(k for k in state if k not in expected)  # e.g. more layers than n_layer, biases bias=false lacks
    wrong = sorted(f"{k} {tuple(v.shape)} (config.json implies {tuple(expected[k].shape)})"
                   for k, v in state.items() if k in expected and v.shape != expected[k].shape)
    if missing or extra or wrong:
        raise ModelFileError(f"{weights}: does not fit {config_path}"
                             + "".join(f"; {what} {', '.join(keys[:5])}{' ...' if len(keys) > 5 else ''}"
                                       for what, keys in (("missing", missing), ("unexpected", extra),
                                                          ("shapes", wrong)) if keys))
    model.load_state_dict(state, strict=False)  # strict would want the tied head, which is the embedding
    return model.eval()


def convert_mamba_ssm(source: str | Path, out: str | Path) -> Path:
    """Write the model directory ``out`` (new or empty) from the mamba-ssm checkpoint ``source``; returns ``out``."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: already exists and is not an empty directory; choose a new OUT")
    model = load_mamba_ssm(source)
    info = ModelInfo(task="language-modeling", trained_on=f"converted from the mamba-ssm checkpoint "
                                                          f"{Path(source).name}",
                     tokenizer={"note": "the checkpoint's own tokenizer (not included)"},
                     tags=["mamba-ssm", "converted"])
    return save_model(model, out, info)


def main(argv: Sequence[str] | None = None) -> int:
    from ssm_core.utils.cli import HelpFormatter, add_logging_arguments, apply_common_arguments

    parser = argparse.ArgumentParser(prog="python -m ssm_core.convert", description=__doc__.split("\n\n")[0],
                                     epilog="example: python -m ssm_core.convert mamba-ssm mamba-130m/ "
                                            "models/mamba-130m", formatter_class=HelpFormatter)
    parser.add_argument("format", choices=["mamba-ssm"], help="the layout of IN")
    parser.add_argument("source", metavar="IN", help="checkpoint directory (config.json + weights) or weights file")
    parser.add_argument("out", metavar="OUT", help="model directory to create (new or empty)")
    add_logging_arguments(parser)
    args = parser.parse_args(argv)
    apply_common_arguments(args)
    try:
        out = convert_mamba_ssm(args.source, args.out)
    except (ModelFileError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"wrote {out} (load it with ssm_core.from_pretrained({str(out)!r}))")
    return 0


if __name__ == "__main__":
    sys.exit(main())
