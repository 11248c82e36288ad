"""classify/embed read short windows packed back to back (cu_seqlens): the same numbers as one window at a time."""
import numpy as np
import pytest
import torch

from ssm_core import MambaConfig, MambaLMHeadModel, MambaSequenceClassifier
from genomics.classify import WindowedModel
from genomics.tokenizer import VOCAB_SIZE


def windows(seed=0):
    """Lengths around every edge: 1 base, scattered short lengths (packed), repeats of one length (stacked),
    exactly the chunk (1024 on CPU) and longer (read chunk by chunk)."""
    rng = np.random.default_rng(seed)
    lengths = [1, 2, 150, 150, 97, 1024, 1500, 150, 3, 350, 2100, 150, 300, 250, 200]
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
    # small packs: the 8 scattered short windows in 5 packs; the four 150-base windows (600 bases >= pack_tokens)
    # stacked; windows of pack_tokens or more read alone, chunk by chunk beyond the chunk
    reader = WindowedModel(model, 4096, pack_tokens=400)
    packed_calls, stacked_calls = [], []
    run_packed, run = reader.run_packed, reader.run
    reader.run_packed = lambda w, h=False: packed_calls.append(len(w)) or run_packed(w, h)
    reader.run = lambda t, h=False: stacked_calls.append(t.shape) or run(t, h)
    packed = np.stack(reader.batched(ws, head=head))
    assert packed_calls == [4, 1, 1, 1, 1]
    assert sorted(stacked_calls) == [(1, 1024), (1, 1500), (1, 2100), (4, 150)]
    assert packed.shape == alone.shape
    np.testing.assert_allclose(packed, alone, atol=1e-5, rtol=0)
