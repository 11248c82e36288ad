"""The one-kernel step of a residual Mamba block (``ssm_core/ops/block_step_triton.py``) against the unfused step.

- On CPU: ``test_block_step_under_triton_interpreter`` runs this file as a script with ``TRITON_INTERPRET=1``
  (set before Triton is imported): the same kernel on the widths of the 6.1m and 24.3m SaShiMi presets, compared
  with the unfused ``ResidualBlock.step`` in float64, output and both states, over several steps.
- On a CUDA GPU (``gpu`` marker): fp32 and bf16 weights, batch 1 and 64, the fused one-launch kernel with its
  grid barriers, replay from a CUDA graph, and whole SaShiMi generations with and without the fused step.
Every parameter is re-drawn at random (norm weight, biases, D, A_log included), so a term the kernel drops or
misreads changes the result; the states start random too.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from ssm_core.models.backbone import ResidualBlock, set_fused_step
from ssm_core.models.config import MambaConfig
from ssm_core.ops.scan_reference import selective_state_update_reference
from triton_interpreter import enter_interpreter_script, run_under_triton_interpreter

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here: run `make test-gpu`")


@dataclass(frozen=True)
class StepCase:
    d_model: int
    batch: int
    dtype: torch.dtype = torch.float64      # the block's weights; the residual stream is float32 / float64
    split: int | None = None
    rows: int | None = None
    bias: bool = False                      # in_proj / out_proj biases
    d_state: int = 16
    d_conv: int = 4
    steps: int = 6                          # > d_conv, so inputs pass all the way through the conv state
    fused: bool | None = None
    warps: int = 4                          # also sets the register tile sizes


def random_block(case: StepCase, seed: int = 0) -> ResidualBlock:
    torch.manual_seed(seed)
    block = ResidualBlock(MambaConfig(d_model=case.d_model, d_state=case.d_state, d_conv=case.d_conv,
                                      bias=case.bias)).double()
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.endswith("A_log"):
                p.add_(0.5 * torch.randn_like(p))
            elif name.endswith("dt_proj.bias"):
                p.copy_(torch.randn_like(p) - 2.0)                    # steps from ~0.02 to ~1
            elif name.endswith("norm.weight") or name.endswith(".D"):
                p.copy_(1.0 + 0.5 * torch.randn_like(p))
            elif p.dim() == 1:                                        # conv, in_proj, out_proj biases
                p.copy_(0.3 * torch.randn_like(p))
            else:
                p.mul_(1.0 + 0.2 * torch.randn_like(p))
    return block


def oracle_step(block: ResidualBlock, h: torch.Tensor, state) -> torch.Tensor:
    """``ResidualBlock.step`` of a float64 block in float64 throughout (the unfused step reads A, D and dt_bias
    through float32, which would cap the float64 comparison at ~1e-8); ``state`` updated in place."""
    m, branch = block.mixer, block.mixer.fwd
    x, z = m.in_proj(block.norm(h)).chunk(2, dim=-1)
    window = torch.cat([state.conv, x[..., None]], dim=-1)
    state.conv.copy_(window[..., 1:])
    x_conv = (window * branch.conv1d.weight[:, 0]).sum(-1)
    x_conv = F.silu(x_conv + branch.conv1d.bias if branch.conv1d.bias is not None else x_conv)
    dt, B, C = branch.x_proj(x_conv).split([m.dt_rank, m.d_state, m.d_state], dim=-1)
    y = selective_state_update_reference(state.ssm, x_conv, dt @ branch.dt_proj.weight.t(), -torch.exp(branch.A_log),
                                         B, C, branch.D, z, dt_bias=branch.dt_proj.bias, dt_softplus=True)
    return h + m.out_proj(y)


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.double().cpu(), want.double().cpu()
    if not torch.isfinite(got).all():
        return math.inf
    return ((got - want).norm() / want.norm().clamp_min(1e-300)).item()


def tolerance(dtype: torch.dtype) -> float:
    return {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 1e-2}[dtype]


def check_block_step(case: StepCase, device, seed: int = 0, via_block: bool = False) -> float:
    """Steps the fused kernel and the float64 step (``oracle_step``, on the same rounded weights) side by side;
    asserts output and states agree every step. ``via_block``: call ``ResidualBlock.step`` (the hook) instead of
    the kernel's function. Returns the largest relative error seen."""
    from ssm_core.ops.block_step_triton import BlockStepConfig, fused_block_step
    ref = random_block(case, seed)
    block = copy.deepcopy(ref).to(device, case.dtype)
    ref = copy.deepcopy(block).double().cpu()           # the same (rounded) weights, in float64
    residual = torch.float64 if case.dtype == torch.float64 else torch.float32
    g = torch.Generator().manual_seed(seed + 1)
    state = block.mixer.allocate_state(case.batch, device)
    ref_state = ref.mixer.allocate_state(case.batch)
    ref_state.conv.copy_(torch.randn(ref_state.conv.shape, generator=g, dtype=torch.float64))
    ref_state.ssm.copy_(torch.randn(ref_state.ssm.shape, generator=g, dtype=torch.float64))
    state.conv.copy_(ref_state.conv)
    state.ssm.copy_(ref_state.ssm)
    ref_state.conv.copy_(state.conv)                    # the rounded conv state, in float64
    config = BlockStepConfig(rows=case.rows, split=case.split, fused=case.fused, num_warps=case.warps)
    tol, worst = tolerance(case.dtype), 0.0
    for t in range(case.steps):
        h = torch.randn(case.batch, case.d_model, generator=g, dtype=torch.float64)
        with torch.no_grad():
            want = oracle_step(ref, h, ref_state)
            h_dev = h.to(device, residual)
            if via_block:
                got = block.step(h_dev, state)
            else:
                got = fused_block_step(h_dev, state.conv, state.ssm, block.step_weights(), config=config)
        assert got.dtype == residual and got.shape == h_dev.shape
        errors = {"out": rel_err(got, want), "conv": rel_err(state.conv, ref_state.conv),
                  "ssm": rel_err(state.ssm, ref_state.ssm)}
        # the block's contribution alone, so an error hidden under a large residual still shows
        errors["delta"] = rel_err(got.double().cpu() - h, want - h)
        assert all(e <= tol for e in errors.values()), f"{case}, step {t}: relative errors above {tol}: {errors}"
        worst = max(worst, *errors.values())
    return worst


