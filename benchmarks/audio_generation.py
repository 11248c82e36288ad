"""Autoregressive generation speed of the SaShiMi-Mamba presets: the audio issue's targets.

    python benchmarks/audio_generation.py                # on the GPU: unfused vs fused block steps, side by side
    python benchmarks/audio_generation.py --sweep        # also time one block step per launch shape (tuning)
    python benchmarks/audio_generation.py --compile      # also with each block's step fused by torch.compile
    python benchmarks/audio_generation.py --quick        # on the CPU: fewer samples per measurement
    python benchmarks/audio_generation.py --profile      # also the kernels a step spends its GPU time in

Targets (H100, 16 kHz): with the 6.1m preset, 64 one-second clips in at most 4 s (16x real time in aggregate),
and batch-1 streaming at most 62.5 us per sample (real time); the same measured for the 24.3m preset. Each
measurement runs ``audio.generate.generate`` (CUDA graphs on a GPU, plain steps on a CPU) on a randomly
initialised model -- the weights do not change the cost -- after one untimed warm-up run; graph capture is
reported apart (``setup_s``). A step costs the same at every sample once the 16 phase graphs cycle, so by default
``--samples`` (4000, 250 cycles) samples are timed and the time of a one-second clip (16000) extrapolated from the
per-sample time (``extrapolated`` in the JSON). On a GPU two variants: ``unfused`` (each block step ~10 kernels)
and ``fused`` (one Triton kernel per block step, ``ssm_core/ops/block_step_triton.py``). Also one training step's
time (batch 16 of 1 s clips on a GPU, bf16 autocast), to estimate the paper's 200K steps. Results go to
benchmarks/results/audio_generation_<device>[_quick].json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from audio.generate import generate  # noqa: E402
from audio.sashimi import SashimiConfig, SashimiModel, next_sample_nll, parameter_count  # noqa: E402
from ssm_core.models.backbone import ResidualBlock, set_fused_step  # noqa: E402
from ssm_core.models.config import MambaConfig  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SAMPLE_RATE = 16000
TARGET_BATCH_S = 4.0            # 64 one-second clips
TARGET_STREAM_US = 1e6 / SAMPLE_RATE


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "_")
    return f"cpu_{platform.machine()}_{os.cpu_count()}cores_{torch.get_num_threads()}threads"


def measure(model: SashimiModel, clips: int, samples: int, cuda_graph: bool) -> dict:
    """Generate ``clips`` clips of ``samples`` samples in one batch; time and throughput."""
    generate(model, clips, min(samples, 2 * model.config.stride), batch_size=clips, cuda_graph=cuda_graph,
             progress=False)  # warm-up: kernel compilation (Triton, torch.compile), numba JIT
    result = generate(model, clips, samples, batch_size=clips, cuda_graph=cuda_graph, progress=False)
    us_per_step = 1e6 * result.seconds / samples
    return {"clips": clips, "samples_per_clip": samples, "extrapolated": samples != SAMPLE_RATE,
            "seconds": round(result.seconds, 4),
            "setup_s": round(result.setup_seconds, 4), "us_per_step": round(us_per_step, 2),
            "samples_per_second": round(result.samples_per_second, 1),
            "realtime_factor_aggregate": round(result.samples_per_second / SAMPLE_RATE, 3),
            # what a whole second of audio per clip would take at this rate
            "seconds_per_second_of_audio": round(us_per_step * SAMPLE_RATE / 1e6, 4)}


def profile_generation(model: SashimiModel, clips: int, samples: int = 64, top: int = 12) -> dict:
    """Where a generation step's GPU time goes: torch.profiler over ``samples`` steps (CUDA graphs replayed, as in
    ``measure``), the ``top`` kernels by total GPU time, each with its calls and microseconds per sample."""
    from torch.profiler import ProfilerActivity, profile
    generate(model, clips, 2 * model.config.stride, batch_size=clips, progress=False)  # compile, capture once
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        generate(model, clips, samples, batch_size=clips, progress=False)
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    total = sum(e.self_device_time_total for e in kernels)
    kernels.sort(key=lambda e: e.self_device_time_total, reverse=True)
    return {"clips": clips, "samples": samples, "kernels_per_sample": round(sum(e.count for e in kernels) / samples, 1),
            "gpu_us_per_sample": round(total / samples, 1),
            "top": [{"kernel": e.key[:120], "calls_per_sample": round(e.count / samples, 2),
                     "us_per_sample": round(e.self_device_time_total / samples, 2)} for e in kernels[:top]]}


def time_block_steps(width: int, batch: int, config, n_blocks: int = 16, replays: int = 30) -> float:
    """Microseconds per block step of ``n_blocks`` chained residual blocks of ``width`` (fp32, d_state 16),
    replayed from one CUDA graph: config None is the unfused step, else the fused kernel with that
    ``BlockStepConfig``."""
    from ssm_core.ops.block_step_triton import fused_block_step
    torch.manual_seed(0)
    blocks = [ResidualBlock(MambaConfig(d_model=width)).cuda().eval() for _ in range(n_blocks)]
    states = [b.mixer.allocate_state(batch, "cuda") for b in blocks]
    h_in = torch.randn(batch, width, device="cuda")

    def chain():
        h = h_in
        for block, state in zip(blocks, states):
            if config is None:
                block.fused_step = False
                h = block.step(h, state)
            else:
                h = fused_block_step(h, state.conv, state.ssm, block.step_weights(), config=config)
        return h

    with torch.no_grad():
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            chain()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            chain()
        graph.replay()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        end.synchronize()
    return 1e3 * start.elapsed_time(end) / (replays * n_blocks)


def sweep_block_steps(widths: list[int], budget_s: float) -> dict:
    """One block step's time per width, batch (1, 64) and launch shape (rows per program, split, warps), each
    timed after its Triton compilation, until ``budget_s`` (compilations included) is spent: the data for ``block_step_triton.pick_config``. ``default``
    is what pick_config chose."""
    from ssm_core.ops.block_step_triton import BlockStepConfig, pick_config
    shapes = {1: [(1, s, 4) for s in (1, 2, 4, 8, 16)] + [(1, 4, 8), (1, 16, 8)],
              64: [(1, 1, 4), (1, 2, 4), (2, 1, 4), (2, 2, 4), (4, 1, 4), (4, 2, 4), (4, 4, 4), (8, 1, 4),
                   (8, 4, 4), (8, 8, 4), (8, 16, 4), (2, 4, 4), (8, 4, 8), (8, 16, 8)]}
    sms = torch.cuda.get_device_properties(0).multi_processor_count  # a fused launch needs every program resident
    out, started = {"rows": [], "complete": True}, time.perf_counter()
    for width in widths:
        for batch, grid in shapes.items():
            weight_bytes = sum(p.numel() * p.element_size() for p in ResidualBlock(MambaConfig(d_model=width))
                               .parameters())
            default = pick_config(batch, width, 2 * width, weight_bytes, torch.device("cuda"))
            row = {"width": width, "batch": batch, "unfused_us": round(time_block_steps(width, batch, None), 2),
                   "default": [default.rows, default.split, default.num_warps]}
            for rows, split, warps in sorted(set(grid) | {(default.rows, default.split, default.num_warps)}):
                if -(-batch // rows) * split > sms:
                    continue
                if time.perf_counter() - started > budget_s:
                    out["complete"] = False
                    break
                row[f"rows{rows}_split{split}_warps{warps}_us"] = round(time_block_steps(
                    width, batch, BlockStepConfig(rows=rows, split=split, num_warps=warps)), 2)
            print("block step", json.dumps(row), flush=True)
            out["rows"].append(row)
            if not out["complete"]:
                print(f"sweep stopped after its {budget_s:.0f} s budget", flush=True)
                return out
    return out


def measure_training(model: SashimiModel, batch: int, samples: int, steps: int = 5) -> dict:
    """Seconds per optimiser step of next-sample training (bf16 autocast on CUDA, as the engine trains), after
    one untimed step: what the paper's 200K steps at batch 16 of 1 s clips would cost."""
    device = model.embedding.weight.device
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    codes = torch.randint(0, model.config.n_classes, (batch, samples), device=device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def one_step() -> None:
        with autocast:
            loss = next_sample_nll(model, codes, model.config.start_code).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    one_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = (time.perf_counter() - start) / steps
    model.eval()
    return {"batch": batch, "samples_per_clip": samples, "seconds_per_step": round(seconds, 4),
            "samples_per_second": round(batch * samples / seconds, 1),
            "hours_for_200k_steps": round(seconds * 200_000 / 3600, 2)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="CPU-sized run: 256 samples per measurement instead of --samples")
    parser.add_argument("--samples", type=int, default=4000,
                        help="samples timed per measurement (a one-second clip is extrapolated; default 4000)")
    parser.add_argument("--presets", default="6.1m,24.3m", help="comma-separated presets (default: 6.1m,24.3m)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--no-cuda-graph", action="store_true", help="plain steps on the GPU too (for comparison)")
    parser.add_argument("--no-training", action="store_true", help="skip the training-step measurement")
    parser.add_argument("--compile", action="store_true",
                        help="also measure with each block's step fused by torch.compile (SashimiModel.compile_step)")
    parser.add_argument("--sweep", action="store_true",
                        help="also time one block step per width, batch and launch shape of the fused kernel")
    parser.add_argument("--sweep-seconds", type=float, default=180.0, help="time budget of --sweep (default 180)")
    parser.add_argument("--profile", action="store_true",
                        help="also list the GPU kernels a generation step spends its time in (torch.profiler)")
    parser.add_argument("--out-dir", default=str(RESULTS), help="where the JSON goes (default benchmarks/results)")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    samples = 256 if args.quick else args.samples
    cuda_graph = not args.no_cuda_graph
    result = {"device": device_name(device), "device_type": device.type, "quick": args.quick,
              "cuda_graph": cuda_graph and device.type == "cuda", "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "samples_timed": samples, "targets": {
                  "batch64_one_second_clips_s": TARGET_BATCH_S, "batch1_us_per_sample": TARGET_STREAM_US},
              "presets": {}}
    if samples != SAMPLE_RATE:
        result["extrapolation"] = (f"{samples} samples timed per measurement; one-second figures are the per-sample "
                                   f"time x {SAMPLE_RATE}")
    if device.type != "cuda":
        result["note"] = ("CPU measurement: the targets are for an H100; per-step times extrapolate to 1 s of audio; "
                          "the machine may be shared (see load_average); the fused step is CUDA-only")
        result["numba_threads"] = int(os.environ.get("NUMBA_NUM_THREADS", os.cpu_count()))
        result["load_average_at_start"] = os.getloadavg()
    # the fused block step runs on CUDA only; elsewhere every variant would be the unfused step
    variants = ["unfused"] + (["fused"] if device.type == "cuda" else []) + (["compiled"] if args.compile else [])
    names = args.presets.split(",")
    for name in names:
        for variant in variants:
            torch.manual_seed(0)
            model = SashimiModel(SashimiConfig.from_preset(name)).to(device).eval()
            set_fused_step(model, variant == "fused", max_batch=1 << 20)  # "fused": the kernel at every batch
            key = f"{name} {variant}"
            try:
                if variant == "compiled":
                    model.compile_step()
                batch = measure(model, 64, samples, cuda_graph)
                stream = measure(model, 1, samples, cuda_graph)
            except Exception as err:  # an optional variant failing must not lose the other measurements
                if variant == "unfused":
                    raise
                result["presets"][key] = {"error": f"{type(err).__name__}: {err}"}
                print(f"{key}: failed: {type(err).__name__}: {err}", flush=True)
                continue
            result["presets"][key] = r = {
                "parameters": parameter_count(model), "batch64": batch, "batch1": stream,
                "batch64_one_second_s": batch["seconds_per_second_of_audio"],
                "batch64_ratio_to_target": round(batch["seconds_per_second_of_audio"] / TARGET_BATCH_S, 3),
                "meets_batch64_target": batch["seconds_per_second_of_audio"] <= TARGET_BATCH_S,
                "batch1_us_per_sample": stream["us_per_step"],
                "batch1_ratio_to_target": round(stream["us_per_step"] / TARGET_STREAM_US, 3),
                "meets_batch1_target": stream["us_per_step"] <= TARGET_STREAM_US}
            if args.profile and device.type == "cuda":
                try:
                    r["profile"] = {f"batch{b}": profile_generation(model, b) for b in (64, 1)}
                except Exception as err:  # a diagnostic: never lose the measurements for it
                    r["profile"] = {"error": f"{type(err).__name__}: {err}"}
                for b, p in r["profile"].items():
                    if b == "error":
                        print(f"{key}: profile failed: {p}", flush=True)
                        continue
                    print(f"{key} {b}: {p['kernels_per_sample']} kernels and {p['gpu_us_per_sample']} us of GPU time "
                          f"per sample; top: " + "; ".join(f"{k['kernel'][:60]} {k['us_per_sample']} us"
                                                         for k in p["top"][:6]), flush=True)
            if variant == "unfused" and not args.no_training:  # training does not use the step path
                r["training"] = measure_training(model, 16 if device.type == "cuda" else 2,
                                                 SAMPLE_RATE if device.type == "cuda" else 1024)
            print(f"{key}: {r['parameters']:,} parameters; 64 clips x 1 s: {r['batch64_one_second_s']:.3f} s "
                  f"(target {TARGET_BATCH_S} s); batch 1: {r['batch1_us_per_sample']:.1f} us/sample "
                  f"(target {TARGET_STREAM_US} us)" + (f"; training {r['training']['seconds_per_step']:.3f} s/step "
                  f"at batch {r['training']['batch']} x {r['training']['samples_per_clip']}" if "training" in r else ""),
                  flush=True)
            del model
    print_table(result, names, variants)
    if args.sweep and device.type == "cuda":
        widths = list(dict.fromkeys(w for name in names for w in SashimiConfig.from_preset(name).widths))
        result["block_step_sweep"] = sweep_block_steps(widths, args.sweep_seconds)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"audio_generation_{result['device']}{'_quick' if args.quick else ''}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {path}")
    return result


