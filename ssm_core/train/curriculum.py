"""Sequence-length warmup: train on short sequences first, doubling the length stage by stage up to the target.

The Mamba paper pretrains its long-context DNA models this way (after HyenaDNA), and a length curriculum is the
usual way to make a long-range task learnable at all: at the target length the few informative tokens are lost
among thousands of others until the model has learnt, on short sequences, what to keep.

A schedule is a list of ``(first step, length)`` stages; the first ``fraction`` of the steps is shared equally by
the warmup stages, the rest runs at the target length.
"""
from __future__ import annotations

from ssm_core.utils.ranges import Range

WARMUP_FRACTION = Range(0, 1, high_open=True)  # share of the steps the shorter stages take


def length_schedule(steps: int, target: int, start: int, fraction: float) -> list[tuple[int, int]]:
    """Stages ``[(first step, length), ...]``, lengths doubling from ``start`` to ``target``; no warmup when
    ``start >= target`` or ``fraction`` leaves no step to a stage. Raises ValueError for a target that is not
    ``start`` times a power of two, or a fraction outside [0, 1)."""
    if target < 2:
        raise ValueError(f"the target length must be at least 2, got {target}")
    if not WARMUP_FRACTION.contains(fraction):
        raise ValueError(f"the warmup fraction must be {WARMUP_FRACTION}, got {fraction}")
    lengths = []
    length = min(max(start, 1), target)
    while length < target:
        lengths.append(length)
        length *= 2
    if lengths and target % lengths[0]:
        raise ValueError(f"the warmup doubles {start} up to {target}, but {target} is not {start} times a power "
                         "of two")
    per_stage = int(steps * fraction) // len(lengths) if lengths else 0
    if per_stage == 0:
        return [(0, target)]
    return [(i * per_stage, length) for i, length in enumerate(lengths)] + [(len(lengths) * per_stage, target)]


def length_at(schedule: list[tuple[int, int]], step: int) -> int:
    """The sequence length of optimiser step ``step`` (0-based) under ``schedule``."""
    return [length for first, length in schedule if first <= step][-1]


def describe(schedule: list[tuple[int, int]], unit: str = "tokens") -> str:
    """One line: ``"128 tokens from step 0, 256 tokens from step 166, ..."``."""
    return ", ".join(f"{length} {unit} from step {first}" for first, length in schedule)
