"""CUDA C++ kernels of the selective scan (``csrc/selective_scan.cu``): the ``gpu`` backend's fast path.

The source is compiled at first use with NVRTC, which ships in PyTorch's CUDA wheels, and launched through the
CUDA driver API (``nvrtc.py``): no CUDA toolkit, ``nvcc`` or host compiler is needed, and nothing is built at
install time. Each (element type, lanes per channel) pair is compiled on its own when first needed (a few seconds)
and cached on disk per source hash, GPU architecture and versions. Where the kernels cannot be had (no NVRTC, an
architecture this NVRTC does not know) the ``gpu`` backend falls back to the Triton kernels (``scan_triton.py``)
with a warning; ``available()`` says why.

Supported here: fp32, fp16 and bf16 inputs (fp32 accumulation), dstate <= 64. fp64 goes to Triton.
Design and measurements: ``benchmarks/NOTES_gpu_scan.md`` (version 3).
"""
from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from pathlib import Path

import torch

from . import nvrtc

SOURCE = Path(__file__).with_name("csrc") / "selective_scan.cu"
_TYPE_NAMES = {torch.float32: "float", torch.float16: "__half", torch.bfloat16: "__nv_bfloat16"}
SC = 64                  # steps per chunk: the interval of the states the forward keeps (SC in the source)
MAX_DSTATE = 64
NT = 128                 # threads per block (NT in the source)
_FWD, _FWD_SEGMENTS, _BWD_SEGMENTS, _BWD, _BWD_CAPPED = 0, 1, 2, 3, 4   # kernel kinds (smem_bytes in the source)
_KERNEL_NAMES = {        # C++ name of each kind, for one element type T, lanes per channel TPC and VARLEN V
    _FWD: "ssm_scan::fwd_kernel<{T}, {TPC}, false, {V}>",
    _FWD_SEGMENTS: "ssm_scan::fwd_kernel<{T}, {TPC}, true, {V}>",
    _BWD_SEGMENTS: "ssm_scan::bwd_segment_kernel<{T}, {TPC}, {V}>",
    _BWD: "ssm_scan::bwd_kernel<{T}, {TPC}, 3, {V}>",
    _BWD_CAPPED: "ssm_scan::bwd_kernel<{T}, {TPC}, 4, {V}>",
}
_CARRY, _SMEM, _PARAMS_SIZE = "ssm_scan::carry_kernel", "&ssm_scan_smem_bytes", "&ssm_scan_params_size"
NVRTC_OPTIONS = ["-std=c++17"]
# Tensors the kernels read or write in 16-byte vectors when all are 16-byte aligned and seqlen % 8 == 0.
_VECTORISED = {"u", "delta", "z", "dout", "B", "C", "out", "du", "ddelta", "dz"}

# Output buffers the kernels must fill entirely come from here, so tests can poison them (see scan_triton).
_new_output = torch.empty


@dataclass(frozen=True)
class CudaScanConfig:
    """Launch choices; None picks what measured fastest on an H100 (benchmarks/NOTES_gpu_scan.md, version 3):
    when batch x channel blocks fill the GPU (>= 2 blocks per SM), no segments (4 and 2 blocks per SM wanted
    in the forward and backward) and the uncapped backward; otherwise many segments (16 and 8 blocks per SM)
    and the register-capped backward. Below ``*_blocks_per_sm`` blocks per SM the sequence is cut into segments
    scanned in parallel (each costs one more pass over its inputs); ``*_segments`` forces the count (tests)."""
    fwd_blocks_per_sm: int | None = None
    bwd_blocks_per_sm: int | None = None
    fwd_segments: int | None = None
    bwd_segments: int | None = None
    bwd_register_cap: bool | None = None   # the backward built for 4 blocks per SM (128 registers, some spilled)

    def resolved(self, blocks: int, device) -> "CudaScanConfig":
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        long = blocks < 2 * sms
        pick = lambda value, short, long_: value if value is not None else (long_ if long else short)  # noqa: E731
        return CudaScanConfig(pick(self.fwd_blocks_per_sm, 4, 16), pick(self.bwd_blocks_per_sm, 2, 8),
                              self.fwd_segments, self.bwd_segments, pick(self.bwd_register_cap, False, True))


