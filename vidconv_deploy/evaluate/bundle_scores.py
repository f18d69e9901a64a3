"""Score every classifier of a bundle on a video split: what ``vidconv-eval`` and the export's accuracy step report.

For a DPU bundle that is the float graph, the exact rewrite, the fake-quant INT8 streaming graphs
in ONNX Runtime and the integer reference with DPU rounding, each with its top-1 agreement with
the float graph. ``ray`` (an address, or ``local``) shards the videos over a Ray cluster and gives
the same numbers as one process.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vidconv_deploy.data.dataset import protocol_for
from vidconv_deploy.data.sources import open_split
from vidconv_deploy.errors import UserError
from vidconv_deploy.bundle import read_manifest
from vidconv_deploy.evaluate.classifiers import bundle_classifiers
from vidconv_deploy.evaluate.metrics import summary
from vidconv_deploy.evaluate.sharded import score_split, score_split_ray


def check_limit(limit: int | None) -> None:
    """``--limit`` below 1 would score everything (0) or silently drop videos from the end (negative slicing)."""
    if limit is not None and limit < 1:
        raise UserError(f"--limit {limit} scores no video: give --limit 1 or more, or leave it out to score the whole split")


def evaluate_bundle(bundle: Path, data: Path, split: str = "test", orders: Sequence[str] = ("normal",),
                    ray: str | None = None, workers: int = 2, reference: bool = True, limit: int | None = None,
                    teacher: Path | None = None) -> dict[str, Any]:
    """Score the bundle's classifiers on a split; the figures per frame order, and the skipped videos."""
    manifest = read_manifest(bundle)
    config = manifest["model"]["config"]
    source = open_split(data, split)
    check_limit(limit)
    items = list(source.items[:limit] if limit else source.items)
    protocol = protocol_for(source, config["grid"][0] * config["grid"][1], None)
    image_size = tuple(config["image_size"])
    factory = functools.partial(bundle_classifiers, bundle, reference, teacher)
    result: dict[str, Any] = {"bundle": str(bundle), "target": manifest["target"], "data": str(data), "split": split,
                              "protocol": protocol.name, "ray": ray, "orders": {}}
    for order in orders:
        if ray:
            scores, skips = score_split_ray(ray, items, factory, protocol, image_size, order, workers=workers)
        else:
            scores, skips = score_split(items, factory, protocol, image_size, order)
        if not len(next(iter(scores.values())).labels):  # every classifier scores the same videos
            raise UserError(f"no usable videos in the {split} split of {data} ({skips.counts() or 'none listed'}): "
                            f"give --data a dataset folder whose {split} videos are readable")
        result["orders"][order] = summary(scores, "float")
        result["skipped"] = skips.to_dict()
    return result
