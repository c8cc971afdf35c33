"""Test-time adaptation: neuro-modulated Hebbian learning (NHL) on unlabelled batches.

* :mod:`~streamadapt.tta.hebbian`: the soft Hebbian rule (pure function);
* :mod:`~streamadapt.tta.nhl`: the bounded NHL step (:class:`NHL`);
* :mod:`~streamadapt.tta.hooks`: the protocol an adapter implements to be adapted;
* :mod:`~streamadapt.tta.net` and :mod:`~streamadapt.tta.model`: MLP adapters that do.
"""

from streamadapt.tta.hebbian import soft_hebb_delta
from streamadapt.tta.hooks import (
    HebbianHooks,
    SupportsLRScale,
    SupportsMemoryRefresh,
    supported_actions,
    supports,
)
from streamadapt.tta.nhl import NHL

__all__ = [
    "NHL",
    "HebbianHooks",
    "SupportsLRScale",
    "SupportsMemoryRefresh",
    "soft_hebb_delta",
    "supported_actions",
    "supports",
]
