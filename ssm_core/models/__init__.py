from .backbone import MambaBackbone, MambaLMHeadModel, MambaSequenceClassifier, ResidualBlock, sample_logits
from .config import MambaConfig
from .errors import ModelFileError, ModelFileMissingError, UnknownModelError, WrongModelError
from .io import (ModelInfo, PretrainedModel, from_pretrained, load_model, load_weights, read_model_info, save_model,
                 save_pretrained, update_model_info)
from .registry import describe, register_model

__all__ = ["MambaBackbone", "MambaLMHeadModel", "MambaSequenceClassifier", "ResidualBlock", "MambaConfig",
           "sample_logits", "load_model", "load_weights", "save_model", "from_pretrained", "save_pretrained",
           "ModelInfo", "PretrainedModel", "read_model_info", "update_model_info", "register_model", "describe",
           "ModelFileError", "ModelFileMissingError", "UnknownModelError", "WrongModelError"]
