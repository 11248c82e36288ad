"""Run-time compilation of CUDA C++ with NVRTC, and kernel launches through the CUDA driver API.

NVRTC (``libnvrtc``) ships inside PyTorch's CUDA wheels (``nvidia-cuda-nvrtc``) and the driver (``libcuda``) comes
with every NVIDIA GPU, so kernels compiled here need no CUDA toolkit, no ``nvcc``, no host compiler and no
PyTorch header. Both libraries are called through ``ctypes``: the NVRTC and driver C APIs are small and stable,
while the Python bindings differ between CUDA 12 and 13 and PyTorch's own ``torch.cuda._compile_kernel`` cannot
pass a struct by value or read a ``__constant__`` (what the scan kernels need).

Compiled code (cubin) is cached on disk per source hash, GPU architecture, NVRTC, CUDA and PyTorch versions and
options (``SSM_CORE_CACHE_DIR``, default ``~/.cache/ssm_core``); a file lock lets one process (say one torchrun
rank) compile while the others wait for its result, and files are written by rename, so readers never see a
partial cubin.
"""
from __future__ import annotations

import ctypes
import fcntl
import functools
import glob
import hashlib
import json
import os
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch


class NvrtcUnavailable(RuntimeError):
    """NVRTC or the CUDA driver cannot be loaded here."""


class NvrtcCompileError(RuntimeError):
    """The source did not compile; the message holds NVRTC's log."""


class CudaDriverError(RuntimeError):
    """A CUDA driver call failed."""


def _nvidia_dirs(sub: str) -> list[str]:
    """``sub`` folders of the ``nvidia`` wheels (nvidia/cu13/lib, nvidia/cuda_nvrtc/lib, ...), newest layout first."""
    try:
        import nvidia  # namespace package of the nvidia-* wheels that PyTorch's CUDA builds depend on
    except ImportError:
        return []
    return sorted({d for root in nvidia.__path__ for d in glob.glob(os.path.join(root, "*", sub))}, reverse=True)


@functools.cache
def nvrtc_library() -> ctypes.CDLL:
    """libnvrtc: the one PyTorch's CUDA wheels brought (often already loaded by ``import torch``), else CUDA_HOME's."""
    major = (torch.version.cuda or "").split(".")[0]
    candidates = [f"libnvrtc.so.{major}"] if major else []
    candidates += [p for d in _nvidia_dirs("lib") for p in sorted(glob.glob(os.path.join(d, "libnvrtc.so*")))]
    if os.environ.get("CUDA_HOME"):
        candidates += sorted(glob.glob(os.path.join(os.environ["CUDA_HOME"], "lib64", "libnvrtc.so*")))
    errors = []
    for name in candidates:
        try:
            return ctypes.CDLL(name)
        except OSError as e:
            errors.append(f"{name}: {e}")
    raise NvrtcUnavailable("libnvrtc not found (it comes with PyTorch's CUDA wheels as nvidia-cuda-nvrtc): "
                           + ("; ".join(errors) or "no candidate"))


@functools.cache
def driver_library() -> ctypes.CDLL:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError as e:
        raise NvrtcUnavailable(f"the CUDA driver (libcuda.so.1) cannot be loaded: {e}") from e
    lib.cuGetErrorString.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_char_p)]
    lib.cuModuleGetGlobal_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_size_t),
                                         ctypes.c_void_p, ctypes.c_char_p]
    lib.cuMemcpyDtoH_v2.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t]
    lib.cuLaunchKernel.argtypes = [ctypes.c_void_p] + [ctypes.c_uint] * 7 + [ctypes.c_void_p] * 3
    return lib


def nvrtc_version() -> str:
    major, minor = ctypes.c_int(), ctypes.c_int()
    nvrtc_library().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor))
    return f"{major.value}.{minor.value}"


def include_dirs() -> list[str]:
    """Folders holding cuda_fp16.h / cuda_bf16.h: the nvidia wheels' include folders, then CUDA_HOME's."""
    dirs = [d for d in _nvidia_dirs("include") if os.path.isfile(os.path.join(d, "cuda_bf16.h"))]
    if os.environ.get("CUDA_HOME"):
        dirs.append(os.path.join(os.environ["CUDA_HOME"], "include"))
    return dirs


def _check_nvrtc(code: int, what: str) -> None:
    if code != 0:
        lib = nvrtc_library()
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        raise NvrtcCompileError(f"NVRTC {what}: {lib.nvrtcGetErrorString(code).decode()}")


