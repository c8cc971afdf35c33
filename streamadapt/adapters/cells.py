"""Liquid recurrent cells that hold no hidden state: ``forward(x, h, ts) -> h_new``.

:class:`CfCCell` is the closed-form continuous-time cell of Hasani et al., "Closed-form
continuous-time neural networks", Nature Machine Intelligence 4, 2022 (arXiv 2106.13898),
with the same parameters and arithmetic as ``ncps.torch.CfCCell`` but its four heads
(``ff1``, ``ff2``, ``time_a``, ``time_b``) fused into one matrix product, which is what
makes a step over a few hundred links cheap. :meth:`CfCCell.from_ncps` copies the weights
of an ``ncps`` cell; the tests check that both give the same states.

:class:`LTCCell` wraps ``ncps.torch.LTCCell`` (Hasani et al., "Liquid time-constant
networks", AAAI 2021) with a fully connected wiring behind the same interface; it unrolls
its fused ODE solver ``ode_unfolds`` times per step and is several times slower.

The elapsed time ``ts`` (shape ``(batch, 1)``) enters the cell's time gate, so irregular
spacing between samples is native.

>>> import torch
>>> _ = torch.manual_seed(0)
>>> cell = CfCCell(3, 4, backbone_units=8)
>>> h = cell(torch.ones(2, 3), torch.zeros(2, 4), torch.ones(2, 1))
>>> tuple(h.shape), bool(torch.isfinite(h).all())
((2, 4), True)
>>> CfCCell(3, 4, mode="pure")
Traceback (most recent call last):
...
ValueError: unknown mode 'pure'; valid choices: default, no_gate
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["CfCCell", "LTCCell", "LeCunTanh", "ACTIVATIONS", "make_cell", "CELLS"]


class LeCunTanh(nn.Module):
    """``1.7159 * tanh(0.666 x)``, the backbone activation of the CfC paper."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.7159 * torch.tanh(0.666 * x)


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "lecun_tanh": LeCunTanh,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
    "gelu": nn.GELU,
}
_MODES = ("default", "no_gate")


