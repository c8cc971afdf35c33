"""One detector watching one signal: warm-up, calibration, then detection.

A :class:`SignalWatcher` buffers the first ``warmup`` values of its signal, fits a
:class:`~streamadapt.drift.calibration.Normaliser` on them, calibrates its detector's
sensitivity to ``target_false_alarms`` per 10k events (unless ``params`` fixes it), feeds the
warm-up values to the live detector so it starts with a reference, and from then on reports
detections. Binary detectors (the DDM family) see ``z > cut``, where ``cut`` is the warm-up
``binary_quantile`` of ``z``: "this event's loss is unusually high".

``direction="up"`` keeps only detections where the signal rose: the mean of the last
``recent`` values exceeds the mean of the ``recent * 4`` before them (a falling loss is the
model recovering, not drift). The DDM family and Page-Hinkley in ``"up"`` mode only ever
test for a rise. The reported ``statistic`` is that difference of means, in warm-up standard
deviations.

Non-finite values are skipped (a seasonal signal is NaN until its reference is known; see
:mod:`~streamadapt.drift.seasonal`); indices of detections still refer to the values fed.
:meth:`SignalWatcher.state_dict` checkpoints a watcher at any point of its life.

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> w = SignalWatcher("adwin", warmup=500, n_replay=5_000, seed=0)
>>> stream = np.concatenate([rng.normal(0, 1, 1500), rng.normal(3, 1, 500)])
>>> hits = [i for i in range(0, 2000, 100) for j, s in w.update_many(stream[i:i + 100])]
>>> w.calibration.met, len(hits), hits[0] >= 1500
(True, 1, True)
"""

from __future__ import annotations

import pickle
from collections import deque
from typing import Any, Literal

import numpy as np

from streamadapt.drift.calibration import Calibration, Normaliser, block_bootstrap, calibrate
from streamadapt.drift.detectors import DETECTORS, make_detector
from streamadapt.drift.seasonal import _array
from streamadapt.state import restricted_unpickle

__all__ = ["SignalWatcher", "DIRECTIONS"]

DIRECTIONS = ("up", "both")


class _Runner:
    """A river detector plus the binary cut and the direction filter."""

    def __init__(self, detector: Any, binary: bool, cut: float, direction: str, recent: int,
                 inverted: bool = False):
        self.detector = detector
        self.binary = binary
        self.inverted = inverted
        self.cut = cut
        self.direction = direction
        self.recent = recent
        self.buffer: deque[float] = deque(maxlen=5 * recent)

    def shift(self) -> float:
        buf = np.fromiter(self.buffer, float, len(self.buffer))
        if buf.size <= self.recent:
            return float(buf.mean()) if buf.size else 0.0
        return float(buf[-self.recent:].mean() - buf[:-self.recent].mean())

    def hits(self, zs: list[float]) -> list[tuple[int, float]]:
        """Feed each value in order (a binary detector sees ``z > cut``, flipped when
        ``inverted``); ``(position, shift)`` of each detection the direction filter keeps,
        the shift as it was then."""
        d, append = self.detector, self.buffer.append
        out: list[tuple[int, float]] = []
        feed = d.update
        if self.binary:
            cut, inverted = self.cut, self.inverted
            for i, z in enumerate(zs):
                append(z)
                feed((z > cut) != inverted)
                if d.drift_detected:
                    out.append((i, self.shift()))
            return out
        any_side = self.direction == "both"
        for i, z in enumerate(zs):
            append(z)
            feed(z)
            if d.drift_detected:
                shift = self.shift()
                if any_side or shift > 0:
                    out.append((i, shift))
        return out

    def count(self, zs: np.ndarray) -> int:
        return len(self.hits(zs.tolist()))


