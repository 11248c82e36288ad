"""mamba-ssm weights into ssm_core: a state dict in mamba-ssm's MambaLMHeadModel layout (made by hand here), its
config.json, safetensors and .bin files, the logits against a direct computation of mamba-ssm's forward, and the
layouts and files that are refused."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from ssm_core import from_pretrained
from ssm_core.convert import convert_mamba_ssm, load_mamba_ssm, main
from ssm_core.models import ModelFileError

D_MODEL, N_LAYER, VOCAB, D_STATE, D_CONV, EXPAND = 8, 2, 13, 4, 3, 2
PADDED = 16  # VOCAB rounded up to pad_vocab_size_multiple 8
CONFIG = {"d_model": D_MODEL, "n_layer": N_LAYER, "vocab_size": VOCAB,
          "ssm_cfg": {"d_state": D_STATE, "d_conv": D_CONV}, "rms_norm": True, "residual_in_fp32": True, "fused_add_norm": True, "pad_vocab_size_multiple": 8,
          "tie_embeddings": True}


def mamba_ssm_state_dict(seed: int = 0, tied: bool = True) -> dict[str, torch.Tensor]:
    """Random weights under mamba-ssm's parameter names and shapes (d_inner = expand * d_model, dt_rank =
    ceil(d_model / 16)), with a tied lm_head saved as a copy of the embedding, as torch.save writes it."""
    gen = torch.Generator().manual_seed(seed)
    d_inner, dt_rank = EXPAND * D_MODEL, math.ceil(D_MODEL / 16)

    def rand(*shape, scale=0.3):
        return torch.randn(*shape, generator=gen) * scale

    state = {"backbone.embedding.weight": rand(PADDED, D_MODEL, scale=1.0),
             "backbone.norm_f.weight": 1 + rand(D_MODEL, scale=0.1)}
    for i in range(N_LAYER):
        p = f"backbone.layers.{i}."
        state.update({
            p + "norm.weight": 1 + rand(D_MODEL, scale=0.1),
            p + "mixer.in_proj.weight": rand(2 * d_inner, D_MODEL),
            p + "mixer.conv1d.weight": rand(d_inner, 1, D_CONV),
            p + "mixer.conv1d.bias": rand(d_inner),
            p + "mixer.x_proj.weight": rand(dt_rank + 2 * D_STATE, d_inner),
            p + "mixer.dt_proj.weight": rand(d_inner, dt_rank),
            p + "mixer.dt_proj.bias": rand(d_inner) - 3,
            p + "mixer.A_log": torch.log(torch.rand(d_inner, D_STATE, generator=gen) * 3 + 0.5),
            p + "mixer.D": rand(d_inner, scale=1.0),
            p + "mixer.out_proj.weight": rand(D_MODEL, d_inner),
        })
    state["lm_head.weight"] = state["backbone.embedding.weight"].clone() if tied else rand(PADDED, D_MODEL)
    return state


def reference_logits(state: dict[str, torch.Tensor], ids: torch.Tensor) -> torch.Tensor:
    """mamba-ssm's MambaLMHeadModel forward written out in float64 from the state dict: each Block adds the
    residual, RMS-normalises and applies the mixer (in_proj -> causal conv -> SiLU -> x_proj -> dt_proj, softplus
    -> selective scan, one step at a time -> D skip -> SiLU(z) gate -> out_proj); then norm_f and lm_head."""
    w = {k: v.double() for k, v in state.items()}

    def rms(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * weight

    hidden, residual = w["backbone.embedding.weight"][ids], None  # (batch, seqlen, d_model)
    seqlen = ids.shape[1]
    for i in range(N_LAYER):
        p = f"backbone.layers.{i}.mixer."
        residual = hidden if residual is None else hidden + residual
        x, z = (rms(residual, w[f"backbone.layers.{i}.norm.weight"]) @ w[p + "in_proj.weight"].T).chunk(2, -1)
        kernel = w[p + "conv1d.weight"][:, 0]                                   # (d_inner, d_conv)
        padded = F.pad(x, (0, 0, D_CONV - 1, 0))                                # zeros before the first step
        x = torch.stack([(padded[:, t:t + D_CONV] * kernel.T).sum(1) for t in range(seqlen)], 1)
        x = F.silu(x + w[p + "conv1d.bias"])
        dt, B, C = (x @ w[p + "x_proj.weight"].T).split([1, D_STATE, D_STATE], -1)
        dt = F.softplus(dt @ w[p + "dt_proj.weight"].T + w[p + "dt_proj.bias"])  # (batch, seqlen, d_inner)
        A = -torch.exp(w[p + "A_log"])
        h, ys = torch.zeros(ids.shape[0], x.shape[-1], D_STATE, dtype=torch.float64), []
        for t in range(seqlen):
            h = torch.exp(dt[:, t, :, None] * A) * h + dt[:, t, :, None] * B[:, t, None, :] * x[:, t, :, None]
            ys.append((h * C[:, t, None, :]).sum(-1) + w[p + "D"] * x[:, t])
        hidden = (torch.stack(ys, 1) * F.silu(z)) @ w[p + "out_proj.weight"].T
    out = rms(hidden + residual, w["backbone.norm_f.weight"])
    return out @ w["lm_head.weight"].T


def write_checkpoint(directory: Path, state: dict, config: dict = CONFIG, fmt: str = "safetensors") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    if fmt == "safetensors":  # mamba-ssm checkpoints in safetensors store a tied head once
        save_file({k: v for k, v in state.items() if k != "lm_head.weight" or not config["tie_embeddings"]},
                  directory / "model.safetensors")
    else:
        torch.save(state, directory / "pytorch_model.bin")
    return directory


IDS = torch.tensor([[1, 5, 12, 0, 7, 7, 3, 9, 11], [4, 4, 2, 8, 10, 6, 1, 0, 12]])


def test_a_converted_safetensors_checkpoint_gives_mamba_ssms_logits(tmp_path, capsys):
    state = mamba_ssm_state_dict()
    source = write_checkpoint(tmp_path / "mamba-tiny", state)
    assert main(["mamba-ssm", str(source), str(tmp_path / "out")]) == 0
    assert "from_pretrained" in capsys.readouterr().out
    model = from_pretrained(tmp_path / "out")
    c = model.config
    assert (c.d_model, c.n_layer, c.vocab_size, c.d_state, c.d_conv, c.padded_vocab_size) == (
        D_MODEL, N_LAYER, VOCAB, D_STATE, D_CONV, PADDED)
    assert model.lm_head.weight is model.backbone.embedding.weight
    assert model.model_info.trained_on == "converted from the mamba-ssm checkpoint mamba-tiny"
    with torch.no_grad():
        got = model.double()(IDS)
    torch.testing.assert_close(got, reference_logits(state, IDS), rtol=1e-9, atol=1e-9)
    # step mode (generation) reads the same weights
    states = model.allocate_states(2, dtype=torch.float64)
    with torch.no_grad():
        stepped = torch.stack([model.step(IDS[:, t], states) for t in range(IDS.shape[1])], 1)
    torch.testing.assert_close(stepped, got, rtol=1e-9, atol=1e-9)


def test_a_bin_state_dict_and_untied_head_convert(tmp_path):
    for tied in (True, False):
        state = mamba_ssm_state_dict(seed=1, tied=tied)
        source = write_checkpoint(tmp_path / f"bin_{tied}", state, {**CONFIG, "tie_embeddings": tied}, fmt="bin")
        model = load_mamba_ssm(source / "pytorch_model.bin")  # the weights file names its checkpoint too
        assert model.config.tie_embeddings == tied
        assert (model.lm_head.weight is model.backbone.embedding.weight) == tied
        with torch.no_grad():
            got = model.double()(IDS)
        torch.testing.assert_close(got, reference_logits(state, IDS), rtol=1e-9, atol=1e-9)


class _RunsCodeWhenUnpickled:
    """What a malicious .bin holds: unpickling it with weights_only=False would create ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_bin_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code_ran"
    state = {**mamba_ssm_state_dict(), "extra": _RunsCodeWhenUnpickled(marker)}
    source = write_checkpoint(tmp_path / "evil", {}, fmt="bin")
    torch.save(state, source / "pytorch_model.bin")
    with pytest.raises(ModelFileError, match="pytorch_model.bin"):
        load_mamba_ssm(source)
    assert not marker.exists()


