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


@pytest.fixture(scope="session")
def dpu_bundle(tmp_path_factory, tiny_dataset) -> Path:
    """A small dpu-kv260 bundle of vic-nano-dpu (32x32, 10 classes, 2 calibration clips), shared read-only."""
    from vidconv_deploy.cli.export import main as export_main

    out = tmp_path_factory.mktemp("dpu-bundle")
    assert export_main(["--target", "dpu-kv260", "--arch", "vic-nano-dpu", "--classes", "10", "--image-size", "32",
                        "--calib-clips", "2", "--calib", str(tiny_dataset), "--out", str(out)]) == 0
    return out / "vic-nano-dpu-dpu-kv260"
