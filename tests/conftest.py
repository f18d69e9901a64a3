"""Shared fixtures: one small synthetic video dataset (real .mp4 files) for the training, evaluation
and export tests, generated once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidconv_deploy.data.synthetic import SyntheticSpec, generate


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """10 classes; 20 train, 4 val, 6 test videos of 48x48, 20-28 frames (SSv2 protocol)."""
    out = tmp_path_factory.mktemp("synthetic")
    generate(out, SyntheticSpec(seed=5, train=20, val=4, test=6, size=48, min_frames=20, max_frames=28))
    return out