@pytest.mark.parametrize("change, named", [
    ({"ssm_cfg": {"layer": "Mamba2"}}, "ssm_cfg.layer"),
    ({"rms_norm": False}, "rms_norm"),
    ({"d_intermediate": 32}, "d_intermediate"),
    ({"attn_layer_idx": [1]}, "attn_layer_idx"),
    ({"n_layer": 3}, "missing backbone.layers.2"),
    ({"d_model": 12}, "shapes"),
    ({"surprise": 1}, "surprise"),
])
def test_layouts_without_a_counterpart_are_refused_naming_the_setting(tmp_path, change, named):
    source = write_checkpoint(tmp_path / "ckpt", mamba_ssm_state_dict(), {**CONFIG, **change})
    with pytest.raises(ModelFileError, match=named):
        load_mamba_ssm(source)


def test_foreign_keys_and_an_inconsistent_tied_head_are_refused(tmp_path):
    state = {**mamba_ssm_state_dict(), "backbone.layers.0.mlp.fc1.weight": torch.zeros(4, 4)}
    with pytest.raises(ModelFileError, match="backbone.layers.0.mlp.fc1.weight"):
        load_mamba_ssm(write_checkpoint(tmp_path / "mlp", state, fmt="bin"))
    state = mamba_ssm_state_dict(tied=False)  # tie_embeddings true, yet a head of its own
    with pytest.raises(ModelFileError, match="lm_head.weight differs"):
        load_mamba_ssm(write_checkpoint(tmp_path / "untied", state, fmt="bin"))


def test_the_command_line_refuses_a_used_out_and_bad_input_without_a_traceback(tmp_path):
    source = write_checkpoint(tmp_path / "ckpt", mamba_ssm_state_dict())
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    command = [sys.executable, "-m", "ssm_core.convert", "mamba-ssm"]
    for args, expected in (([source, out], f"{out}: already exists"),
                           ([tmp_path / "nothing", tmp_path / "o2"], "nothing: no such file or directory"),
                           ([out, tmp_path / "o3"], "no model.safetensors or pytorch_model.bin")):
        proc = subprocess.run([*command, *map(str, args)], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and expected in proc.stderr
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and not (tmp_path / "o2").exists()
    convert_mamba_ssm(source, tmp_path / "empty_ok")  # a new directory is fine; so is an empty one
