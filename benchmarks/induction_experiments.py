"""Controlled experiments on induction-heads extrapolation (issue #23, notes in NOTES_induction.md).

One variant of the paper's setup per run, trained on CPU with a plain Adam loop (the engine's AdamW at weight
decay 0 is the same update) so that accuracy by test length can be measured at several step counts of one run:

    python benchmarks/induction_experiments.py NAME [--train-len 64] [--steps 20000] [--milestones 2000,5000,...]
        [--eval-lens 64,...,65536] [variant flags]

writes benchmarks/results/induction_NAME.json: the settings, the device, the commit, and per milestone the step,
the training loss, accuracy by test length and Δ statistics of each layer (see ``delta_stats``). With
``--from-run RUN --steps N`` it measures instead the model that ``python -m ssm_core.synthetic induction`` trained
in RUN (N: its step count, for the record).
Run it under ``nice -n 19`` with OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 (it sets torch's threads to 1 itself).
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ssm_core.synthetic.runner import SyntheticExperiment, SyntheticTask, accuracy_by_length
from ssm_core.train.checkpoint import load_checkpoint
from ssm_core.train.run_dir import load_trained_model

RESULTS = Path(__file__).resolve().parent / "results"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@torch.no_grad()
def delta_stats(model, task: SyntheticTask, seqlen: int = 1024, n: int = 16, seed: int = 123) -> list[dict]:
    """Per layer, Δ = softplus(dt_proj(x) + bias) on `n` test sequences of `seqlen`: at the value position (the
    token after the first trigger) and at the ordinary positions after it. For each channel, Δ(value) is how much
    of the value it writes and its slowest state keeps exp(-T * mean ordinary Δ * min |A|) of that after T ordinary
    tokens (time constant tau = 1 / (mean ordinary Δ * min |A|)). ``memory_at[T]`` is the best channel's
    write * keep after T tokens: flat in T for a memory that does not depend on the length. The 8 channels with the
    largest write * keep at 64 x train_len are listed."""
    ids = torch.stack([task.dataset(n, seqlen, seed)[i]["input_ids"] for i in range(n)])
    trigger = task.exp.data.vocab - 1
    first = (ids[:, :-1] == trigger).int().argmax(1)                          # (n,)
    captured = []

    def hook(branch, args, _out):
        x = args[0]                                                           # (batch, d_inner, seqlen)
        x_conv = F.silu(branch.conv1d(x)[..., :x.shape[-1]])
        delta, _, _, bias = branch._ssm_params(x_conv)
        captured.append(F.softplus(delta + bias[None, :, None]))
    model.eval()
    handles = [layer.mixer.fwd.register_forward_hook(hook) for layer in model.backbone.layers]
    try:
        with torch.enable_grad():  # the module path (not the fused no-grad CPU kernel) so the hook sees x
            model(ids)
    finally:
        for h in handles:
            h.remove()
    out = []
    for layer, dt in zip(model.backbone.layers, captured):
        rows = torch.arange(n)
        dt_value = dt[rows, :, first + 1]                                      # (n, d_inner)
        pos = torch.arange(seqlen)
        ordinary = (pos[None, :] > first[:, None] + 3) & (pos[None, :] < seqlen - 1)   # (n, seqlen)
        dt_ord = (dt * ordinary[:, None, :]).sum(-1) / ordinary.sum(-1, keepdim=True)  # (n, d_inner)
        A_min = torch.exp(layer.mixer.fwd.A_log.detach()).min(-1).values      # (d_inner,)
        tau = 1 / (dt_ord.mean(0) * A_min)
        train_len = task.exp.data.train_len

        def kept(T):
            return dt_value.mean(0) * torch.exp(-T / tau)
        top = kept(64 * train_len).argsort(descending=True)[:8]
        out.append({
            "dt_ordinary_median": float(dt_ord.mean(0).median()),
            "dt_ordinary_min": float(dt_ord.mean(0).min()),
            "tau_max": float(tau.max()),
            "memory_at": {str(T): float(kept(T).max()) for T in (train_len, 64 * train_len, 2**20)},
            "top_channels": [{"channel": int(c), "dt_value": float(dt_value.mean(0)[c]),
                              "dt_ordinary": float(dt_ord.mean(0)[c]), "A_min": float(A_min[c]),
                              "tau": float(tau[c])} for c in top],
        })
    model.train()
    return out


@torch.no_grad()
def accuracy_near_far(model, task: SyntheticTask, seqlen: int, n: int = 64, seed: int = 7) -> dict[str, float]:
    """Accuracy at `seqlen` with the first trigger in the first 32 positions ("far": the value must be kept for
    ~seqlen steps) or in the last 32 before the query ("near": a long prefix of ordinary tokens, a short gap).
    Separates forgetting the value from being disturbed by a long run of other tokens."""
    rng = np.random.default_rng(seed)
    vocab = task.exp.data.vocab
    out = {}
    for where, lo, hi in (("far", 0, 32), ("near", seqlen - 34, seqlen - 2)):
        ids = torch.from_numpy(rng.integers(0, vocab - 1, size=(n, seqlen)))
        pos = torch.from_numpy(rng.integers(lo, hi, size=n))
        rows = torch.arange(n)
        ids[rows, pos] = vocab - 1
        ids[:, -1] = vocab - 1
        target = ids[rows, pos + 1]
        logits = task.answer_logits(model, ids, chunk=task.exp.data.eval_chunk)[:, -1]
        out[where] = float((logits.argmax(-1) == target).float().mean())
    return out


@torch.no_grad()
def precision_check(model, task: SyntheticTask, n: int = 4, seed: int = 11) -> dict:
    """Does the length change the answer through arithmetic? The answer logits of `n` test sequences read (a) whole
    vs in chunks of 4096 at 2^16 tokens (float32, the fused CPU kernels) and (b) in float32 vs in float64 in chunks
    at 2^16 and 2^20 tokens (float64 runs the module path and the float64 scan)."""
    model64 = task.build_model().double().eval()
    model64.load_state_dict(model.state_dict())
    model.eval()
    out = {}
    for seqlen in (2**16, 2**20):
        ds = task.dataset(n, seqlen, seed)
        ids = torch.stack([ds[i]["input_ids"] for i in range(n)])
        chunked = task.answer_logits(model, ids, chunk=2**16 if seqlen > 2**16 else 4096).double()
        exact = task.answer_logits(model64, ids, chunk=2**16).double()
        entry = {"float32_vs_float64_max_abs": float((chunked - exact).abs().max()),
                 "logit_scale": float(exact.abs().max()),
                 "same_argmax": bool((chunked.argmax(-1) == exact.argmax(-1)).all())}
        if seqlen == 2**16:
            whole = task.answer_logits(model, ids).double()
            entry["chunked_vs_whole_max_abs"] = float((chunked - whole).abs().max())
        out[str(seqlen)] = entry
    model.train()
    return out


def lm_loss(model, ids: torch.Tensor, vocab: int) -> torch.Tensor:
    """The H3/safari training loss: next-token cross-entropy at every position (the last input predicts the
    answer), as opposed to the answer position alone."""
    logits = model(ids)[..., :vocab].float()
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())


def weights_moved(before: Path, after: Path) -> float:
    """How far training moved the model between two engine checkpoints: ||w_after - w_before|| / ||w_before|| over
    all weights together (the protocol script skips measuring epochs in which the model barely changed)."""
    a, b = (load_checkpoint(path)["model"] for path in (before, after))
    change = sum(float(((b[k].double() - a[k].double()) ** 2).sum()) for k in a)
    return (change / sum(float((a[k].double() ** 2).sum()) for k in a)) ** 0.5


def plot_curves(prefix: str, out_png: Path) -> None:
    """Accuracy against test length of every ``induction_<prefix>*.json`` (its last milestone), one line per file
    in step order, chance dotted: how a run's extrapolation changes as it trains. A prefix starting with
    ``synthetic_`` plots the runner's results files ``<prefix>*.json`` instead (say, one line per seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ssm_core.utils.plots import save_figure

    runner = prefix.startswith("synthetic_")
    files = sorted(RESULTS.glob(f"{prefix}*.json" if runner else f"induction_{prefix}*.json"))
    if not files:
        raise SystemExit(f"--plot-curves: no {prefix}*.json nor induction_{prefix}*.json in {RESULTS}")
    curves = []  # (steps, label, accuracy by length, train length)
    for f in files:
        r = json.loads(f.read_text())
        if runner:
            label = f"seed {r['config']['train']['seed']}, {r['steps']:,} steps"
            curves.append((r["steps"], label, r["accuracy"], r["train_len"]))
        else:
            last = r["milestones"][-1]
            curves.append((last["step"], f"{last['step']:,} steps", last["accuracy"], int(r["settings"]["train_len"])))
    fig, ax = plt.subplots(figsize=(6.4, 4))
    for _, label, accuracy, _ in sorted(curves, key=lambda c: c[:2]):
        lengths = sorted(int(k) for k in accuracy)
        ax.plot(lengths, [100 * accuracy[str(k)] for k in lengths], marker="o", ms=3, label=label)
    ax.axhline(100 / 15, color="grey", ls=":", label="chance")  # the paper's vocabulary: 15 ordinary tokens
    ax.axvline(curves[0][3], color="grey", ls="--", lw=1, label="train length")
    title = f"induction heads: {prefix.removeprefix('synthetic_').strip('_')}"
    ax.set(xlabel="test length", ylabel="accuracy (%)", ylim=(0, 102), title=title)
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    save_figure(fig, out_png)
    print(f"plot: {out_png}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name")
    p.add_argument("--train-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--milestones", default="")
    p.add_argument("--eval-lens", default=",".join(str(2**k) for k in range(6, 17)))
    p.add_argument("--eval-samples", type=int, default=128)
    p.add_argument("--eval-tokens", type=int, help="cap on the tokens measured per test length (default the "
                   "preset's 2^25, so 32 sequences at 2^20)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loss", choices=["answer", "lm"], default="answer")
    p.add_argument("--far-trigger-steps", type=int, default=0,
                   help="the first N steps with the first trigger among the first --far-trigger-span positions")
    p.add_argument("--far-trigger-span", type=int, default=8)
    p.add_argument("--set", dest="model_overrides", action="append", default=[], metavar="FIELD=VALUE",
                   help="a MambaConfig field, e.g. dt_max=0.01")
    p.add_argument("--a-init", choices=["s4d_real", "constant"], default="s4d_real",
                   help="A's init (A = -exp(A_log)): s4d_real, the model's own (A_n = -n, n = 1..d_state, as "
                        "mamba-ssm's Mamba-1); constant: A_n = -1 for every state (all at S4D-real's slowest rate), "
                        "set after the model is built (A's init is no MambaConfig field)")
    p.add_argument("--time-limit-min", type=float, default=60.0)
    p.add_argument("--save", type=Path, help="write the final model and optimiser state here (for --resume-from)")
    p.add_argument("--resume-from", type=Path, help="continue from a --save file (same settings, later steps)")
    p.add_argument("--from-run", type=Path, help="measure the model the engine trained in this run directory")
    p.add_argument("--init-from", type=Path, metavar="CKPT",
                   help="train on from the weights of an engine checkpoint (step-N.ckpt) at its step N, with a "
                        "fresh optimiser state (this script's plain Adam), to --steps")
    p.add_argument("--adam-eps", type=float, default=1e-8,
                   help="Adam's epsilon (default 1e-8, torch's and the engine's): once the gradients fall below "
                        "it, Adam's steps shrink with them")
    p.add_argument("--precision-check", action="store_true",
                   help="with --resume-from and no more steps: record precision_check() of the saved model")
    p.add_argument("--plot-curves", metavar="PREFIX",
                   help="only plot: the last milestone of every induction_PREFIX*.json (or, for a PREFIX starting "
                        "with synthetic_, every runner results file PREFIX*.json) to induction_NAME.png")
    p.add_argument("--weights-moved", nargs=2, type=Path, metavar=("BEFORE", "AFTER"),
                   help="only print how far the weights moved from one engine checkpoint to another (relative)")
    args = p.parse_args()
    if args.weights_moved:
        print(f"{weights_moved(*args.weights_moved):.3e}")
        return
    if args.plot_curves:
        return plot_curves(args.plot_curves, RESULTS / f"induction_{args.name}.png")
    torch.set_num_threads(1)

    exp = SyntheticExperiment.from_preset("paper", "induction")
    exp.data.train_len = args.train_len
    exp.data.eval_lens = tuple(int(v) for v in args.eval_lens.split(","))
    exp.data.eval_samples = args.eval_samples
    if args.eval_tokens:
        exp.data.eval_tokens = args.eval_tokens
    exp.train.steps, exp.train.batch_size, exp.train.seed = args.steps, args.batch_size, args.seed
    exp.data.far_trigger_steps, exp.data.far_trigger_span = args.far_trigger_steps, args.far_trigger_span
    for item in args.model_overrides:
        key, value = item.split("=", 1)
        setattr(exp.model, key, type(getattr(exp.model, key))(value))
    task = SyntheticTask(exp)
    torch.manual_seed(args.seed)
    model = task.build_model()
    if args.a_init == "constant":
        with torch.no_grad():
            for module in model.modules():
                if hasattr(module, "A_log"):
                    module.A_log.zero_()
    if args.init_from:
        state = load_checkpoint(args.init_from)
        model.load_state_dict(state["model"])
    opt = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=args.adam_eps)
    start = int(state["step"]) if args.init_from else 0
    if args.resume_from:
        state = torch.load(args.resume_from)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
    if args.from_run:
        model = load_trained_model(args.from_run)
        start = args.steps
    data = task.train_dataset()
    milestones = sorted({int(m) for m in args.milestones.split(",") if m} | {args.steps})
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    record = {"name": args.name, "settings": settings, "model": {k: getattr(exp.model, k) for k in (
        "d_model", "n_layer", "d_state", "dt_min", "dt_max", "dt_init_floor")}, "device": "cpu",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(), "torch": torch.__version__,
        "commit": commit(), "milestones": []}
    out_path = RESULTS / f"induction_{args.name}.json"
    started, losses = time.monotonic(), []

    def measure(step: int) -> None:
        accuracy, samples = accuracy_by_length(task, model, exp.data.eval_lens, torch.device("cpu"), args.seed)
        entry = {"step": step, "answer_loss": float(np.mean(losses[-200:])) if losses else None,
                 "accuracy": accuracy, "samples": samples, "delta": delta_stats(model, task),
                 "near_far": {str(k): accuracy_near_far(model, task, k) for k in (1024, 8192, 65536)},
                 "minutes": (time.monotonic() - started) / 60}
        model.train()
        record["milestones"].append(entry)
        out_path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"step {step}: loss {entry['answer_loss']}; "
              + ", ".join(f"{k}: {100 * v:.0f}%" for k, v in accuracy.items())
              + "; memory_at " + " | ".join(", ".join(f"{v:.2g}" for v in d["memory_at"].values())
                                             for d in entry["delta"])
              + "; near/far " + ", ".join(f"{k}: {v['near']:.2f}/{v['far']:.2f}"
                                         for k, v in entry["near_far"].items()), flush=True)

    B, step = args.batch_size, start
    if start >= args.steps and args.precision_check:
        record["precision"] = precision_check(model, task)
        out_path.write_text(json.dumps(record, indent=1) + "\n")
        print(json.dumps(record["precision"], indent=1))
    elif start >= args.steps:  # nothing to train: measure the saved model
        measure(start)
    while step < args.steps:
        items = [data[i] for i in range(step * B, (step + 1) * B)]
        batch = {"input_ids": torch.stack([it["input_ids"] for it in items]),
                 "target": torch.stack([it["target"] for it in items])}
        if args.loss == "lm":
            loss = lm_loss(model, batch["input_ids"], exp.data.vocab)
            with torch.no_grad():
                answer, _ = task.loss(model, batch)
        else:
            loss, _ = task.loss(model, batch)
            answer = loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(answer.detach()))
        step += 1
        out_of_time = time.monotonic() - started > 60 * args.time_limit_min
        if step in milestones or out_of_time:
            measure(step)
        if out_of_time:
            print("time limit reached")
            break
    if args.save:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": step}, args.save)

if __name__ == "__main__":
    main()