class SignalWatcher:
    """Normalises one signal and runs one calibrated river detector on it.

    Parameters
    ----------
    detector
        A name from :data:`~streamadapt.drift.detectors.DETECTORS`.
    warmup
        Values used to normalise and calibrate before any detection.
    burn_in
        Values ignored before the warm-up (a model still learning its first concept has a
        falling loss that is not the stationary regime to calibrate on).
    target_false_alarms
        Target false alarms per 10k events on the no-drift replay.
    direction
        ``"up"`` (only rises count) or ``"both"``.
    params
        Fixed detector arguments; when it sets the detector's knob, calibration is skipped.
    n_replay
        Length of the bootstrap replay used for calibration.
    margin
        The replay must meet ``margin * target_false_alarms`` (see
        :mod:`~streamadapt.drift.calibration`).
    block
        Block length of the bootstrap.
    clip
        z-scores are clipped to ``[-clip, clip]``.
    binary_quantile
        Warm-up quantile of ``z`` above which a binary detector sees an error.
    recent
        Window of the direction filter and of the reported statistic.
    refractory
        Values after a detection during which further detections are not reported (the
        detector keeps learning): a model relearning after a change makes its loss wander,
        and a second alarm for the same change is noise.
    seed
        Seed of the bootstrap (and of KSWIN).
    """

    def __init__(
        self,
        detector: str = "adwin",
        warmup: int = 1000,
        target_false_alarms: float = 1.0,
        burn_in: int = 0,
        direction: Literal["up", "both"] = "up",
        params: dict[str, Any] | None = None,
        n_replay: int = 20_000,
        margin: float = 0.5,
        block: int = 50,
        clip: float = 6.0,
        binary_quantile: float = 0.8,
        recent: int = 50,
        refractory: int = 1000,
        seed: int = 0,
    ) -> None:
        if detector not in DETECTORS:
            raise ValueError(
                f"unknown detector {detector!r}; valid choices: {', '.join(DETECTORS)}"
            )
        if direction not in DIRECTIONS:
            raise ValueError(
                f"unknown direction {direction!r}; valid choices: {', '.join(DIRECTIONS)}"
            )
        if warmup < 10:
            raise ValueError(f"warmup must be >= 10 events, got {warmup}")
        if not 0.0 < binary_quantile < 1.0:
            raise ValueError(f"binary_quantile must be in (0, 1), got {binary_quantile}")
        self.detector = detector
        self.warmup = warmup
        self.target_false_alarms = target_false_alarms
        self.burn_in = burn_in
        self._skipped = 0
        self.direction = direction
        self.params = params
        self.n_replay = n_replay
        self.margin = margin
        self.block = block
        self.clip = clip
        self.binary_quantile = binary_quantile
        self.recent = recent
        self.refractory = refractory
        self.seed = seed
        self._quiet = 0
        self._spec = DETECTORS[detector]
        self._buffer: list[float] = []
        self.normaliser: Normaliser | None = None
        self.calibration: Calibration | None = None
        self._runner: _Runner | None = None

    @property
    def ready(self) -> bool:
        """True once warm-up and calibration are done."""
        return self._runner is not None

    def _new_runner(self, knob_value: float | None, cut: float) -> _Runner:
        params = dict(self.params or {})
        if knob_value is not None:
            params[self._spec.knob] = knob_value
        if self._spec.factory.__name__ == "PageHinkley":
            params.setdefault("mode", "up" if self.direction == "up" else "both")
        det = make_detector(self.detector, seed=self.seed, **params)
        return _Runner(det, self._spec.binary, cut, self.direction, self.recent,
                       self._spec.inverted)

    def _finish_warmup(self) -> None:
        raw = np.asarray(self._buffer, dtype=np.float64)
        self.normaliser = Normaliser.fit(raw, self.clip)
        z = self.normaliser.transform(raw)
        cut = float(np.quantile(z, self.binary_quantile)) if self._spec.binary else 0.0
        knob = self._spec.knob
        if self.params and knob in self.params:
            value = float(self.params[knob])
            self.calibration = Calibration(knob, value, -1, 0, float("nan"),
                                           self.target_false_alarms, True)
        else:
            replay = block_bootstrap(z, self.n_replay, self.block, self.seed)
            self.calibration = calibrate(
                lambda v, r: self._new_runner(v, cut).count(r), knob, self._spec.grid,
                replay, self.target_false_alarms, self.margin,
            )
        self._runner = self._new_runner(self.calibration.value, cut)
        self._runner.count(z)  # start with the warm-up as the reference; alarms ignored
        self._buffer = []

    def update_many(self, values: np.ndarray) -> list[tuple[int, float]]:
        """Feed values in order; returns ``(index, statistic)`` of each detection.

        Non-finite values (a seasonal reference not known yet, a failed statistic) are
        skipped everywhere: they count towards neither burn-in, warm-up nor detection.
        """
        vals = np.asarray(values, dtype=np.float64).reshape(-1)
        keep = np.flatnonzero(np.isfinite(vals))
        return [(int(keep[i]), stat) for i, stat in self._update_finite(vals[keep])]

    def _update_finite(self, vals: np.ndarray) -> list[tuple[int, float]]:
        out: list[tuple[int, float]] = []
        i = 0
        if self._skipped < self.burn_in:
            i = min(self.burn_in - self._skipped, vals.size)
            self._skipped += i
        if self._runner is None:
            take = min(self.warmup - len(self._buffer), vals.size - i)
            self._buffer.extend(vals[i:i + take].tolist())
            i += take
            if len(self._buffer) >= self.warmup:
                self._finish_warmup()
            if self._runner is None:
                return out
        runner = self._runner
        assert self.normaliser is not None
        z = self.normaliser.transform(vals[i:])
        last = -1  # the refractory count goes down by one per value fed
        for j, shift in runner.hits(z.tolist()):
            self._quiet -= j - last
            last = j
            if self._quiet < 0:
                out.append((i + j, shift))
                self._quiet = self.refractory
        self._quiet -= len(z) - 1 - last
        return out

    # -- checkpoint -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a restored watcher needs to report the same detections.

        Plain data (see :mod:`streamadapt.state`), except the live river detector: river
        detectors have no plain-data form, so it is stored as a pickle that
        :func:`streamadapt.state.restricted_unpickle` reads back (river classes and plain
        containers only), as the river model adapters do.
        """
        n = self.normaliser
        r = self._runner
        return {
            "detector": self.detector,
            "skipped": self._skipped,
            "quiet": self._quiet,
            "buffer": np.asarray(self._buffer, dtype=np.float64),
            "normaliser": None if n is None else {"mean": n.mean, "std": n.std,
                                                  "clip": n.clip},
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "runner": None if r is None else {
                "format": "river-pickle", "model": pickle.dumps(r.detector), "cut": r.cut,
                "buffer": np.fromiter(r.buffer, float, len(r.buffer))},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output into a watcher built with the same arguments."""
        if state["detector"] != self.detector:
            raise ValueError(f"state is for detector {state['detector']!r}, this watcher "
                             f"runs {self.detector!r}")
        self._skipped = int(state["skipped"])
        self._quiet = int(state["quiet"])
        self._buffer = _array(state["buffer"]).tolist()
        n = state["normaliser"]
        self.normaliser = None if n is None else Normaliser(float(n["mean"]), float(n["std"]),
                                                           float(n["clip"]))
        c = state["calibration"]
        self.calibration = None if c is None else Calibration(**c)
        r = state["runner"]
        self._runner = None
        if r is not None:
            if r.get("format") != "river-pickle":
                raise ValueError(f"expected a 'river-pickle' detector, got {r.get('format')!r}")
            runner = self._new_runner(None, float(r["cut"]))
            runner.detector = restricted_unpickle(r["model"])
            runner.buffer.extend(_array(r["buffer"]).tolist())
            self._runner = runner
