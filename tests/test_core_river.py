"""river baselines on real series: they must stay sane across gaps in the clock."""

import numpy as np

from streamadapt.adapters.naive import LastValue
from streamadapt.adapters.river_models import RiverLinearForecaster
from streamadapt.datasets import load_dataset
from streamadapt.pipeline import Pipeline


def test_river_linear_does_not_diverge_over_night_gaps_on_bank_calls():
    events = list(load_dataset("bank_calls", limit=6000).events)
    gaps = np.diff([e.timestamp for e in events])
    assert gaps.max() > 10 * np.median(gaps)  # the series has night/weekend gaps
    p = Pipeline("forecast", {"linear": RiverLinearForecaster(), "naive": LastValue()})
    err: dict[str, list[np.ndarray]] = {"linear": [], "naive": []}
    for i in range(0, len(events), 256):
        for name, s in p.step(events[i:i + 256]).scores.items():
            err[name].append(np.abs(s.y_true - s.y_pred))
    mae = {k: float(np.concatenate(v).mean()) for k, v in err.items()}
    assert np.isfinite(mae["linear"])
    assert mae["linear"] < 1.5 * mae["naive"], mae
