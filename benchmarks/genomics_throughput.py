"""Throughput targets of the genomics issue, one command each.

    python benchmarks/genomics_throughput.py cpu   # classify one 1 Mbp record with the 7m preset: time, peak RSS
    python benchmarks/genomics_throughput.py gpu   # train the 7m preset at seqlen 2^20 (activation checkpointing)

Targets: CPU (2 cores) under 5 minutes and 4 GB; GPU: seqlen 2^20 fits one GPU, report bases per second.
Both use the real commands (`genomics finetune`, `genomics classify`, `genomics pretrain`) on simulated genomes;
the classifier's weights are barely trained, which does not change its cost. Results go to
benchmarks/results/genomics_throughput_<cpu|gpu>_<device>.json (and are printed).
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def genomics(*args, env=None) -> resource.struct_rusage:
    """Run ``python -m genomics ARGS``; returns the child's own resource usage (peak RSS, CPU seconds)."""
    child = subprocess.Popen([sys.executable, "-m", "genomics", *map(str, args)], env=env)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise subprocess.CalledProcessError(child.returncode, child.args)
    return usage


def device_name(kind: str) -> str:
    if kind == "gpu":
        import torch

        return torch.cuda.get_device_name(0).replace(" ", "_")
    return f"{platform.processor() or platform.machine()}_{os.cpu_count()}cores".replace(" ", "_")