# Widths of the SaShiMi presets' levels: 6.1m 64 / 128 / 256, 24.3m 96 / 192 / 384 (d_inner twice that); split
# and rows include uneven slices, partial row tiles, non-power-of-two d_state and d_conv. The interpreter runs
# the three-launch form (fused=None on CPU) except in the last case.
INTERPRETER_CASES = [
    StepCase(64, 1),
    StepCase(64, 3, split=3, rows=2),
    StepCase(96, 2, torch.float32, split=2, rows=2, bias=True),
    StepCase(128, 1, torch.float32, split=4),
    StepCase(192, 3, split=5, rows=4, steps=5),            # several register chunks per slice in every phase
    StepCase(256, 2, torch.float32, split=8, rows=1, steps=5, warps=8),
    StepCase(384, 1, torch.float32, split=16, steps=5),
    StepCase(32, 2, torch.bfloat16, split=2),
    StepCase(40, 3, d_state=7, d_conv=3, split=2, rows=2),
    StepCase(24, 2, d_conv=1, split=1, bias=True),
    StepCase(64, 3, split=1, rows=2, fused=True),          # the one-launch form (its barriers need split 1 here)
]


@pytest.mark.slow
def test_block_step_under_triton_interpreter():
    """Runs this file as a script with TRITON_INTERPRET=1: the kernel's three phases on CPU."""
    pytest.importorskip("triton")
    stdout = run_under_triton_interpreter(__file__, timeout=900)
    assert stdout.count("ok ") == len(INTERPRETER_CASES), stdout


def test_oracle_is_the_unfused_step():
    """The float64 oracle is ResidualBlock.step up to the unfused step's float32 reading of A, D and dt_bias."""
    block = random_block(StepCase(48, 3))
    set_fused_step(block, False)
    state = block.mixer.allocate_state(3)
    state.ssm.normal_()
    state.conv.normal_()
    oracle_state = copy.deepcopy(state)
    for _ in range(6):
        h = torch.randn(3, 48, dtype=torch.float64)
        with torch.no_grad():
            got, want = oracle_step(block, h, oracle_state), block.step(h, state)
        assert 0 < rel_err(got - h, want - h) < 1e-6
        assert rel_err(oracle_state.ssm, state.ssm) < 1e-6 and torch.equal(oracle_state.conv, state.conv)


def test_fused_step_is_off_the_cpu_path():
    """On CPU ResidualBlock.step keeps the unfused path (the fused one needs CUDA), bit for bit."""
    block = random_block(StepCase(16, 2))
    state = block.mixer.allocate_state(2)
    h = torch.randn(2, 16, dtype=torch.float64)
    want = h + block.mixer.step(block.norm(h), copy.deepcopy(state))
    torch.testing.assert_close(block.step(h, state), want, rtol=0, atol=0)


