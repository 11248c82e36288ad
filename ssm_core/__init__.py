"""ssm_core: the shared engine — the selective scan, the Mamba block, the backbone and its heads, the training loop.

The scan has a plain PyTorch reference, numba kernels for the CPU, and for CUDA GPUs CUDA C++ kernels compiled at
first use with NVRTC from PyTorch's CUDA wheels (``ops/scan_cuda.py``: no toolkit, cached on disk) with Triton
kernels as their fallback; ``ops.selective_scan.choose_backend`` decides which runs.
"""
import os

# PyTorch and numba's CPU kernels each run an OpenMP thread pool; with the default (active) wait policy the idle
# pool spins and starves the busy one: a training step measured 10x slower on 2 cores. Passive waiting must be
# chosen before torch loads its OpenMP runtime, hence here, first; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from .models import (MambaBackbone, MambaConfig, MambaLMHeadModel, MambaSequenceClassifier, from_pretrained,
                     load_model, load_weights, save_model, save_pretrained)
from .modules import Mamba, MambaState
from .ops import selective_scan, selective_state_update

__version__ = "0.1.0"
__all__ = ["selective_scan", "selective_state_update", "Mamba", "MambaState", "MambaBackbone", "MambaConfig",
           "MambaLMHeadModel", "MambaSequenceClassifier", "load_model", "load_weights", "save_model", "from_pretrained",
           "save_pretrained"]
