"""``genomics classify``'s read path (:meth:`WindowedModel.batched`: equal lengths stacked when there are enough of
them, the rest packed back to back, passes of the device's default size) against one record at a time and against
the code before (equal lengths stacked only, 262,144 bases per pass on any device), side by side in one run.

    python benchmarks/classify_packing.py [--device cpu|cuda] [--preset 1.4m] [--out-dir DIR]

Record sets: 20,000 reads of 150 bp, 20,000 reads of 100-150 bp (lengths uniform: what trimmed reads look like),
2,000 contigs of 2 kbp, 5,000 fragments of 100-1,000 bp (scattered lengths: few of each); both strands, as
``classify`` reads them. A random-weight classifier of the preset's shape
(speed does not depend on the weights). One record at a time is timed on the first ``--sample`` records of each set
(a pass per window would take tens of minutes on 2 cores for 20,000 records) and compared by rate (bases/s); the
probabilities of those records must agree with the packed ones to 1e-5. Writes
``classify_packing_<device>.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import re
import time
from pathlib import Path

import numpy as np
import torch

from ssm_core import MambaSequenceClassifier
from genomics.classify import WindowedModel
from genomics.models import PRESETS, preset_config
from genomics.tokenizer import reverse_complement


def record_sets(scale: float = 1.0, seed: int = 0) -> dict[str, list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    bases = lambda n: rng.integers(0, 4, n).astype(np.uint8) + 1   # noqa: E731  (A/C/G/T tokens 1-4)
    reads, contigs, fragments = round(20000 * scale), round(2000 * scale), round(5000 * scale)
    return {f"{reads} x 150 bp": [bases(150) for _ in range(reads)],
            f"{reads} x 100-150 bp": [bases(int(n)) for n in rng.integers(100, 151, reads)],
            f"{contigs} x 2 kbp": [bases(2000) for _ in range(contigs)],
            f"{fragments} x 100-1000 bp": [bases(int(n)) for n in rng.integers(100, 1001, fragments)]}


def windows_of(records: list[np.ndarray]) -> list[np.ndarray]:
    return [w for r in records for w in (r, reverse_complement(r))]


def timed(reader: WindowedModel, windows: list[np.ndarray]) -> tuple[float, np.ndarray]:
    if reader.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = np.stack(reader.batched(windows, head=True))
    return time.perf_counter() - start, out


def profile(reader: WindowedModel, windows: list[np.ndarray], top: int) -> dict:
    """One more packed pass under cProfile: its wall time and the ``top`` functions by own time (seconds, share)."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(timed, reader, windows)
    seconds = time.perf_counter() - start
    stats = pstats.Stats(profiler).stats  # (file, line, name) -> (calls, primitive calls, own time, cumulative, ...)
    rows = sorted(((f"{Path(f).name}:{line}({name})" if line else name, calls, own)
                   for (f, line, name), (_, calls, own, _, _) in stats.items()), key=lambda r: -r[2])[:top]
    for name, calls, own in rows:
        print(f"  {own:7.3f} s {100 * own / seconds:5.1f}%  {calls:6d} calls  {name}")
    return {"seconds": seconds, "top_own_time": [{"function": name, "calls": calls, "seconds": own,
                                                  "share": own / seconds} for name, calls, own in rows]}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", choices=list(PRESETS), default="1.4m")
    parser.add_argument("--sample", type=int, default=500, help="records timed one at a time per set")
    parser.add_argument("--scale", type=float, default=1.0,
                        help="fraction of the record counts (a big model on 2 cores: 0.1 keeps a run under 30 min)")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="also profile the packed pass of the first set (cProfile): its N costliest functions by "
                             "own time go into the JSON, to show what bounds the packed path")
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    model = MambaSequenceClassifier(preset_config(args.preset, num_classes=5, pooling="mean"))
    model.eval().to(args.device)
    make = lambda **kw: WindowedModel(model, window=4096, device=args.device, **kw)   # noqa: E731
    readers = {"packed": make(), "before": make(pack=False, batch_tokens=2**18),
               "one at a time": make(pack=False, batch_tokens=1)}
    timed(readers["packed"], windows_of(list(record_sets(0.01).values())[2]))   # warm-up: numba compile, caches
    device = (torch.cuda.get_device_name() if args.device == "cuda"
              else f"{platform.machine()} {torch.get_num_threads()} threads")
    rows = []
    for name, records in record_sets(args.scale).items():
        windows = windows_of(records)
        bases = sum(map(len, windows))
        row = {"set": name, "records": len(records), "bases_both_strands": bases}
        for how in ("packed", "before"):
            seconds, out = timed(readers[how], windows)
            row[how] = {"seconds": seconds, "bases_per_s": bases / seconds}
            if how == "packed":
                packed_out = out
            else:
                row[how]["max_abs_diff_log_probs"] = float(np.abs(out - packed_out).max())
        sample = windows[:2 * args.sample]
        seconds, out = timed(readers["one at a time"], sample)
        row["one at a time"] = {"records": args.sample, "seconds": seconds,
                                "bases_per_s": sum(map(len, sample)) / seconds,
                                "max_abs_diff_log_probs": float(np.abs(out - packed_out[:len(sample)]).max())}
        row["speedup_packed_vs_one_at_a_time"] = row["packed"]["bases_per_s"] / row["one at a time"]["bases_per_s"]
        row["speedup_packed_vs_before"] = row["packed"]["bases_per_s"] / row["before"]["bases_per_s"]
        if args.profile and not rows:
            row["profile_packed"] = profile(readers["packed"], windows, args.profile)
        rows.append(row)
        print(f"{name}: packed {row['packed']['seconds']:.1f} s, before {row['before']['seconds']:.1f} s,"
              f" one at a time {seconds:.1f} s for {args.sample} records; packed is "
              f"{row['speedup_packed_vs_one_at_a_time']:.1f}x one at a time, {row['speedup_packed_vs_before']:.2f}x "
              f"before; max |diff| {row['one at a time']['max_abs_diff_log_probs']:.1e}", flush=True)
    record = {"device": device, "preset": args.preset, "scale": args.scale, "torch": torch.__version__,
              "rows": rows}
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^A-Za-z0-9]+", "_", device).strip("_")
    path = out_dir / f"classify_packing_{slug}_{args.preset}{'' if args.scale == 1 else f'_scale{args.scale:g}'}.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"saved {path}")


if __name__ == "__main__":
    main()
