"""Generators for the two synthetic tasks of the Mamba paper (Gu & Dao 2023, §4.1 and appendix E.1).

Both are in-context tasks on random tokens, so each example is drawn fresh from (seed, index) and a dataset is an
endless supply of new examples rather than a fixed corpus.

Induction heads (vocabulary V): tokens 0 .. V-2 are ordinary, V-1 is the trigger. A sequence of length L is
random ordinary tokens with the trigger at one random position p (p <= L-3), the token after it (the "value")
also random, and the trigger again at the last position. The model must predict the value at position L-1,
i.e. recall what followed the trigger earlier. Chance accuracy is 1 / (V - 1). With ``first_within=K`` the first
trigger falls among the first K positions instead, so the value lies ~L tokens before the query ("far trigger"
training: the only way we found to make the trained model's memory independent of the length, issue #23).

Selective copying (vocabulary V, M data tokens): token 0 is noise, V-1 is the marker, 1 .. V-2 are data tokens.
A sequence of length L holds M random data tokens at random (sorted) positions among noise in its first L-M
positions, followed by M markers; at the marker positions the model must output the data tokens in order,
skipping the noise (which a time-invariant model cannot do by position alone). Chance accuracy is 1 / (V - 2).
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def induction_heads_example(rng: np.random.Generator, seqlen: int, vocab: int,
                            first_within: int = 0) -> tuple[np.ndarray, int]:
    """One induction-heads sequence `(seqlen,)` of int64 tokens and its answer token; with `first_within` > 0 the
    first trigger is among the first `first_within` positions (all of them up to seqlen - 3 if fewer)."""
    if vocab < 3 or seqlen < 4 or first_within < 0:
        raise ValueError(f"induction heads needs vocab >= 3, seqlen >= 4 and first_within >= 0; got vocab {vocab}, "
                         f"seqlen {seqlen}, first_within {first_within}")
    trigger = vocab - 1
    tokens = rng.integers(0, trigger, size=seqlen, dtype=np.int64)
    # the value at position + 1 lies before the final trigger
    position = int(rng.integers(0, min(first_within or seqlen, seqlen - 2)))
    tokens[position] = trigger
    tokens[-1] = trigger
    return tokens, int(tokens[position + 1])


def selective_copying_example(rng: np.random.Generator, seqlen: int, vocab: int,
                              num_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """One selective-copying sequence `(seqlen,)` and its `(num_tokens,)` data tokens to reproduce."""
    if vocab < 3 or num_tokens < 1 or seqlen < 2 * num_tokens:
        raise ValueError(f"selective copying needs vocab >= 3, num_tokens >= 1 and seqlen >= 2 * num_tokens; got "
                         f"vocab {vocab}, num_tokens {num_tokens}, seqlen {seqlen}")
    noise, marker = 0, vocab - 1
    data = rng.integers(1, marker, size=num_tokens, dtype=np.int64)
    positions = np.sort(rng.choice(seqlen - num_tokens, size=num_tokens, replace=False))
    tokens = np.full(seqlen, noise, dtype=np.int64)
    tokens[positions] = data
    tokens[seqlen - num_tokens:] = marker
    return tokens, data


class SyntheticDataset(Dataset):
    """`size` examples of one task at one length; example i is a function of (seed, i) only.

    Items are dicts ``{"input_ids": (seqlen,), "target": ()}`` for induction heads and
    ``{"input_ids": (seqlen,), "target": (num_tokens,)}`` for selective copying. ``first_within`` (induction
    heads only) puts the first trigger among the first that many positions.
    """

    def __init__(self, task: str, size: int, seqlen: int, vocab: int, seed: int, num_tokens: int = 16,
                 first_within: int = 0):
        if task not in ("induction", "copying"):
            raise ValueError(f"task must be 'induction' or 'copying'; got {task!r}")
        if first_within and task != "induction":
            raise ValueError(f"first_within places the induction trigger; task {task!r} has none")
        self.task, self.size, self.seqlen, self.vocab = task, size, seqlen, vocab
        self.seed, self.num_tokens, self.first_within = seed, num_tokens, first_within
        self[0]  # validate the parameters now, not in a loader worker

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.size:
            raise IndexError(f"index {index} out of range for {self.size} examples")
        rng = np.random.default_rng([self.seed, index])
        if self.task == "induction":
            tokens, target = induction_heads_example(rng, self.seqlen, self.vocab, self.first_within)
        else:
            tokens, target = selective_copying_example(rng, self.seqlen, self.vocab, self.num_tokens)
        return {"input_ids": torch.from_numpy(tokens), "target": torch.as_tensor(target)}
