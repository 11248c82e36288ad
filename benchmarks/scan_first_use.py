"""How long the first selective_scan on a GPU waits for its CUDA kernels: cold (an empty kernel cache, so NVRTC
compiles) and warm (the cubin read from the cache), each in a fresh process.

    python benchmarks/scan_first_use.py [--out-dir DIR]

Each child process imports torch, creates its CUDA context and inputs first (not counted), then times its first
bf16 forward+backward call, which compiles (cold) or loads (warm) the kernels it needs. Writes
``scan_first_use_<device>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, time, torch
from ssm_core.ops import nvrtc, scan_cuda
dev = "cuda"
u, delta, z = (torch.randn(2, 64, 4096, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
A = -torch.rand(64, 16, device=dev)
B, C = (torch.randn(2, 16, 4096, device=dev, dtype=torch.bfloat16) for _ in range(2))
torch.cuda.synchronize()
start = time.perf_counter()
out = scan_cuda.selective_scan_cuda(u, delta, A, B, C, z=z, delta_softplus=True)
out.float().sum().backward()
torch.cuda.synchronize()
first = time.perf_counter() - start
start = time.perf_counter()
out = scan_cuda.selective_scan_cuda(u, delta, A, B, C, z=z, delta_softplus=True)
out.float().sum().backward()
torch.cuda.synchronize()
print(json.dumps({"first_call_s": first, "second_call_s": time.perf_counter() - start,
                  "nvrtc_compile_s": nvrtc.compile_seconds, "kernels": scan_cuda.available()[1]}))
"""


def run_child(cache: str) -> dict:
    env = {**os.environ, "SSM_CORE_CACHE_DIR": cache}
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, stdout=subprocess.PIPE, text=True, check=True,
                          timeout=300)  # stderr passes through: a slow compile shows its progress
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    args = parser.parse_args(argv)
    import torch
    if not torch.cuda.is_available():
        sys.exit("scan_first_use.py needs a CUDA GPU")
    with tempfile.TemporaryDirectory() as cache:
        cold, warm = run_child(cache), run_child(cache)
    device = torch.cuda.get_device_name()
    record = {"device": device, "torch": torch.__version__, "cuda": torch.version.cuda, "cold": cold, "warm": warm}
    print(f"{device}: first call cold {cold['first_call_s']:.2f} s (NVRTC {sum(cold['nvrtc_compile_s'].values()):.2f} s),"
          f" warm {warm['first_call_s']:.3f} s; a later call {warm['second_call_s'] * 1e3:.1f} ms ({cold['kernels']})")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"scan_first_use_{re.sub(r'[^A-Za-z0-9]+', '_', device).strip('_')}.json"
    path.write_text(json.dumps(record, indent=1))
    print(f"saved {path}")


if __name__ == "__main__":
    main()
