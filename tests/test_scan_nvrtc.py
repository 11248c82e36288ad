"""The CUDA scan kernels compile with NVRTC on any machine that has PyTorch's CUDA wheels, GPU or not.

NVRTC needs no GPU, so CI (a CPU machine) compiles the real ``selective_scan.cu`` for an H100 (sm_90) and checks
every kernel and constant the launcher looks up is in the cubin: a source that stops compiling fails here, not
only on the device. Also: the on-disk cache (one compile per key, also with processes racing), and the warning
and error when the kernels cannot be had. Running them is ``test_scan_cuda.py``'s job (GPU only).
"""
from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import warnings

import pytest
import torch

from ssm_core.ops import nvrtc, scan_cuda


def _nvrtc_reason() -> str | None:
    try:
        nvrtc.nvrtc_library()
    except nvrtc.NvrtcUnavailable as e:
        return f"this torch build ships no NVRTC (a CPU-only wheel): {e}"
    return None


needs_nvrtc = pytest.mark.skipif(_nvrtc_reason() is not None, reason=str(_nvrtc_reason()))


def _names(dtype, tpc, varlen=False):
    return scan_cuda.kernel_names(dtype, tpc, varlen) + [scan_cuda._CARRY, scan_cuda._SMEM, scan_cuda._PARAMS_SIZE]


@needs_nvrtc
@pytest.mark.parametrize("dtype,tpc,varlen", [(torch.bfloat16, 4, False), (torch.float32, 16, False),
                                              (torch.bfloat16, 4, True), (torch.float16, 16, True)])
def test_scan_source_compiles_with_nvrtc_for_h100(dtype, tpc, varlen):
    """Also the packed-sequence (VARLEN) program, a program of its own."""
    names = _names(dtype, tpc, varlen)
    cubin, lowered = nvrtc.compile_cubin(scan_cuda.SOURCE.read_text(), "sm_90", names, scan_cuda.NVRTC_OPTIONS,
                                         scan_cuda.SOURCE.name)
    assert cubin[:4] == b"\x7fELF"
    assert set(lowered) == set(names)
    for symbol in lowered.values():  # every kernel and constant the launcher looks up is in the cubin
        assert symbol.encode() in cubin, symbol


@needs_nvrtc
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_forward_fits_eight_blocks_per_sm(dtype):
    """The 2-byte forward kernels stay within 64 registers, so 8 blocks of 128 threads fit on an SM. Unbounded,
    NVRTC's build took 86 registers (5 blocks) where nvcc's took 64, and the bf16 forward ran 40% slower on an H100
    (NOTES_gpu_scan.md, version 4.1); fp32 keeps its ~120 (no bound: a bound of one block made ptxas take more)."""
    for tpc in (4, 16):
        cubin, lowered = nvrtc.compile_cubin(scan_cuda.SOURCE.read_text(), "sm_90", _names(dtype, tpc),
                                             scan_cuda.NVRTC_OPTIONS, scan_cuda.SOURCE.name)
        registers = nvrtc.registers_per_kernel(cubin)
        for kind in (scan_cuda._FWD, scan_cuda._FWD_SEGMENTS):
            name = scan_cuda.kernel_names(dtype, tpc, False)[kind]
            assert 0 < registers[lowered[name]] <= 64, (name, registers[lowered[name]])
        carry = registers[lowered[scan_cuda._CARRY]]
        assert 0 < carry <= 255  # every kernel is found, not only the bounded ones


@needs_nvrtc
def test_compile_error_carries_the_log():
    with pytest.raises(nvrtc.NvrtcCompileError, match="undeclared|undefined"):
        nvrtc.compile_cubin('extern "C" __global__ void k() { not_declared(); }', "sm_90", [], [], "bad.cu")


SMALL = 'extern "C" __global__ void add_one(float* x) { x[threadIdx.x] += 1.f; }'


@needs_nvrtc
def test_cache_compiles_each_key_once(tmp_path, monkeypatch):
    monkeypatch.setenv("SSM_CORE_CACHE_DIR", str(tmp_path))
    nvrtc.compile_seconds.clear()
    first = nvrtc.cached_cubin(SMALL, "sm_90", ["add_one"], [], label="test kernel")
    assert "test kernel" in nvrtc.compile_seconds
    nvrtc.compile_seconds.clear()
    again = nvrtc.cached_cubin(SMALL, "sm_90", ["add_one"], [], label="test kernel")
    assert again == first and not nvrtc.compile_seconds          # read from disk, not compiled
    other_arch = nvrtc.cached_cubin(SMALL, "sm_80", ["add_one"], [], label="test kernel")
    assert "test kernel" in nvrtc.compile_seconds and other_arch[0] != first[0]  # the GPU is part of the key
    assert not list(tmp_path.rglob("*.tmp"))


@needs_nvrtc
def test_cache_is_safe_with_processes_compiling_at_once(tmp_path):
    """Four processes (say torchrun ranks) ask for the same kernel at once: one compiles, all get the same cubin."""
    script = textwrap.dedent(f"""
        import hashlib, sys
        from ssm_core.ops import nvrtc
        cubin, _ = nvrtc.cached_cubin({SMALL!r}, "sm_90", ["add_one"], [], label="race")
        print(hashlib.sha256(cubin).hexdigest())
    """)
    env = {"SSM_CORE_CACHE_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env={**env, "PYTHONPATH": ":".join(sys.path)}) for _ in range(4)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err for _, err in results]
    assert len({out.strip() for out, _ in results}) == 1
    compiles = sum(err.count("ssm_core: compiling race") for _, err in results)
    assert compiles == 1, [err for _, err in results]


def test_fallback_warning_names_reason_cost_and_fix(monkeypatch):
    ss = importlib.import_module("ssm_core.ops.selective_scan")
    monkeypatch.setattr(scan_cuda, "available", lambda: (False, "NvrtcUnavailable: no libnvrtc"))
    monkeypatch.delenv("SSM_CORE_GPU_SCAN", raising=False)
    ss._warn_no_cuda_kernels.cache_clear()
    u = torch.zeros(1, 2, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ss.choose_backend("gpu", torch.device("cuda"), scan_inputs=(u, u, torch.zeros(2, 4), torch.zeros(1, 4, 3)))
    message = " ".join(str(w.message) for w in caught)
    assert "no libnvrtc" in message and "slower" in message and "SSM_CORE_GPU_SCAN=cuda" in message


def test_cuda_choice_is_an_error_when_kernels_are_unavailable(monkeypatch):
    ss = importlib.import_module("ssm_core.ops.selective_scan")
    monkeypatch.setattr(scan_cuda, "available", lambda: (False, "NvrtcUnavailable: no libnvrtc"))
    monkeypatch.setenv("SSM_CORE_GPU_SCAN", "cuda")
    u = torch.zeros(1, 2, 3)
    with pytest.raises(ss.CudaKernelsUnavailable):
        ss.choose_backend("gpu", torch.device("cuda"), scan_inputs=(u, u, torch.zeros(2, 4), torch.zeros(1, 4, 3)))
