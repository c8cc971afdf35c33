"""Every registered adapter passes the shared check suite (streamadapt.checks)."""

import pytest

from streamadapt.adapters.registry import make_model, model_names
from streamadapt.checks import yield_checks


def _cases():
    for name in sorted(model_names()):
        model = make_model(name, seed=0)
        for check in yield_checks(model):
            yield pytest.param(name, check, id=f"{name}-{check.__name__}")


@pytest.mark.parametrize(("name", "check"), list(_cases()))
def test_adapter_check(name, check):
    check(lambda seed: make_model(name, seed=seed))