def test_config_errors_name_the_problem():
    from ssm_core.ops.block_step_triton import BlockStepConfig, fused_block_step, pick_config
    cpu = torch.device("cpu")
    with pytest.raises(ValueError, match="rows must be a power of two"):
        pick_config(4, 16, 32, 1000, cpu, BlockStepConfig(rows=3))
    with pytest.raises(ValueError, match="grid barriers need every program resident"):
        pick_config(4, 16, 32, 1000, cpu, BlockStepConfig(split=2, fused=True))
    block = random_block(StepCase(16, 2))
    state = block.mixer.allocate_state(2)
    with pytest.raises(ValueError, match="`ssm_state` must be a floating tensor of shape"):
        fused_block_step(torch.randn(2, 16, dtype=torch.float64), state.conv, state.ssm[:1], block.step_weights())


# ----------------------------------------------------------------------------------------------------------------
# GPU tests
# ----------------------------------------------------------------------------------------------------------------

GPU_CASES = [StepCase(d, b, dtype, steps=8) for d in (64, 128, 256, 96, 192, 384) for b in (1, 64)
             for dtype in (torch.float32, torch.bfloat16)] + [
    StepCase(256, 64, torch.float32, split=16, rows=8),
    StepCase(256, 64, torch.float32, split=16, rows=8, warps=8),
    StepCase(64, 1, torch.float32, split=1, warps=8),
    StepCase(384, 1, torch.float32, split=32),
    StepCase(128, 5, torch.float32, split=3, rows=2, bias=True),
    StepCase(96, 64, torch.float32, split=4, rows=16),
    StepCase(64, 7, torch.float32, split=4, fused=False),
    StepCase(64, 2, torch.float64, split=2),
]


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("case", GPU_CASES, ids=str)
def test_block_step_matches_unfused_gpu(case):
    check_block_step(case, "cuda")


@pytest.mark.gpu
@needs_cuda
def test_grid_barrier_counters_shared_across_shapes_gpu():
    """Launches with different splits and row-tile counts, interleaved, share the barrier counters correctly."""
    cases = [StepCase(128, 1, torch.float32, split=4, steps=2), StepCase(128, 64, torch.float32, split=4, rows=8,
             steps=2), StepCase(96, 3, torch.float32, split=16, rows=1, steps=3),
             StepCase(128, 5, torch.float32, split=4, rows=2, steps=2)]
    for seed in range(2):
        for case in cases:
            check_block_step(case, "cuda", seed=seed)


@pytest.mark.gpu
@needs_cuda
def test_residual_block_step_uses_fused_kernel_gpu():
    """ResidualBlock.step on CUDA goes through the kernel (one launch) and agrees with the float64 step."""
    check_block_step(StepCase(128, 4, torch.float32), "cuda", via_block=True)
    block = random_block(StepCase(128, 4)).cuda().float()
    state = block.mixer.allocate_state(4, "cuda")
    h = torch.randn(4, 128, device="cuda")
    with torch.no_grad():
        block.step(h, state)                              # compile outside the profiler
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            block.step(h, state)
            torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert kernels and all("_block_step_kernel" in k for k in kernels), kernels
    # with gradients wanted the unfused, differentiable path runs (the kernel has no backward)
    out = block.step(h, state)
    assert out.requires_grad and out.grad_fn is not None


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("batch", [1, 64])
def test_block_step_in_cuda_graph_gpu(batch):
    """Replaying a captured fused step (grid barriers and their counter resets included) many times tracks the
    unfused step."""
    case = StepCase(256, batch, torch.float32)
    block = random_block(case).cuda().float()
    block.fused_step_max_batch = batch                    # the kernel at batch 64 too (by default only up to 8)
    ref = copy.deepcopy(block)
    set_fused_step(ref, False)
    state, ref_state = block.mixer.allocate_state(batch, "cuda"), ref.mixer.allocate_state(batch, "cuda")
    h_in = torch.zeros(batch, 256, device="cuda")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        block.step(h_in, state)                           # compile outside the capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        h_out = block.step(h_in, state)
    for s in (state.conv, state.ssm):
        s.zero_()
    g = torch.Generator(device="cuda").manual_seed(0)
    for t in range(50):
        x = torch.randn(batch, 256, device="cuda", generator=g)
        h_in.copy_(x)
        graph.replay()
        with torch.no_grad():
            want = ref.step(x, ref_state)
        assert rel_err(h_out, want) < 1e-4, t
    assert rel_err(state.ssm, ref_state.ssm) < 1e-4 and rel_err(state.conv, ref_state.conv) < 1e-4