def print_table(result: dict, names: list[str], variants: list[str]) -> None:
    """Variants side by side per preset, with the ratio to each target (< 1 meets it) and the speed-up over the
    unfused step."""
    print(f"\n{'preset':8} {'variant':9} {'b64 us/sample':>13} {'64x1s clips s':>13} {'/4 s':>6} "
          f"{'b1 us/sample':>12} {'/62.5 us':>8} {'speed-up b64, b1':>17}")
    for name in names:
        base = result["presets"].get(f"{name} unfused", {})
        for variant in variants:
            r = result["presets"].get(f"{name} {variant}", {})
            if "error" in r or not r:
                print(f"{name:8} {variant:9} failed")
                continue
            speedup = ""
            if variant != "unfused" and base:
                b64 = base["batch64"]["us_per_step"] / r["batch64"]["us_per_step"]
                b1 = base["batch1"]["us_per_step"] / r["batch1"]["us_per_step"]
                r["speedup_over_unfused"] = {"batch64": round(b64, 2), "batch1": round(b1, 2)}
                speedup = f"{b64:.2f}x, {b1:.2f}x"
            print(f"{name:8} {variant:9} {r['batch64']['us_per_step']:13.1f} {r['batch64_one_second_s']:13.3f} "
                  f"{r['batch64_ratio_to_target']:6.2f} {r['batch1_us_per_sample']:12.1f} "
                  f"{r['batch1_ratio_to_target']:8.2f} {speedup:>17}", flush=True)


if __name__ == "__main__":
    main()
