"""classify/embed read short windows packed back to back (cu_seqlens): the same numbers as one window at a time."""
import numpy as np
import pytest
import torch

from ssm_core import MambaConfig, MambaLMHeadModel, MambaSequenceClassifier
from genomics.classify import WindowedModel
from genomics.tokenizer import VOCAB_SIZE


def windows(seed=0):
    """Lengths around every edge: 1 base, short reads, exactly the chunk (1024 on CPU), longer than it (stacked and
    read chunk by chunk), and repeats of one length (that stacking used to batch)."""
    rng = np.random.default_rng(seed)
    lengths = [1, 2, 150, 150, 97, 1024, 1500, 150, 3, 700, 2100, 150]
    return [rng.integers(1, 5, n).astype(np.uint8) for n in lengths]


@pytest.mark.parametrize("kind", ["classifier-mean", "classifier-last", "language-model"])
def test_packed_windows_give_what_each_window_gives_alone(kind):
    torch.manual_seed(0)
    config = MambaConfig(vocab_size=VOCAB_SIZE, n_layer=2, d_model=32, num_classes=0 if kind == "language-model" else 3,
                         pooling="last" if kind == "classifier-last" else "mean",
                         standardize_pooled=kind != "language-model")
    model = (MambaLMHeadModel if kind == "language-model" else MambaSequenceClassifier)(config).eval()
    head = kind != "language-model"
    ws = windows()
    alone = np.stack(WindowedModel(model, 4096, pack=False, batch_tokens=1).batched(ws, head=head))
    # small packs: several packs, a pack boundary inside the list, windows longer than the chunk left out of packs
    reader = WindowedModel(model, 4096, pack_tokens=400)
    calls = []
    run_packed = reader.run_packed
    reader.run_packed = lambda w, h=False: calls.append(len(w)) or run_packed(w, h)
    packed = np.stack(reader.batched(ws, head=head))
    assert len(calls) >= 3 and sum(calls) == sum(len(w) <= reader.chunk for w in ws)
    assert packed.shape == alone.shape
    np.testing.assert_allclose(packed, alone, atol=1e-5, rtol=0)
