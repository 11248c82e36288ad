"""ssm_core: the shared engine — selective scan (reference, numba CPU, Triton GPU), Mamba block, backbone."""
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