def compile_cubin(source: str, arch: str, names: list[str], options: list[str],
                  filename: str = "source.cu") -> tuple[bytes, dict[str, str]]:
    """Compile ``source`` for ``arch`` (e.g. "sm_90") to a cubin, instantiating each of ``names`` (kernels or
    variables, C++ names such as ``ns::kernel<float, 4>``). Returns (cubin, {name: symbol in the cubin})."""
    lib = nvrtc_library()
    prog = ctypes.c_void_p()
    _check_nvrtc(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), filename.encode(), 0, None, None),
                 "create program")
    try:
        for name in names:
            _check_nvrtc(lib.nvrtcAddNameExpression(prog, name.encode()), f"name expression {name}")
        opts = [f"--gpu-architecture={arch}", *options, *(f"--include-path={d}" for d in include_dirs())]
        c_opts = (ctypes.c_char_p * len(opts))(*(o.encode() for o in opts))
        code = lib.nvrtcCompileProgram(prog, len(opts), c_opts)
        if code != 0:
            size = ctypes.c_size_t()
            lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
            log = ctypes.create_string_buffer(size.value)
            lib.nvrtcGetProgramLog(prog, log)
            raise NvrtcCompileError(f"{filename} does not compile with NVRTC {nvrtc_version()} for {arch}:\n"
                                    + log.value.decode(errors="replace").strip())
        size = ctypes.c_size_t()
        _check_nvrtc(lib.nvrtcGetCUBINSize(prog, ctypes.byref(size)), "cubin size")
        cubin = ctypes.create_string_buffer(size.value)
        _check_nvrtc(lib.nvrtcGetCUBIN(prog, cubin), "cubin")
        lowered = {}
        for name in names:
            out = ctypes.c_char_p()
            _check_nvrtc(lib.nvrtcGetLoweredName(prog, name.encode(), ctypes.byref(out)), f"lowered name {name}")
            lowered[name] = out.value.decode()
        return cubin.raw, lowered
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


def cache_root() -> Path:
    return Path(os.environ.get("SSM_CORE_CACHE_DIR") or Path.home() / ".cache" / "ssm_core")


def cached_cubin(source: str, arch: str, names: list[str], options: list[str], label: str,
                 filename: str = "source.cu") -> tuple[bytes, dict[str, str]]:
    """``compile_cubin`` through the on-disk cache. The first compile of a key prints one line to stderr."""
    key = hashlib.sha256(json.dumps([source, arch, names, options, nvrtc_version(), torch.version.cuda,
                                     torch.__version__.split("+")[0]]).encode()).hexdigest()[:24]
    folder = cache_root() / "nvrtc" / arch
    folder.mkdir(parents=True, exist_ok=True)
    cubin_path, names_path = folder / f"{key}.cubin", folder / f"{key}.json"

    def read():
        if cubin_path.is_file() and names_path.is_file():
            return cubin_path.read_bytes(), json.loads(names_path.read_text())
        return None

    found = read()
    if found:
        return found
    with open(folder / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)   # another process compiling the same key: wait for its files
        found = read()
        if found:
            return found
        print(f"ssm_core: compiling {label} for {arch} with NVRTC {nvrtc_version()} (once; cached in {folder})",
              file=sys.stderr, flush=True)
        start = time.perf_counter()
        cubin, lowered = compile_cubin(source, arch, names, options, filename)
        for path, data in ((names_path, json.dumps(lowered).encode()), (cubin_path, cubin)):  # cubin last: the marker
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        compile_seconds[label] = time.perf_counter() - start
    return cubin, lowered


compile_seconds: dict[str, float] = {}   # label -> seconds, for the compiles this process made (benchmarks read it)


def registers_per_kernel(cubin: bytes) -> dict[str, int]:
    """{kernel symbol: registers per thread} read from a cubin, no GPU needed. Registers bound how many blocks fit
    on an SM, which is what made the NVRTC-built bf16 forward 40% slower than nvcc's build (see the tests).

    A cubin is an ELF file: each kernel's code is the section ``.text.<symbol>``, whose ``sh_info`` is the kernel's
    symbol index, and ``.nv.info`` holds (format, attribute, size, payload) records, of which attribute 0x2f
    (EIATTR_REGCOUNT) carries (symbol index, registers)."""
    (section_table,) = struct.unpack_from("<Q", cubin, 0x28)
    entry_size, count, names_index = struct.unpack_from("<HHH", cubin, 0x3A)
    # (name offset, type, flags, address, offset, size, link, info, alignment, entry size) per section
    sections = [struct.unpack_from("<IIQQQQIIQQ", cubin, section_table + i * entry_size) for i in range(count)]
    names_at = sections[names_index][4]

    def name(offset: int) -> str:
        start = names_at + offset
        return cubin[start:cubin.index(b"\0", start)].decode()

    symbol_of = {s[7]: name(s[0])[len(".text."):] for s in sections if name(s[0]).startswith(".text.")}
    registers = {}
    for s in sections:
        if name(s[0]) != ".nv.info":
            continue
        info, at = cubin[s[4]:s[4] + s[5]], 0
        while at < len(info):
            fmt, attribute = info[at], info[at + 1]
            size = struct.unpack_from("<H", info, at + 2)[0] if fmt == 0x04 else 0  # 0x04: sized payload follows
            if attribute == 0x2F:
                index, used = struct.unpack_from("<II", info, at + 4)
                if index in symbol_of:
                    registers[symbol_of[index]] = used
            at += 4 + size
    return registers