def _sashimi(preset: str):
    from audio.sashimi import SashimiConfig, SashimiModel
    torch.manual_seed(0)
    return SashimiModel(SashimiConfig.from_preset(preset)).cuda().eval()


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("preset", ["6.1m", "24.3m"])
def test_sashimi_teacher_forced_logits_fused_vs_unfused_gpu(preset):
    """300 teacher-forced samples (18 centre steps) through the whole U-Net: the logits of the fused and the
    unfused step agree at every sample, and so do all block states at the end."""
    model = _sashimi(preset)
    batch, samples = 4, 300
    codes = torch.randint(0, 256, (batch, samples), device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    results = {}
    for fused in (True, False):
        set_fused_step(model, fused)
        state = model.allocate_state(batch)
        with torch.no_grad():
            logits = torch.stack([model.step(codes[:, t], state) for t in range(samples)], 1)
        results[fused] = logits, state
    (lf, sf), (lu, su) = results[True], results[False]
    per_sample = [rel_err(lf[:, t], lu[:, t]) for t in range(samples)]
    assert max(per_sample) < 1e-4, max(per_sample)
    for name in sf.groups:
        for a, b in zip(sf.groups[name], su.groups[name]):
            assert rel_err(a.ssm, b.ssm) < 1e-4 and rel_err(a.conv, b.conv) < 1e-4, name


@pytest.mark.gpu
@needs_cuda
def test_sashimi_generation_fused_vs_unfused_gpu():
    """audio.generate with CUDA graphs: the same prompt-forced states, and sampled clips that agree (they may part
    only where a uniform draw falls within float rounding of a class boundary, then differ from there)."""
    from audio.generate import Sampler, generate
    model = _sashimi("6.1m")
    prompts = torch.randint(0, 256, (8, 320), generator=torch.Generator().manual_seed(2))
    states = {}
    for fused in (True, False):
        set_fused_step(model, fused)
        with torch.no_grad():  # as in generate(): the fused step is for inference
            sampler = Sampler(model, 8, seed=0)
            for t in range(prompts.shape[1]):
                sampler(prompts[:, t].cuda())
        torch.cuda.synchronize()
        states[fused] = sampler.state
    for name in states[True].groups:
        for a, b in zip(states[True].groups[name], states[False].groups[name]):
            assert rel_err(a.ssm, b.ssm) < 1e-4, name
    clips = {}
    for fused in (True, False):
        set_fused_step(model, fused)
        clips[fused] = generate(model, 8, 400, batch_size=8, seed=3, progress=False).codes
    same_prefix = [int((a != b).nonzero()[0, 0]) if (a != b).any() else len(a)
                   for a, b in zip(clips[True], clips[False])]
    # at least 7 of the 8 clips identical for all 400 samples
    assert sum(n == 400 for n in same_prefix) >= 7, same_prefix


# ----------------------------------------------------------------------------------------------------------------
# Interpreter driver (run as a script by test_block_step_under_triton_interpreter)
# ----------------------------------------------------------------------------------------------------------------

if __name__ == "__main__":
    enter_interpreter_script()
    for case in INTERPRETER_CASES:
        worst = check_block_step(case, "cpu")
        print(f"ok {case}: max relative error {worst:.2e}", flush=True)


@pytest.mark.parametrize("sms", [132, 114, 16])
def test_gpu_launch_shape_fills_the_gpu_and_fits_it(sms):
    """The fused launch's default shape: every program resident (the grid barriers need it), at most 16-way
    split, and on an H100 (132 SMs) the shapes the sweep measured best."""
    from ssm_core.ops.block_step_triton import gpu_launch_shape
    for batch in (1, 2, 3, 7, 8, 16, 33, 64, 128, 256):
        for d_model in (64, 96, 128, 256, 384):
            rows, split, warps = gpu_launch_shape(batch, d_model, 2 * d_model, sms)
            tiles = -(-batch // rows)
            assert rows & (rows - 1) == 0 and 1 <= rows <= 8
            assert 1 <= split <= 16 and split & (split - 1) == 0
            assert tiles * split <= sms or split == 1, (batch, d_model, rows, split)
            assert warps == (8 if d_model >= 128 else 4)
    if sms == 132:
        assert gpu_launch_shape(64, 64, 128, sms) == (8, 16, 4)
        assert gpu_launch_shape(64, 256, 512, sms) == (8, 16, 8)
        assert gpu_launch_shape(1, 128, 256, sms) == (1, 16, 8)
