"""Benchmark the ONNX export pipeline: wall time of each step and peak memory, as JSON.

    .venv/bin/python bench/export_onnx.py [--arch vic-t] [--image-size 224]

Prints one JSON object on one line (the last); nothing is asserted (speed targets live here, not in tests).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

import torch

from vidconv_deploy import build_model
from vidconv_deploy.targets.export import export_bundle
from vidconv_deploy.targets.registry import get_target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--arch", default="vic-t")
    parser.add_argument("--image-size", type=int, default=224)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_model(args.arch, image_size=args.image_size).eval()
    clip = torch.randn(1, model.cfg.frames, 3, args.image_size, args.image_size)
    start = time.perf_counter()
    with torch.no_grad():
        model(clip)
    forward_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        outcome = export_bundle(get_target("onnx"), model, {"source": "random"}, argparse.Namespace(), Path(tmp))
        total_s = time.perf_counter() - start
        bundle = outcome.context.bundle
        sizes = {role: art["bytes"] for role, art in bundle.artifacts.items()}
        verification = outcome.context.fields["verification"]
    print(json.dumps({
        "arch": args.arch,
        "image_size": args.image_size,
        "torch_threads": torch.get_num_threads(),
        "pytorch_forward_s": round(forward_s, 3),
        "export_total_s": round(total_s, 3),
        "steps_s": {s["name"]: s["seconds"] for s in bundle.steps},
        "artifact_bytes": sizes,
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "verification": verification,
    }))


if __name__ == "__main__":
    main()
