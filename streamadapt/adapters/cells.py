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

from collections.abc import Callable, Sequence
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
#: A scalar one, broadcast by the fused ``1 - v^2`` of :meth:`CfCCell.grads`.
_ONE = torch.ones(())
#: The LeCun tanh's derivative factor, ``1.7159 * 0.666``, and as a scalar tensor.
_LECUN = 1.7159 * 0.666
_LECUN_C = torch.tensor(_LECUN)


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
        return self._gate(self.heads(z), ts)

    def _gate(self, g: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        ff1, ff2, t_a, t_b = g.chunk(4, dim=1)
        ff1, ff2 = torch.tanh(ff1), torch.tanh(ff2)
        t = torch.sigmoid(t_a * ts + t_b)
        if self.mode == "no_gate":
            return ff1 + t * ff2
        return ff1 * (1.0 - t) + t * ff2

    # -- sequences: the input's share of the first layer once, then one step per time -------
    def _first(self) -> nn.Linear:
        return self.backbone[0] if self.backbone_layers else self.heads

    def input_part(self, x: torch.Tensor) -> torch.Tensor:
        """The inputs' share of the first layer (with its bias), for :meth:`scan`."""
        lin = self._first()
        return torch.addmm(lin.bias, x, lin.weight[:, : self.input_size].t())

    def scan(self, xpart: torch.Tensor, h: torch.Tensor, ts: torch.Tensor) -> torch.Tensor:
        """Step ``batch`` sequences of ``steps`` inputs from the states ``h``.

        ``xpart`` is :meth:`input_part` of the inputs, shape ``(steps, batch, width)``;
        ``ts`` is ``(steps, batch, 1)``. Returns the state after each step,
        ``(steps, batch, hidden)``: step ``i`` equals ``forward`` of input ``i`` and the state
        after step ``i - 1``, up to rounding (the first layer's product is split in two).
        """
        w_h = self._first().weight[:, self.input_size:].t()
        out = []
        if self.has_grads:  # one LeCun layer: the same arithmetic as grads, a few fused ops
            hid, gated = self.hidden_size, self.mode != "no_gate"
            b_heads, w_heads = self.heads.bias, self.heads.weight.t()
            for i in range(xpart.shape[0]):
                th = torch.addmm(xpart[i], h, w_h, beta=0.666, alpha=0.666).tanh_()
                g_ff, g_a, g_b = torch.addmm(b_heads, th, w_heads, alpha=1.7159
                                             ).split_with_sizes((2 * hid, hid, hid), 1)
                ff1, ff2 = g_ff.tanh().chunk(2, 1)
                t = torch.addcmul(g_b, g_a, ts[i]).sigmoid_()
                h = torch.lerp(ff1, ff2, t) if gated else torch.addcmul(ff1, t, ff2)
                out.append(h)
            return torch.stack(out)
        rest = list(self.backbone)[1:]
        for i in range(xpart.shape[0]):
            z = torch.addmm(xpart[i], h, w_h)
            if self.backbone_layers:
                for layer in rest:
                    z = layer(z)
                z = torch.addmm(self.heads.bias, z, self.heads.weight.t())
            h = self._gate(z, ts[i])
            out.append(h)
        return torch.stack(out)

    # -- the gradient of a step, without autograd -------------------------------------------
    @property
    def has_grads(self) -> bool:
        """Whether :meth:`grads` applies: one backbone layer with the LeCun tanh."""
        return self.backbone_layers == 1 and self.activation == "lecun_tanh"

    def grads(self, x: torch.Tensor, h: torch.Tensor, ts: torch.Tensor,
              grad_of: Callable[[torch.Tensor], torch.Tensor],
              out: Sequence[torch.Tensor]) -> torch.Tensor:
        """Step ``forward(x, h, ts)``, then back-propagate into the parameters and ``x``.

        ``grad_of(h_new)`` returns the loss gradient with respect to the new state. The
        parameter gradients are written into ``out`` (the backbone's weight and bias, then the
        heads', in :meth:`parameters` order); the gradient with respect to ``x`` is
        returned. ``h`` is a constant (the state before a step is not learned through).
        Matches autograd up to rounding (tested); needs :attr:`has_grads`; call it without
        gradient recording.
        """
        w_lin, b_lin = self.backbone[0].weight, self.backbone[0].bias
        w_heads, b_heads = self.heads.weight, self.heads.bias
        hid = self.hidden_size
        n = x.shape[0]
        xh = torch.cat((x, h), 1)
        # z = 1.7159 * th; the backbone's 0.666 folded into the product
        th = torch.addmm(b_lin, xh, w_lin.t(), beta=0.666, alpha=0.666).tanh_()
        g_ff, g_a, g_b = torch.addmm(b_heads, th, w_heads.t(), alpha=1.7159
                                     ).split_with_sizes((2 * hid, hid, hid), 1)
        ff = g_ff.tanh()
        ff1, ff2 = ff.chunk(2, 1)
        t = torch.addcmul(g_b, g_a, ts).sigmoid_()
        gated = self.mode != "no_gate"
        diff = ff2 - ff1 if gated else ff2
        gh = grad_of(torch.addcmul(ff1, t, diff))  # lerp(ff1, ff2, t) or ff1 + t * ff2
        # gg: the gradient at the heads' pre-activations, ff1 | ff2 | time_a | time_b
        gg = x.new_empty((n, 4 * hid))
        g_ff2 = torch.mul(gh, t, out=gg[:, hid: 2 * hid])
        if gated:
            torch.sub(gh, g_ff2, out=gg[:, :hid])
        else:
            gg[:, :hid] = gh
        gg[:, : 2 * hid].mul_(torch.addcmul(_ONE, ff, ff, value=-1.0))  # tanh' = 1 - ff^2
        g_pre = torch.mul(gh, diff, out=gg[:, 3 * hid:])
        g_pre.mul_(torch.addcmul(t, t, t, value=-1.0))  # sigmoid' = t (1 - t)
        torch.mul(g_pre, ts, out=gg[:, 2 * hid: 3 * hid])
        w_out, b_out, wh_out, bh_out = out
        torch.addmm(wh_out, gg.t(), th, beta=0.0, alpha=1.7159, out=wh_out)
        torch.sum(gg, 0, out=bh_out)
        # LeCun tanh' = c (1 - th^2)
        ga = torch.mm(gg, w_heads).mul_(torch.addcmul(_LECUN_C, th, th, value=-_LECUN))
        torch.mm(ga.t(), xh, out=w_out)
        torch.sum(ga, 0, out=b_out)
        return torch.mm(ga, w_lin[:, : self.input_size])

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
