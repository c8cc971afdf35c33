"""The README stays true: its model table lists exactly the registered models."""

import re
from pathlib import Path

from streamadapt.adapters.registry import specs

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_model_table_matches_the_registry():
    section = README.read_text().split("## Models", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([^`]+)` \| (forecast|ctr) \|", section, flags=re.M))
    assert rows == {name: spec.task for name, spec in specs().items()}
