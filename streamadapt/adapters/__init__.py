"""Online models behind one protocol (:class:`~streamadapt.adapters.base.Adapter`)."""

from streamadapt.adapters.base import Adapter
from streamadapt.adapters.registry import make_model, model_names, register, specs

__all__ = ["Adapter", "make_model", "model_names", "register", "specs"]
