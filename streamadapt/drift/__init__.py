"""Drift detection: river detectors on normalised signals, calibrated to a false-alarm rate,
and the adaptation policy that decides what a detection triggers.

See ``docs/drift.md``. The pieces:

* :mod:`~streamadapt.drift.detectors`: which river detectors, and their sensitivity knob;
* :mod:`~streamadapt.drift.calibration`: normalisation and false-alarm calibration;
* :mod:`~streamadapt.drift.watch`: one detector on one signal (:class:`SignalWatcher`);
* :mod:`~streamadapt.drift.signals`: the per-event loss and the input statistics watched;
* :mod:`~streamadapt.drift.seasonal`: signals as residuals against the same phase of
  earlier cycles, per key (:class:`InputSignal`, :class:`LossSignal`);
* :mod:`~streamadapt.drift.policy`: detection -> actions (:class:`AdaptationPolicy`);
* :mod:`~streamadapt.drift.safeguard`: shadow model, keep / roll back / reset (:class:`Trial`).

:class:`streamadapt.monitor.DriftMonitor` puts them into the pipeline.
"""

from streamadapt.drift.calibration import Calibration, Normaliser, calibrate
from streamadapt.drift.detectors import DETECTORS, detector_names, make_detector
from streamadapt.drift.policy import ACTIONS, AdaptationPolicy
from streamadapt.drift.safeguard import OUTCOMES, Trial
from streamadapt.drift.seasonal import InputSignal, LossSignal, SeasonalProfile
from streamadapt.drift.watch import SignalWatcher

__all__ = [
    "ACTIONS",
    "DETECTORS",
    "OUTCOMES",
    "AdaptationPolicy",
    "Trial",
    "Calibration",
    "Normaliser",
    "InputSignal",
    "LossSignal",
    "SeasonalProfile",
    "SignalWatcher",
    "calibrate",
    "detector_names",
    "make_detector",
]
