"""Error memories: the non-parametric fast learner of ReLoop2 (Zhu et al., KDD 2023).

* :class:`~streamadapt.memory.sketch.LSHSketch`: RACE-style SimHash sketch, bounded bytes.
* :class:`~streamadapt.memory.exact.ExactMemory`: exact cosine kNN over a ring buffer.
* :func:`~streamadapt.memory.compensation.compensate`: the correction of the base prediction.
* :class:`~streamadapt.memory.gate.LambdaGate`: an online gate on the correction's weight.

:func:`make_memory` builds either by name (``"sketch"`` or ``"exact"``).
"""

from __future__ import annotations

from typing import Any

from streamadapt.memory.base import ErrorMemory, MemoryRead
from streamadapt.memory.compensation import compensate
from streamadapt.memory.exact import ExactMemory
from streamadapt.memory.gate import LambdaGate, event_loss
from streamadapt.memory.sketch import LSHSketch

__all__ = ["ErrorMemory", "ExactMemory", "LSHSketch", "LambdaGate", "MemoryRead", "MEMORIES",
           "compensate", "event_loss", "make_memory"]

MEMORIES: dict[str, type[ErrorMemory]] = {"sketch": LSHSketch, "exact": ExactMemory}


def make_memory(kind: str, dim: int, **params: Any) -> ErrorMemory:
    """Build an error memory by kind, e.g. ``make_memory("sketch", 32, n_tables=64)``.

    >>> make_memory("ring", 8)
    Traceback (most recent call last):
    ...
    ValueError: unknown memory 'ring'; valid choices: sketch, exact
    """
    if kind not in MEMORIES:
        raise ValueError(f"unknown memory {kind!r}; valid choices: {', '.join(MEMORIES)}")
    return MEMORIES[kind](dim, **params)
