"""Runs a test file as a script under Triton's interpreter (TRITON_INTERPRET=1 must be set before Triton is
imported, hence a subprocess), so CPU-only machines execute the very GPU kernels on tiny shapes."""
from __future__ import annotations

import os
import subprocess
import sys


def run_under_triton_interpreter(path: str, timeout: int) -> str:
    """Runs ``path`` as a script with TRITON_INTERPRET=1; asserts it succeeded and returns its stdout."""
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.abspath(path)], env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"interpreter run failed:\n{proc.stdout}\n{proc.stderr[-5000:]}"
    return proc.stdout


def enter_interpreter_script() -> None:
    """The start of a test file's ``__main__`` driver: refuse to run without the interpreter, one thread."""
    import torch
    if os.environ.get("TRITON_INTERPRET") != "1":
        sys.exit("set TRITON_INTERPRET=1 before running this file as a script (it must precede the Triton import)")
    torch.set_num_threads(1)
