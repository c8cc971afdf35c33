"""Shared test configuration."""

import os

import torch

# Two cores run the whole suite: keep torch from oversubscribing them.
torch.set_num_threads(1)
os.environ.setdefault("MPLBACKEND", "Agg")