def write_result(kind: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = (f"_{result['record_bp']}bp_chunk{result['chunk']}_numba{result['numba_threads']}"
              f"{'_bf16' if result['bf16_matmuls'] else ''}" if kind == "cpu"
              else f"_seqlen{result['seqlen']}")
    path = RESULTS / f"genomics_throughput_{kind}_{result['device']}{suffix}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"saved {path}")
    return path


def busy_cpu_seconds() -> float:
    """CPU seconds all processes of this machine have run since boot (from /proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def probability_check(run: Path, record: Path, bases: int) -> dict:
    """Class probabilities of the record's first ``bases`` bases from the float32 model without autograd (the
    numba inference path that `classify` takes on CPU), with autograd (the training path, selective_scan), with
    bf16 matrix products (`classify --bf16`) and from a float64 copy of the model: the largest differences."""
    import numpy as np
    import torch

    from genomics.classify import SpeciesClassifier
    from genomics.reads import read_records
    from genomics.tokenizer import encode

    model = SpeciesClassifier(run, "cpu").model
    ids = torch.from_numpy(encode(next(read_records(record)).sequence[:bases]).astype(np.int64))[None]
    with torch.no_grad():
        fast = torch.softmax(model(ids), -1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16 = torch.softmax(model(ids).float(), -1)
        exact = torch.softmax(model.double()(ids), -1)
        model.float()
    with torch.enable_grad():
        autograd = torch.softmax(model(ids), -1).detach()
    return {"bases": bases, "probabilities_float64": [round(p, 6) for p in exact[0].tolist()],
            "max_abs_diff_inference_path_vs_float64": float((fast.double() - exact).abs().max()),
            "max_abs_diff_autograd_path_vs_float64": float((autograd.double() - exact).abs().max()),
            "max_abs_diff_bf16_vs_float64": float((bf16.double() - exact).abs().max())}


def cpu_benchmark(work: Path, length: int, threads: int, numba_threads: int, chunk: int | None,
                  check_bases: int, bf16: bool) -> dict:
    """Classify one `length`-bp record with an (untrained-enough) 7m classifier in a child process."""
    import numpy as np

    from genomics.classify import CHUNK_CPU

    genomics("simulate", "--out", work / "apes", "--size", "tiny", "--seed", 0)
    run = work / "clf7m"
    genomics("finetune", "--fasta-dir", work / "apes", "--out", run, "--preset", "7m", "--window", 1024,
             "--steps", 1, "--batch-size", 2, "--valid-samples", 2, "--test-samples", 2, "--device", "cpu")
    rng = np.random.default_rng(0)
    record = work / "record_1mbp.fa"
    seq = rng.choice(np.frombuffer(b"ACGT", dtype=np.uint8), length).tobytes().decode()
    record.write_text(">one_megabase\n" + "\n".join(seq[i:i + 60] for i in range(0, length, 60)) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "NUMBA_NUM_THREADS": str(numba_threads)}
    busy = busy_cpu_seconds()
    started = time.perf_counter()
    usage = genomics("classify", "--checkpoint", run, "--fasta", record, "--window", 2**16, "--out", work / "out.tsv",
             "--device", "cpu", *(("--chunk", chunk) if chunk else ()), *(("--bf16",) if bf16 else ()), env=env)
    seconds = time.perf_counter() - started
    ours = usage.ru_utime + usage.ru_stime
    others = max(0.0, busy_cpu_seconds() - busy - ours)
    return {"device": device_name("cpu"), "task": "classify one record, 7m preset", "record_bp": length,
            "window": 2**16, "chunk": chunk or CHUNK_CPU, "bf16_matmuls": bf16, "torch_threads": threads,
            "numba_threads": numba_threads,
            "load_average_at_end": os.getloadavg(), "seconds": round(seconds, 1),
            "cpu_seconds_classify": round(ours, 1),
            # the share of the machine's cores that other jobs took while classify ran: timings are only
            # comparable between runs where this is small
            "other_processes_core_share": round(others / (seconds * os.cpu_count()), 3),
            "bases_per_second": round(length / seconds, 1),
            "peak_rss_gb": round(usage.ru_maxrss / 2**20, 3), "peak_rss_note": "the classify process's own peak",
            "seconds_per_mbp": round(seconds * 10**6 / length, 1),
            "targets": {"seconds_per_mbp": 300, "peak_rss_gb": 4}, "output": (work / "out.tsv").read_text(),
            **({"probability_check": probability_check(run, record, min(check_bases, length))} if check_bases
               else {})}


def gpu_benchmark(work: Path, seqlen: int, steps: int) -> dict:
    """Pretrain the 7m preset at `seqlen` through the real command (in this process, to read the GPU's peak)."""
    import torch

    from genomics.cli import main as cli

    genomics("simulate", "--out", work / "apes", "--size", "small", "--seed", 0)
    run = work / "lm7m"
    torch.cuda.reset_peak_memory_stats()
    status = cli([str(a) for a in ("pretrain", "--fasta", work / "apes" / "human.fa", "--out", run, "--preset", "7m",
                                   "--seqlen", seqlen, "--warmup-start", seqlen, "--steps", steps, "--batch-size", 1,
                                   "--activation-checkpointing", "--device", "cuda", "--set", "data.valid_samples=2",
                                   "--set", "train.log_every=1")])
    if status != 0:
        raise SystemExit(status)
    with open(run / "metrics.csv") as f:
        rates = [float(r["value"]) for r in csv.DictReader(f) if r["metric"] == "train/bases_per_s"]
    steady = rates[2:] or rates  # the first steps include compilation and autotuning
    return {"device": device_name("gpu"), "task": "pretrain 7m preset, batch 1, activation checkpointing, bf16",
            "seqlen": seqlen, "steps": steps, "bases_per_second_per_step": [round(r, 1) for r in rates],
            "bases_per_second": round(sum(steady) / len(steady), 1),
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=("cpu", "gpu"))
    parser.add_argument("--length", type=int, default=10**6, help="CPU: record length in bp (default 1 Mbp)")
    parser.add_argument("--threads", type=int, default=2, help="CPU: torch threads (default 2)")
    parser.add_argument("--chunk", type=int,
                        help="CPU: bases per forward piece (classify --chunk; default: classify's CPU default)")
    parser.add_argument("--check-bases", type=int, default=2**13,
                        help="CPU: compare the probabilities of this many bases against a float64 model "
                             "(default 8192; 0 skips)")
    parser.add_argument("--bf16", action="store_true", help="CPU: classify --bf16 (bfloat16 matrix products)")
    parser.add_argument("--numba-threads", type=int, default=2,
                        help="CPU: threads of the numba scan (default 2)")
    parser.add_argument("--seqlen", type=int, default=2**20, help="GPU: training length (default 2^20)")
    parser.add_argument("--steps", type=int, default=8, help="GPU: optimiser steps (default 8)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="genomics_throughput_") as tmp:
        work = Path(tmp)
        result = (cpu_benchmark(work, args.length, args.threads, args.numba_threads, args.chunk, args.check_bases,
                                args.bf16) if args.kind == "cpu"
                  else gpu_benchmark(work, args.seqlen, args.steps))
    write_result(args.kind, result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
