"""Small statistics the suite's plots and reports share."""
from __future__ import annotations

import math


def wilson_interval(correct: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of an accuracy of ``correct`` out of ``n`` items (95% for z = 1.96): unlike the
    normal approximation it stays inside [0, 1] and is not empty at 0% or 100%."""
    if n <= 0:
        raise ValueError(f"an interval needs at least one item; got n = {n}")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)
