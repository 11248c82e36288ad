"""Write notebooks/ssm_core_tour.ipynb (run this script after editing the cells below).

    python notebooks/make_ssm_core_tour.py
"""
from nbformat.v4 import new_code_cell, new_markdown_cell

from builder import write_notebook

CELLS = [
    new_markdown_cell("""\
# A tour of `ssm_core`: the selective scan, its backends, and a model's three modes

The engine under the genomics and audio packages is the **selective scan** of Mamba (S6). For each channel
$d$ of an input $u \\in \\mathbb{R}^{D \\times L}$ it runs a linear recurrence over a hidden state
$h_t \\in \\mathbb{R}^{N}$ whose parameters depend on the input at each step:

$$\\Delta_t = \\operatorname{softplus}(\\delta_t + b), \\qquad
h_t = \\exp(\\Delta_t A)\\, h_{t-1} + \\Delta_t\\, B_t\\, u_t, \\qquad
y_t = C_t^{\\top} h_t + D\\, u_t, \\qquad \\text{out}_t = y_t \\cdot \\operatorname{silu}(z_t).$$

$A$ (per channel, negative, so the state decays) is learned; $\\delta_t$, $B_t$, $C_t$ are projections of the
input, which is what makes the scan *selective*: the model chooses per step how much to keep and what to write.
The work is linear in $L$, and the state has a fixed size, so the same function can run over a whole sequence at
once (training), chunk by chunk (long inputs), or one step at a time (generation).

This notebook checks that:
1. a ten-line loop of the formula above matches the library's `reference` backend in float64,
2. the three backends agree: `reference` (plain PyTorch), `cpu` (numba) and `gpu` (Triton, only with CUDA),
3. a small Mamba language model gives the same outputs in parallel, chunked and step-by-step modes,
4. and it plots the scan speeds recorded in `benchmarks/results/`."""),
    new_code_cell("""\
import json
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

import ssm_core
from ssm_core import MambaConfig, MambaLMHeadModel, selective_scan

torch.manual_seed(0)


def scan_inputs(batch, dim, seqlen, dstate, dtype=torch.float64):
    \"\"\"Random scan arguments: u, delta, z (batch, dim, seqlen); A (dim, dstate); B, C (batch, dstate, seqlen).\"\"\"
    return dict(u=torch.randn(batch, dim, seqlen, dtype=dtype),
                delta=0.5 * torch.randn(batch, dim, seqlen, dtype=dtype),
                A=-torch.rand(dim, dstate, dtype=dtype) - 0.1, B=torch.randn(batch, dstate, seqlen, dtype=dtype),
                C=torch.randn(batch, dstate, seqlen, dtype=dtype), D=torch.randn(dim, dtype=dtype),
                z=torch.randn(batch, dim, seqlen, dtype=dtype), delta_bias=0.3 * torch.randn(dim, dtype=dtype))"""),
    new_markdown_cell("""\
## 1. The recurrence, written out

A direct loop over time of the formula above, in float64, against the library's `reference` backend."""),
    new_code_cell("""\
def scan_loop(u, delta, A, B, C, D, z, delta_bias):
    dt = F.softplus(delta + delta_bias[:, None])                      # (batch, dim, seqlen)
    h = torch.zeros(u.shape[0], u.shape[1], A.shape[1], dtype=u.dtype)  # (batch, dim, dstate)
    ys = []
    for t in range(u.shape[2]):
        decay = torch.exp(dt[:, :, t, None] * A)                        # exp(Δ_t A)
        h = decay * h + dt[:, :, t, None] * B[:, None, :, t] * u[:, :, t, None]
        ys.append((h * C[:, None, :, t]).sum(-1) + D * u[:, :, t])
    return torch.stack(ys, -1) * F.silu(z)


x = scan_inputs(2, 8, 64, 16)
loop = scan_loop(**x)
reference = selective_scan(**x, delta_softplus=True, backend="reference")
differences = {"loop_vs_reference": float((loop - reference).abs().max())}
print(f"loop vs reference backend (float64): max |difference| = {differences['loop_vs_reference']:.2e}")
assert torch.allclose(loop, reference, rtol=1e-10, atol=1e-10)"""),
    new_markdown_cell("""\
## 2. Three backends, one function

The `cpu` backend (numba kernels, parallel over batch x channels) and the `gpu` backend (Triton) compute in
float32; both are compared with the float64 reference on fresh random inputs, outputs and gradients. The
`gpu` check runs only where CUDA is available."""),
    new_code_cell("""\
def outputs_and_grads(x, backend, device="cpu", dtype=torch.float32):
    args = {k: v.detach().to(device, dtype).requires_grad_() for k, v in x.items()}
    out = selective_scan(**args, delta_softplus=True, backend=backend)
    (out * torch.linspace(-1, 1, out.shape[-1], device=device, dtype=dtype)).sum().backward()
    return out.detach().cpu().double(), {k: v.grad.cpu().double() for k, v in args.items()}


x = scan_inputs(2, 16, 256, 16)
ref_out, ref_grads = outputs_and_grads(x, "reference", dtype=torch.float64)
backends = [("cpu", "cpu")] + ([("gpu", "cuda")] if torch.cuda.is_available() else [])
for backend, device in backends:
    out, grads = outputs_and_grads(x, backend, device)
    worst = max([(out - ref_out).abs().max() / ref_out.abs().max()] +
                [(grads[k] - ref_grads[k]).abs().max() / ref_grads[k].abs().max() for k in grads])
    print(f"{backend:>4} (float32) vs reference (float64): worst relative difference over output and "
          f"{len(grads)} gradients = {worst:.1e}")
    assert worst < 1e-4
    if backend == "cpu":  # the GPU row exists only where CUDA does
        differences["cpu_vs_reference"] = float(worst)
if not torch.cuda.is_available():
    print(" gpu: skipped (no CUDA device here)")"""),
    new_markdown_cell("""\
## 3. Parallel, chunked and step-by-step: one model, three modes

A small Mamba language model (2 layers, width 32) in float64 reads one sequence three ways: all at once; in
chunks of 24 tokens carrying the state between chunks (how long genomes are classified in bounded memory); and
one token at a time (how audio and text are generated). The logits must agree."""),
    new_code_cell("""\
model = MambaLMHeadModel(MambaConfig(d_model=32, n_layer=2, vocab_size=16)).double().eval()
ids = torch.randint(0, 16, (2, 96))
with torch.no_grad():
    parallel = model(ids)
    states, chunks = model.allocate_states(2, dtype=torch.float64), []
    for start in range(0, ids.shape[1], 24):
        logits, states = model(ids[:, start:start + 24], states)
        chunks.append(logits)
    chunked = torch.cat(chunks, 1)
    states = model.allocate_states(2, dtype=torch.float64)
    stepped = torch.stack([model.step(ids[:, t], states) for t in range(ids.shape[1])], 1)
for name, other in (("chunked", chunked), ("step", stepped)):
    differences[f"parallel_vs_{name}"] = float((parallel - other).abs().max())
    print(f"parallel vs {name:>7}: max |difference| = {differences[f'parallel_vs_{name}']:.2e}")
    assert torch.allclose(parallel, other, rtol=1e-9, atol=1e-9)"""),
    new_code_cell("""\
print(json.dumps(differences))  # the tests re-run this notebook and compare these with the committed outputs""",
                  metadata={"tags": ["results"]}),
    new_markdown_cell("""\
## 4. How fast: results recorded in `benchmarks/results/`

`benchmarks/cpu_scan.py` (`make bench-cpu`) writes `cpu_scan_*.json` (numba against the plain-PyTorch reference);
`benchmarks/gpu_scan.py` writes `gpu_scan_*.json` (our CUDA and Triton scans against mamba-ssm's kernel and the
reference on a GPU; the newest full run is plotted, by date, then by kernel version in the file name, and named
below the plot: its numbers belong to that kernel version, not necessarily to the code you have). The plot shows
whatever results are present; a machine that has run neither benchmark gets a note instead."""),
    new_code_cell("""\
results = Path(ssm_core.__file__).resolve().parents[1] / "benchmarks" / "results"
bars = []  # (label, milliseconds for each implementation)
for path in sorted(results.glob("cpu_scan_*.json")):
    print("CPU bars from", path.name)
    r = json.loads(path.read_text())["part1"]
    bars.append((f"CPU {r['dtype']} {tuple(r['shape'])}\\nfwd+bwd", {"ours": 1e3 * r["cpu_fwdbwd_s"],
                                                                   "reference": 1e3 * r["reference_fwdbwd_s"]}))
gpu_runs = [(json.loads(p.read_text()), p.name) for p in results.glob("gpu_scan_*.json")]
gpu_runs = sorted(((r, name) for r, name in gpu_runs if r.get("shapes")), key=lambda run: (run[0]["date"], run[1]))
if gpu_runs:
    print("GPU bars from", gpu_runs[-1][1])
for s in gpu_runs[-1][0]["shapes"] if gpu_runs else []:  # the newest full run
    times = {impl: s[impl]["fwd_bwd_ms"] for impl in ("ours_cuda", "ours_triton", "mamba_ssm", "reference")
             if isinstance(s.get(impl), dict) and "fwd_bwd_ms" in s[impl]}
    if times:
        bars.append((f"{s['shape']} {s['dtype']}\\nGPU {gpu_runs[-1][0]['date'][:10]}", times))
if not bars:
    print(f"no cpu_scan_*.json or gpu_scan_*.json in {results}: run `make bench-cpu` (or benchmarks/gpu_scan.py "
          "on a GPU) to record some")
else:
    impls = sorted({k for _, t in bars for k in t})
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(bars)), 5))
    width = 0.8 / len(impls)
    for j, impl in enumerate(impls):
        xs = [i + j * width for i, (_, t) in enumerate(bars) if impl in t]
        ax.bar(xs, [t[impl] for _, t in bars if impl in t], width, label=impl)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(bars))], [label for label, _ in bars], fontsize=7,
                  rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("milliseconds (log scale)")
    ax.set_title("selective scan, forward + backward")
    ax.legend()
    fig.tight_layout()
    plt.show()
    for label, times in bars:
        print(label.replace("\\n", " "), {k: f"{v:.2f} ms" for k, v in times.items()})"""),
]


if __name__ == "__main__":
    write_notebook(CELLS, "ssm_core_tour")