class CfCCell(nn.Module):
    """Closed-form continuous-time cell, stateless.

    ``z = backbone([x, h])``; ``ff1 = tanh(W1 z)``, ``ff2 = tanh(W2 z)``,
    ``t = sigmoid(Wa z * ts + Wb z)``; ``h_new = ff1 * (1 - t) + t * ff2`` (``"default"``)
    or ``ff1 + t * ff2`` (``"no_gate"``).

    Parameters
    ----------
    input_size
        Features per input.
    hidden_size
        State size.
    backbone_units
        Width of the backbone layers (ignored when ``backbone_layers`` is 0).
    backbone_layers
        Number of backbone layers; 0 feeds ``[x, h]`` straight to the heads.
    activation
        Backbone activation, a key of :data:`ACTIVATIONS`.
    mode
        ``"default"`` or ``"no_gate"``.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        backbone_units: int = 64,
        backbone_layers: int = 1,
        activation: str = "lecun_tanh",
        mode: str = "default",
    ) -> None:
        super().__init__()
        if mode not in _MODES:
            raise ValueError(f"unknown mode {mode!r}; valid choices: {', '.join(_MODES)}")
        if activation not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation {activation!r}; valid choices: {', '.join(ACTIVATIONS)}"
            )
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.backbone_units = backbone_units
        self.backbone_layers = backbone_layers
        self.activation = activation
        self.mode = mode
        layers: list[nn.Module] = []
        width = input_size + hidden_size
        for _ in range(backbone_layers):
            layers += [nn.Linear(width, backbone_units), ACTIVATIONS[activation]()]
            width = backbone_units
        self.backbone = nn.Sequential(*layers)
        self.heads = nn.Linear(width, 4 * hidden_size)  # ff1 | ff2 | time_a | time_b
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.xavier_uniform_(p)
        with torch.no_grad():  # per-head xavier, as ncps initialises four separate layers
            for w in self.heads.weight.view(4, hidden_size, width):
                nn.init.xavier_uniform_(w)

    def forward(self, x: torch.Tensor, h: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        z = self.backbone(torch.cat([x, h], 1))
        ff1, ff2, t_a, t_b = self.heads(z).chunk(4, dim=1)
        ff1, ff2 = torch.tanh(ff1), torch.tanh(ff2)
        t = torch.sigmoid(t_a * ts + t_b)
        if self.mode == "no_gate":
            return ff1 + t * ff2
        return ff1 * (1.0 - t) + t * ff2

    @classmethod
    def from_ncps(cls, cell: Any) -> CfCCell:
        """A fused copy of an ``ncps.torch.CfCCell`` (modes default/no_gate, no sparsity)."""
        if cell.mode not in _MODES or cell.sparsity_mask is not None:
            raise ValueError(f"cannot fuse an ncps cell with mode {cell.mode!r} or a sparsity mask")
        act = type(cell.backbone[1]).__name__ if cell.backbone_layers > 0 else "LeCun"
        name = {"LeCun": "lecun_tanh", "Tanh": "tanh", "ReLU": "relu", "SiLU": "silu",
                "GELU": "gelu"}[act]
        units = cell.backbone[0].out_features if cell.backbone_layers > 0 else 1
        out = cls(cell.input_size, cell.hidden_size, units, cell.backbone_layers, name, cell.mode)
        with torch.no_grad():
            linears = [m for m in cell.backbone or () if isinstance(m, nn.Linear)]
            mine = [m for m in out.backbone if isinstance(m, nn.Linear)]
            for a, b in zip(mine, linears, strict=True):
                a.weight.copy_(b.weight)
                a.bias.copy_(b.bias)
            heads = (cell.ff1, cell.ff2, cell.time_a, cell.time_b)
            out.heads.weight.copy_(torch.cat([m.weight for m in heads]))
            out.heads.bias.copy_(torch.cat([m.bias for m in heads]))
        return out


class LTCCell(nn.Module):
    """Liquid time-constant cell: ``ncps.torch.LTCCell`` on a fully connected wiring, with
    the stateless ``forward(x, h, ts) -> h_new`` interface of :class:`CfCCell`.

    Call :meth:`apply_weight_constraints` after each optimiser step (ncps's convention).
    """

    def __init__(self, input_size: int, hidden_size: int, ode_unfolds: int = 6,
                 seed: int = 0, min_ts: float = 1e-2) -> None:
        super().__init__()
        from ncps.torch import LTCCell as _NcpsLTC
        from ncps.wirings import FullyConnected

        self.input_size = input_size
        self.hidden_size = hidden_size
        self.ode_unfolds = ode_unfolds
        self.min_ts = min_ts
        wiring = FullyConnected(hidden_size, erev_init_seed=seed)
        self.cell = _NcpsLTC(wiring, in_features=input_size, ode_unfolds=ode_unfolds)

    def forward(self, x: torch.Tensor, h: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        # the fused solver divides by the elapsed time: a zero gap (a link's first sample)
        # would give inf/NaN, so gaps are floored at min_ts
        return self.cell(x, h, ts.clamp_min(self.min_ts))[1]

    def apply_weight_constraints(self) -> None:
        self.cell.apply_weight_constraints()


CELLS = ("cfc", "ltc")


def make_cell(kind: str, input_size: int, hidden_size: int, backbone_units: int = 64,
              seed: int = 0) -> nn.Module:
    """A cell by name: ``"cfc"`` (default) or ``"ltc"``."""
    if kind == "cfc":
        return CfCCell(input_size, hidden_size, backbone_units=backbone_units)
    if kind == "ltc":
        return LTCCell(input_size, hidden_size, seed=seed)
    raise ValueError(f"unknown cell {kind!r}; valid choices: {', '.join(CELLS)}")