# ---------------------------------------------------------------------------------------------------------------
# Driver API: modules, functions, launches
# ---------------------------------------------------------------------------------------------------------------

CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES = 8
CU_FUNC_ATTRIBUTE_PREFERRED_SHARED_MEMORY_CARVEOUT = 9
SHAREDMEM_CARVEOUT_MAX_SHARED = 100


def check_driver(code: int, what: str) -> None:
    if code != 0:
        msg = ctypes.c_char_p()
        driver_library().cuGetErrorString(code, ctypes.byref(msg))
        raise CudaDriverError(f"{what}: {(msg.value or b'unknown error').decode()} (CUresult {code})")


@functools.cache
def _primary_context(device_index: int) -> ctypes.c_void_p:
    lib = driver_library()
    check_driver(lib.cuInit(0), "cuInit")
    dev, ctx = ctypes.c_int(), ctypes.c_void_p()
    check_driver(lib.cuDeviceGet(ctypes.byref(dev), device_index), "cuDeviceGet")
    check_driver(lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
    return ctx


def make_current(device_index: int) -> None:
    """Make the device's primary context (the one PyTorch uses) current on this thread."""
    lib, ctx = driver_library(), _primary_context(device_index)
    current = ctypes.c_void_p()
    check_driver(lib.cuCtxGetCurrent(ctypes.byref(current)), "cuCtxGetCurrent")
    if current.value != ctx.value:
        check_driver(lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")


@dataclass
class Module:
    """A cubin loaded into one device's primary context."""
    handle: ctypes.c_void_p
    device_index: int

    @classmethod
    def load(cls, cubin: bytes, device_index: int) -> "Module":
        make_current(device_index)
        handle = ctypes.c_void_p()
        check_driver(driver_library().cuModuleLoadData(ctypes.byref(handle), cubin), "cuModuleLoadData")
        return cls(handle, device_index)

    def function(self, symbol: str) -> ctypes.c_void_p:
        func = ctypes.c_void_p()
        check_driver(driver_library().cuModuleGetFunction(ctypes.byref(func), self.handle, symbol.encode()),
                     f"cuModuleGetFunction({symbol})")
        return func

    def read_global(self, symbol: str) -> bytes:
        """The bytes of a ``__device__``/``__constant__`` variable."""
        make_current(self.device_index)
        ptr, size = ctypes.c_uint64(), ctypes.c_size_t()
        lib = driver_library()
        check_driver(lib.cuModuleGetGlobal_v2(ctypes.byref(ptr), ctypes.byref(size), self.handle, symbol.encode()),
                     f"cuModuleGetGlobal({symbol})")
        buf = ctypes.create_string_buffer(size.value)
        check_driver(lib.cuMemcpyDtoH_v2(buf, ptr, size), f"cuMemcpyDtoH({symbol})")
        return buf.raw


def set_attribute(func: ctypes.c_void_p, attribute: int, value: int) -> None:
    check_driver(driver_library().cuFuncSetAttribute(func, attribute, value), f"cuFuncSetAttribute({attribute})")


def launch(func: ctypes.c_void_p, grid: tuple[int, int, int], block: tuple[int, int, int], shared_bytes: int,
           stream: int, args: list, device_index: int) -> None:
    """Launch ``func`` on ``stream`` (a cudaStream_t as int); ``args``: ctypes objects (structs by value too)."""
    make_current(device_index)
    params = (ctypes.c_void_p * len(args))(*(ctypes.cast(ctypes.pointer(a), ctypes.c_void_p) for a in args))
    check_driver(driver_library().cuLaunchKernel(func, *grid, *block, shared_bytes, stream, params, None),
                 "cuLaunchKernel")
