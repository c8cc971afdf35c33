"""The torch network behind the Hebbian adapters: input layer, neuro-modulator, frozen rest.

``HebbianNet`` is ``input (Linear) -> Modulator -> tanh -> Linear -> tanh -> Linear -> 1``.
Its parts map onto NHL (Tang et al., CVPR 2023, arXiv 2303.00914): the first ``Linear`` is
the input layer the soft Hebbian rule updates; :class:`Modulator` is the small
neuro-modulator layer trained at test time from an unsupervised loss; the two last layers
are the rest, frozen during adaptation.

The modulator's form is this project's choice (the paper's layer is not public): it
standardises each hidden unit with running statistics and applies a learned scale and
shift, as the affine part of batch normalisation that TENT (Wang et al., ICLR 2021) adapts.
The running statistics move only in training mode (supervised learning and test-time
adaptation), so prediction never depends on how a batch is split.

:class:`AffineModulator` is the stateless variant the serving models (``liquid``,
``ctr-net``) put after their input layer: a per-unit scale and shift, the identity at
initialisation, no running statistics (why: see its docstring).

>>> import torch
>>> net = HebbianNet(3, 4, seed=0)
>>> net(torch.zeros(2, 3)).shape
torch.Size([2])
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["AffineModulator", "HebbianNet", "Modulator"]


class Modulator(nn.Module):
    """Per-unit standardisation with running statistics, then a learned scale and shift.

    Parameters
    ----------
    dim
        Number of units.
    momentum
        Weight of a new batch in the running mean and variance.
    """

    def __init__(self, dim: int, momentum: float = 0.05) -> None:
        super().__init__()
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.training and h.shape[0] > 0:
            with torch.no_grad():
                m = self.momentum
                batch = h.detach()
                self.running_mean.mul_(1 - m).add_(m * batch.mean(0))
                var = batch.var(0, unbiased=False) if batch.shape[0] > 1 else None
                if var is not None and torch.isfinite(var).all():
                    self.running_var.mul_(1 - m).add_(m * var)
        z = (h - self.running_mean) / torch.sqrt(self.running_var.clamp_min(1e-6))
        return self.scale * z + self.shift


class AffineModulator(nn.Module):
    """Per-unit ``scale * h + shift``, the identity at initialisation.

    The neuro-modulator of the serving models. Unlike :class:`Modulator` it keeps no
    running statistics, for three reasons: the untrained model stays exactly what it was
    without one (``1 * h + 0`` is exact in floating point); a batch of one timestamp over
    many links has zero variance in its time features, which a running standardisation
    would divide by; and a model that never switches to eval mode (``ctr-net``) would
    otherwise make its predictions depend on how the stream is cut into batches.

    Parameters
    ----------
    dim
        Number of units.

    >>> import torch
    >>> AffineModulator(3)(torch.tensor([[1.0, -2.0, 0.5]])).tolist()
    [[1.0, -2.0, 0.5]]
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.scale * h + self.shift


class HebbianNet(nn.Module):
    """Input layer, neuro-modulator, then a small frozen-at-test-time head.

    Parameters
    ----------
    in_features
        Width of the encoded input.
    hidden
        Width of the hidden layers.
    momentum
        Running-statistics momentum of the modulator.
    seed
        Seed of the weight initialisation.
    """

    def __init__(self, in_features: int, hidden: int = 32, momentum: float = 0.05,
                 seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.input = nn.Linear(in_features, hidden)
            self.modulator = Modulator(hidden, momentum)
            self.body = nn.Linear(hidden, hidden)
            self.out = nn.Linear(hidden, 1)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The last hidden layer (a representation for an error memory)."""
        return torch.tanh(self.body(torch.tanh(self.modulator(self.input(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden(x)).squeeze(-1)