class _Params(ctypes.Structure):
    """Mirror of ``struct Params`` in the source, field for field."""
    _fields_ = ([(name, ctypes.c_longlong) for name in (
        "batch", "dim", "seqlen", "dstate", "n_groups", "dim_per_group", "n_seg", "seg_chunks", "n_chunks",
        "softplus", "vec")] + [(name, ctypes.c_void_p) for name in (
            "u", "delta", "z", "dout", "B", "C", "A", "D", "bias", "start", "end_grad", "out", "chunk_states",
            "last_state", "seg_state", "seg_dtsum", "du", "ddelta", "dz", "dA", "dB", "dC", "dD", "dbias",
            "dstart", "first_of", "last_of", "h0", "dlast", "seq_last", "dh0")])


def arch(device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def kernel_names(dtype: torch.dtype, tpc: int, varlen: bool) -> list[str]:
    """The C++ names of one program's kernels, in the order of the kinds."""
    return [n.format(T=_TYPE_NAMES[dtype], TPC=tpc, V=str(varlen).lower()) for n in _KERNEL_NAMES.values()]


class _Kernels:
    """The compiled program of one (element type, lanes per channel, packed or not) triple, loaded on one device.
    The packed kernels are a program of their own, compiled only when packed sequences come."""

    def __init__(self, device_index: int, dtype: torch.dtype, tpc: int, varlen: bool = False):
        names = kernel_names(dtype, tpc, varlen)
        packed = ", packed sequences" if varlen else ""
        cubin, lowered = nvrtc.cached_cubin(
            SOURCE.read_text(), arch(device_index), names + [_CARRY, _SMEM, _PARAMS_SIZE], NVRTC_OPTIONS,
            label=f"the CUDA scan kernels ({_TYPE_NAMES[dtype]}, dstate <= {16 if tpc == 4 else 64}{packed})",
            filename=SOURCE.name)
        self.module = nvrtc.Module.load(cubin, device_index)
        self.device_index = device_index
        params_size = int.from_bytes(self.module.read_global(lowered[_PARAMS_SIZE]), "little", signed=True)
        if params_size != ctypes.sizeof(_Params):
            raise RuntimeError("ssm_core scan_cuda: struct Params in selective_scan.cu and _Params disagree")
        smem = self.module.read_global(lowered[_SMEM])
        row = (2 * varlen + (tpc == 16)) * 5   # ssm_scan_smem_bytes[varlen][tpc == 16][kind]
        self.smem = {kind: int.from_bytes(smem[8 * (row + kind):8 * (row + kind + 1)], "little")
                     for kind in _KERNEL_NAMES}
        self.functions = {kind: self.module.function(lowered[name]) for kind, name in zip(_KERNEL_NAMES, names)}
        self.carry = self.module.function(lowered[_CARRY])
        for kind, func in self.functions.items():
            if self.smem[kind] > 48 * 1024:
                nvrtc.set_attribute(func, nvrtc.CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, self.smem[kind])
        # All of the unified L1/shared memory as shared memory, so that the register-capped backward fits 4 blocks
        # per SM (the driver's default carveout fitted 3). Not for the others: their blocks share B and C through
        # L1, and the uncapped backward ran 1.7x slower without that cache (benchmarks/NOTES_gpu_scan.md).
        nvrtc.set_attribute(self.functions[_BWD_CAPPED], nvrtc.CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT,
                            nvrtc.SHAREDMEM_CARVEOUT_MAX_SHARED)


@functools.cache
def _kernels(device_index: int, dtype: torch.dtype, tpc: int, varlen: bool = False) -> _Kernels:
    return _Kernels(device_index, dtype, tpc, varlen)


@functools.cache
def available() -> tuple[bool, str]:
    """Whether the CUDA kernels are usable here (compiled and loaded), and if not, why."""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        _kernels(torch.cuda.current_device(), torch.float32, 4)
    except Exception as e:  # no NVRTC or driver library, an architecture NVRTC does not know, a compile error
        lines = str(e).strip().splitlines()
        return False, f"{type(e).__name__}: {lines[0] if lines else ''}"
    return True, f"compiled with NVRTC {nvrtc.nvrtc_version()} for {arch(torch.cuda.current_device())}"


def supports(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor) -> bool:
    """Whether these inputs are within the CUDA kernels' range (else the Triton kernels take them)."""
    return (u.is_cuda and u.dtype != torch.float64 and delta.dtype != torch.float64 and A.dtype != torch.float64
            and B.dtype != torch.float64 and A.shape[1] <= MAX_DSTATE)


def _ptr(t: torch.Tensor | None) -> int | None:
    return t.data_ptr() if t is not None else None


def _lanes_per_channel(dstate: int) -> int:
    return 4 if dstate <= 16 else 16


def _segments(blocks: int, n_chunks: int, per_sm: int, forced: int | None, device) -> tuple[int, int]:
    """(segments, chunks per segment): enough blocks for ``per_sm`` per SM, no segment empty."""
    if forced is not None:
        wanted = forced
    else:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        wanted = -(-per_sm * sms // blocks)
    wanted = max(1, min(wanted, n_chunks))
    per_seg = -(-n_chunks // wanted)
    return -(-n_chunks // per_seg), per_seg


@dataclass(frozen=True)
class Pack:
    """Packed sequences (batch 1) as the VARLEN kernels read them: first_of / last_of (seqlen,) int32, the sequence
    each step starts / ends (-1: none); empty (n, 1, 1) True for a zero-length sequence (no step of its own: its
    last state is its initial state, and that state's gradient its last state's)."""
    first_of: torch.Tensor
    last_of: torch.Tensor
    empty: torch.Tensor

    @staticmethod
    def of(cu_seqlens: torch.Tensor, seqlen: int) -> "Pack":
        dev = cu_seqlens.device
        starts, ends = cu_seqlens[:-1].long(), cu_seqlens[1:].long()
        held = ends > starts
        index = torch.arange(starts.numel(), dtype=torch.int32, device=dev)[held]
        first_of = torch.full((seqlen,), -1, dtype=torch.int32, device=dev)
        last_of = torch.full((seqlen,), -1, dtype=torch.int32, device=dev)
        first_of[starts[held]] = index
        last_of[ends[held] - 1] = index
        return Pack(first_of, last_of, (~held)[:, None, None])

    def segment_keep(self, n_seg: int, steps: int) -> torch.Tensor:
        """(n_seg,) float32: 0 for a segment of ``steps`` steps that holds a sequence start (the carry drops what
        comes before it), else 1."""
        starts = torch.zeros(n_seg * steps, dtype=torch.bool, device=self.first_of.device)
        starts[:self.first_of.numel()] = self.first_of >= 0
        return (~starts.view(n_seg, steps).any(1)).float()


class _Launch:
    """Sizes and pointers of one call, filled into _Params. ``pack``: packed sequences, or None."""

    def __init__(self, u, A, B, softplus, pack: Pack | None = None):
        self.batch, self.dim, self.seqlen = u.shape
        self.dstate = A.shape[1]
        self.n_groups = B.shape[1]
        self.tpc = _lanes_per_channel(self.dstate)
        self.ch = NT // self.tpc
        dpg = self.dim // self.n_groups
        self.blocks = self.batch * self.n_groups * -(-dpg // self.ch)
        self.n_chunks = max(1, -(-self.seqlen // SC))
        self.device_index = u.device.index if u.device.index is not None else torch.cuda.current_device()
        self.kernels = _kernels(self.device_index, u.dtype, self.tpc, pack is not None)
        self.pack = pack
        self.stream = torch.cuda.current_stream(u.device).cuda_stream
        self.aligned = True
        self.params = _Params(batch=self.batch, dim=self.dim, seqlen=self.seqlen, dstate=self.dstate,
                              n_groups=self.n_groups, dim_per_group=dpg, n_chunks=self.n_chunks,
                              softplus=int(softplus))
        if pack is not None:
            self.set(first_of=pack.first_of, last_of=pack.last_of)

    def set(self, **tensors) -> None:
        """Point the kernels at these tensors; 16-byte vector access only if every one of them allows it."""
        for name, t in tensors.items():
            setattr(self.params, name, _ptr(t))
        self.aligned &= all(t.data_ptr() % 16 == 0 for n, t in tensors.items() if t is not None and n in _VECTORISED)
        self.params.vec = int(self.seqlen % 8 == 0 and self.aligned)

    def segments(self, n_seg: int, per_seg: int) -> None:
        self.params.n_seg, self.params.seg_chunks = n_seg, per_seg

    def kernel(self, kind: int) -> None:
        # the segment passes skip the last segment (forward) or the first (backward): n_seg - 1 rows of blocks
        rows = self.params.n_seg - (kind in (_FWD_SEGMENTS, _BWD_SEGMENTS))
        if self.blocks and rows:
            nvrtc.launch(self.kernels.functions[kind], (self.blocks, rows, 1), (NT, 1, 1), self.kernels.smem[kind],
                         self.stream, [self.params], self.device_index)

    def segments_pass(self, A, init, backward: bool, device) -> torch.Tensor:
        """Each segment's zero-start pass, then the carry across segments from ``init`` (the initial state, or the
        last state's gradient, or None). Returns (batch, dim, n_seg, dstate): the state before each segment
        (forward) or the gradient into the state after each segment (backward)."""
        n_seg = self.params.n_seg
        shape = (self.batch, self.dim, n_seg, self.dstate)
        seg_state = _new_output(*shape, dtype=torch.float32, device=device)
        seg_dtsum = _new_output(*shape[:3], dtype=torch.float32, device=device)
        carried = _new_output(*shape, dtype=torch.float32, device=device)
        self.set(seg_state=seg_state, seg_dtsum=seg_dtsum)
        self.kernel(_BWD_SEGMENTS if backward else _FWD_SEGMENTS)
        seg_keep = self.pack.segment_keep(n_seg, self.params.seg_chunks * SC) if self.pack is not None else None
        total, threads = self.batch * self.dim * self.dstate, 256
        if total:
            args = [ctypes.c_void_p(_ptr(t)) for t in (A, seg_state, seg_dtsum, seg_keep, init, carried)] + [
                ctypes.c_longlong(v) for v in (self.batch * self.dim, self.dim, self.dstate, n_seg)] + [
                ctypes.c_int(int(backward))]
            nvrtc.launch(self.kernels.carry, (-(-total // threads), 1, 1), (threads, 1, 1), 0, self.stream, args,
                         self.device_index)
        return carried


def _common_dtype(*tensors) -> torch.dtype:
    """The kernels read one element type: the inputs' if they share one, else float32."""
    dtypes = {t.dtype for t in tensors if t is not None}
    return dtypes.pop() if len(dtypes) == 1 else torch.float32


def _as_groups(BC: torch.Tensor, dtype) -> torch.Tensor:
    return (BC.unsqueeze(1) if BC.dim() == 3 else BC).to(dtype).contiguous()


def _f32(t: torch.Tensor | None) -> torch.Tensor | None:
    return t.float().contiguous() if t is not None else None


class _SelectiveScanCuda(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, initial_state, cfg, cu_seqlens):
        io_dtype = u.dtype
        dt = _common_dtype(u, delta, z, B, C)
        shapes = (B.shape, C.shape, B.dtype, C.dtype, delta.dtype, z.dtype if z is not None else None)
        u, delta = u.to(dt).contiguous(), delta.to(dt).contiguous()
        z = z.to(dt).contiguous() if z is not None else None
        B, C = _as_groups(B, dt), _as_groups(C, dt)
        A, D, delta_bias = _f32(A), _f32(D), _f32(delta_bias)
        pack = Pack.of(cu_seqlens, u.shape[-1]) if cu_seqlens is not None else None
        launch = _Launch(u, A, B, softplus, pack)
        dev = u.device
        training = any(ctx.needs_input_grad)
        batch, dim, dstate = launch.batch, launch.dim, launch.dstate
        out = _new_output(u.shape, dtype=dt, device=dev)
        chunk_states = (_new_output(batch, dim, launch.n_chunks + 1, dstate, dtype=torch.float32, device=dev)
                        if training else None)
        init = _f32(initial_state)
        # Packed, the initial and last states are per sequence and the kernels handle them at its first and last
        # steps; nothing flows into the pack's first step from outside.
        h0, init = (init, None) if pack is not None else (None, init)
        n_last = cu_seqlens.numel() - 1 if pack is not None else batch
        last_state = _new_output(n_last, dim, dstate, dtype=torch.float32, device=dev)
        cfg = cfg.resolved(launch.blocks, dev)
        n_seg, per_seg = _segments(launch.blocks, launch.n_chunks, cfg.fwd_blocks_per_sm, cfg.fwd_segments, dev)
        launch.segments(n_seg, per_seg)
        launch.set(u=u, delta=delta, z=z, B=B, C=C, A=A, D=D, bias=delta_bias, out=out,
                   chunk_states=chunk_states, start=init, **({"h0": h0, "seq_last": last_state} if pack is not None
                                                              else {"last_state": last_state}))
        if n_seg > 1:
            launch.set(start=launch.segments_pass(A, init, backward=False, device=dev))
        launch.kernel(_FWD)
        if pack is not None:
            last_state = torch.where(pack.empty, h0 if h0 is not None else 0.0, last_state)
        if training:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, chunk_states, h0)
        ctx.pack = pack
        ctx.softplus, ctx.cfg, ctx.shapes = softplus, cfg, shapes
        ctx.has_init = initial_state is not None
        ctx.init_dtype = initial_state.dtype if initial_state is not None else None
        return out.to(io_dtype), last_state

    @staticmethod
    def backward(ctx, dout, dlast_state):
        u, delta, A, B, C, D, z, delta_bias, chunk_states, h0 = ctx.saved_tensors
        B_shape, C_shape, B_dtype, C_dtype, delta_dtype, z_dtype = ctx.shapes
        dt, dev = u.dtype, u.device
        pack = ctx.pack
        launch = _Launch(u, A, B, ctx.softplus, pack)
        batch, dim, dstate = launch.batch, launch.dim, launch.dstate
        dout = dout.to(dt).contiguous()
        dlast = _f32(dlast_state)
        du, ddelta = _new_output(u.shape, dtype=dt, device=dev), _new_output(u.shape, dtype=dt, device=dev)
        dz = _new_output(u.shape, dtype=dt, device=dev) if z is not None else None
        dA = torch.zeros(A.shape, dtype=torch.float32, device=dev)
        dB = torch.zeros(B.shape, dtype=torch.float32, device=dev)
        dC = torch.zeros(C.shape, dtype=torch.float32, device=dev)
        dD = torch.zeros(dim, dtype=torch.float32, device=dev) if D is not None else None
        dbias = torch.zeros(dim, dtype=torch.float32, device=dev) if delta_bias is not None else None
        want_dstart = ctx.has_init and ctx.needs_input_grad[9]
        n_init = pack.empty.shape[0] if pack is not None else batch
        dstart = _new_output(n_init, dim, dstate, dtype=torch.float32, device=dev) if want_dstart else None
        cfg = ctx.cfg
        n_seg, per_seg = _segments(launch.blocks, launch.n_chunks, cfg.bwd_blocks_per_sm, cfg.bwd_segments, dev)
        launch.segments(n_seg, per_seg)
        launch.set(u=u, delta=delta, z=z, dout=dout, B=B, C=C, A=A, D=D, bias=delta_bias,
                   chunk_states=chunk_states, du=du, ddelta=ddelta, dz=dz, dA=dA, dB=dB, dC=dC, dD=dD, dbias=dbias)
        # Packed, each sequence's last-state gradient enters at its last step and its initial state's gradient
        # leaves at its first, inside the kernels: nothing enters after the pack's last step.
        end_grad = None if pack is not None else dlast
        if pack is not None:
            launch.set(h0=h0, dlast=dlast, dh0=dstart)
        else:
            launch.set(end_grad=end_grad, dstart=dstart)
        if n_seg > 1:
            launch.set(end_grad=launch.segments_pass(A, end_grad, backward=True, device=dev))
        launch.kernel(_BWD_CAPPED if cfg.bwd_register_cap else _BWD)
        if pack is not None and dstart is not None:  # a zero-length sequence's last state is its initial state
            dstart = torch.where(pack.empty, dlast if dlast is not None else 0.0, dstart)
        return (du, ddelta.to(delta_dtype), dA, dB.reshape(B_shape).to(B_dtype), dC.reshape(C_shape).to(C_dtype),
                dD, dz.to(z_dtype) if dz is not None else None, dbias, None,
                dstart.to(ctx.init_dtype) if dstart is not None else None, None, None)


def selective_scan_cuda(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                        initial_state=None, return_last_state=False, config: CudaScanConfig | None = None,
                        cu_seqlens=None):
    """Selective scan with the CUDA kernels; arguments and result as ``ssm_core.selective_scan`` (inputs checked
    there). Gradients come back in each input's dtype (A, D, delta_bias in float32)."""
    out, last_state = _SelectiveScanCuda.apply(u, delta, A, B, C, D, z, delta_bias, bool(delta_softplus),
                                               initial_state, config or CudaScanConfig(), cu_seqlens)
    return (out, last_state) if return_last_state else out
