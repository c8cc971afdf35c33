"""Shared test configuration."""

import os

import torch

# Two cores run the whole suite: keep torch from oversubscribing them.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001
    """List the real parts (broker, Prometheus, SDKs) this run used, and whether missing
    ones would have failed the run (``STREAMADAPT_REQUIRE_REAL_PARTS=1``) or skipped tests."""
    from realparts import required, used

    parts = used()
    mode = "required (a missing one fails)" if required() else "optional (a missing one skips)"
    terminalreporter.section(f"real parts: {mode}")
    if not parts:
        terminalreporter.write_line("none used")
    for name, where in sorted(parts.items()):
        terminalreporter.write_line(f"{name}: {where}")
