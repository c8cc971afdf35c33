"""Every setting takes effect: a field that no code reads fails here.

Fields of the ``drift`` section go to :class:`~streamadapt.monitor.DriftMonitor` by name
(``DriftSettings.monitor_params``), so each must be one of its parameters; every other field
must be read as an attribute (``.<field>``) somewhere in the code outside the settings
module, or be listed in :data:`READ_ELSEWHERE` with the reason."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from pydantic import BaseModel

from streamadapt.monitor import DriftMonitor
from streamadapt.settings import DriftSettings, Settings

ROOT = Path(__file__).resolve().parents[1]

#: Fields read by name in another way, with where.
READ_ELSEWHERE: dict[str, str] = {}


def _leaves(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, type]]:
    out = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _leaves(ann, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", name, model))
    return out


def _code() -> str:
    files = [p for d in ("streamadapt", "connectors") for p in (ROOT / d).rglob("*.py")
             if p.name != "settings.py"]
    return "\n".join(p.read_text() for p in files)


def test_every_setting_is_read_by_some_code():
    code = _code()
    monitor_params = set(inspect.signature(DriftMonitor.__init__).parameters)
    unread = []
    for path, name, owner in _leaves(Settings):
        if path in READ_ELSEWHERE:
            continue
        if owner is DriftSettings and name != "enabled":
            if name not in monitor_params:
                unread.append(path)
            continue
        if not re.search(rf"\.{re.escape(name)}\b", code):
            unread.append(path)
    assert unread == [], f"settings no code reads: {unread}"


def test_file_settings_for_the_process_apply(tmp_path, monkeypatch):
    import logging

    import torch

    from connectors.cli import main

    monkeypatch.delenv("STREAMADAPT_TORCH_THREADS", raising=False)
    cfg = tmp_path / "s.yaml"
    cfg.write_text("torch_threads: 2\nlog_level: WARNING\nhttp:\n  enabled: false\n"
                   "drift:\n  enabled: false\n")
    before = torch.get_num_threads()
    try:
        assert main(["run", "--config", str(cfg), "--limit", "50", "--no-progress"]) == 0
        assert torch.get_num_threads() == 2
        assert logging.getLogger("streamadapt").level == logging.WARNING
    finally:
        torch.set_num_threads(before)
        logging.getLogger("streamadapt").setLevel(logging.NOTSET)
