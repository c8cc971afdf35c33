"""The river drift detectors streamadapt can run, each with one calibrated sensitivity knob.

Detectors are river's own (Bifet & Gavaldà 2007 ADWIN; Page 1954 / Hinkley 1971
Page-Hinkley; Raab et al. 2020 KSWIN; Gama et al. 2004 DDM; Baena-García et al. 2006 EDDM;
Frías-Blanco et al. 2015 HDDM_A and HDDM_W; Pesaranghader & Viktor 2016 FHDDM), never a
hand-written copy. :data:`DETECTORS` records, per name, the river class, the constructor
argument that sets its sensitivity, and a grid of values for that argument ordered from the
*most* to the *least* sensitive; :mod:`streamadapt.drift.calibration` walks that grid.

``ADWIN``, ``Page-Hinkley`` and ``KSWIN`` watch a continuous (normalised) signal. The DDM
family watches a binary error stream; for them the normalised signal is turned into a bit,
``value > binary_cut`` (see :class:`~streamadapt.drift.watch.SignalWatcher`).

>>> d = make_detector("page-hinkley", threshold=20.0)
>>> d.threshold
20.0
>>> make_detector("cusum")
Traceback (most recent call last):
...
ValueError: unknown detector 'cusum'; valid choices: adwin, page-hinkley, kswin, ddm, ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from river import drift
from river.base import DriftDetector
from river.drift import binary

__all__ = ["DetectorSpec", "DETECTORS", "make_detector", "detector_names"]


@dataclass(frozen=True)
class DetectorSpec:
    """How to build one river detector and which argument sets its sensitivity."""

    name: str
    factory: type
    #: Constructor argument calibrated on the warm-up window.
    knob: str
    #: Values of ``knob``, most sensitive first.
    grid: tuple[float, ...]
    #: True for detectors of a binary error stream (the DDM family).
    binary: bool
    #: Extra constructor arguments, fixed.
    fixed: dict[str, Any] = field(default_factory=dict)
    #: Takes a ``seed`` argument.
    seeded: bool = False
    #: Detects a *fall* in the mean of its bits (FHDDM's test is ``max(u) - u > eps`` on
    #: the fraction ``u`` of ones, although river's docstring calls 1 an error): it is fed
    #: ``1 - error``.
    inverted: bool = False


DETECTORS: dict[str, DetectorSpec] = {
    s.name: s
    for s in [
        DetectorSpec("adwin", drift.ADWIN, "delta",
                     (0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7),
                     False),
        DetectorSpec("page-hinkley", drift.PageHinkley, "threshold",
                     (20.0, 30.0, 40.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0),
                     False),
        DetectorSpec("kswin", drift.KSWIN, "alpha",
                     (0.01, 5e-3, 1e-3, 1e-4, 1e-5, 1e-6, 1e-8, 1e-10), False,
                     seeded=True),
        DetectorSpec("ddm", binary.DDM, "drift_threshold",
                     (2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0), True),
        DetectorSpec("eddm", binary.EDDM, "beta",
                     (0.93, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5, 0.4), True, {"alpha": 0.95}),
        DetectorSpec("hddm-a", binary.HDDMA, "drift_confidence",
                     (0.05, 0.01, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-9), True),
        DetectorSpec("hddm-w", binary.HDDMW, "drift_confidence",
                     (0.05, 0.01, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-9), True),
        DetectorSpec("fhddm", binary.FHDDM, "confidence_level",
                     (1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-7, 1e-9, 1e-12), True, inverted=True),
    ]
}


def detector_names() -> list[str]:
    """Every detector name, in the order of :data:`DETECTORS`."""
    return list(DETECTORS)


def _spec(name: str) -> DetectorSpec:
    if name not in DETECTORS:
        raise ValueError(
            f"unknown detector {name!r}; valid choices: {', '.join(DETECTORS)}"
        )
    return DETECTORS[name]


def make_detector(name: str, seed: int = 0, **params: Any) -> DriftDetector:
    """A fresh river detector by name; ``params`` override its defaults (e.g. the knob).

    ``hddm-a``/``hddm-w`` get a warning confidence five times their drift confidence so the
    pair stays ordered whatever the calibrated value.
    """
    spec = _spec(name)
    kwargs = {**spec.fixed, **params}
    if spec.seeded:
        kwargs.setdefault("seed", seed)
    if name in ("hddm-a", "hddm-w") and "drift_confidence" in kwargs:
        kwargs.setdefault("warning_confidence", min(5 * kwargs["drift_confidence"], 0.5))
    if name == "eddm" and "beta" in kwargs:
        kwargs["alpha"] = max(kwargs.get("alpha", 0.95), kwargs["beta"] + 0.01)
    if name == "page-hinkley" and "min_instances" not in kwargs:
        kwargs["min_instances"] = 30
    return spec.factory(**kwargs)
