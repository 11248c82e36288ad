"""Checks behind benchmarks/NOTES_induction.md (issue #23): things that could stop the paper's induction-heads model
from extrapolating to 2^20 for reasons other than what it learnt."""
from __future__ import annotations

import pytest
import torch

from ssm_core.synthetic.runner import SyntheticExperiment, SyntheticTask
from ssm_core.train.engine import parameter_groups


def test_weight_decay_never_touches_the_ssm_parameters():
    # mamba-ssm keeps A_log, D and the Δ bias out of weight decay; the paper preset uses none at all
    exp = SyntheticExperiment.from_preset("paper", "induction")
    assert exp.train.optim.weight_decay == 0.0
    model = SyntheticTask(exp).build_model()
    decay, no_decay = (group["params"] for group in parameter_groups(model, weight_decay=0.1))
    names = {id(p): name for name, p in model.named_parameters()}
    kept = {names[id(p)] for p in no_decay}
    for layer in range(exp.model.n_layer):
        prefix = f"backbone.layers.{layer}.mixer.fwd."
        assert {prefix + "A_log", prefix + "D", prefix + "dt_proj.bias"} <= kept
    assert all(p.ndim >= 2 for p in decay)  # weight matrices and conv kernels and "backbone.embedding.weight" in kept


@pytest.mark.slow
def test_chunked_inference_equals_the_full_forward_at_2_16():
    # The 2^20-token test reads sequences in chunks of 2^16 carrying the state. Half the channels are slowed to
    # Δ ~ 1e-4 (a memory of ~10^4 tokens, as a trained model's) so that a state dropped or mangled at a chunk
    # boundary would show in the answer logits.
    exp = SyntheticExperiment.from_preset("paper", "induction")
    task = SyntheticTask(exp)
    torch.manual_seed(0)
    model = task.build_model().eval()
    with torch.no_grad():
        for layer in model.backbone.layers:
            layer.mixer.fwd.dt_proj.bias[::2] -= 6.0
    data = task.dataset(2, 2**16, seed=3)
    ids = torch.stack([data[i]["input_ids"] for i in range(2)])
    with torch.no_grad():
        whole = task.answer_logits(model, ids)
        for chunk in (4096, 1000):  # a power of two and a length that splits no power of two
            torch.testing.assert_close(task.answer_logits(model, ids, chunk=chunk), whole, rtol=0, atol=1e-5)
