"""What a board with ONNX Runtime's Vitis AI Execution Provider runs: ``vitisai_config.json`` and ``run_ep.py``.

The EP compiles the QDQ graphs for the DPU/NPU on the first session and caches the result
(``cache_dir``/``cache_key``); later sessions load the cache. It reports CPU fallback only for a
whole session, so ``run_ep.py`` sets ``session.disable_cpu_ep_fallback`` = 1: a graph that does not
fit the device entirely fails to load instead of running slowly, and ``vidconv-check`` names the
nodes beforehand. Provider options and the config come from the target's rule set (sources there).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from vidconv_deploy.runners import GRAPHS

#: run_ep.py, filled with the target's provider options (a JSON literal is also a Python literal here).
_RUN_EP = '''"""Load the Quark QDQ streaming graphs with ONNX Runtime's Vitis AI EP ({description}).

The first session compiles each graph for the device and writes the cache under CACHE_DIR; later
sessions load it. CPU fallback is disabled: a node the device cannot take makes the session fail.
Usage (on the device, in this folder): python3 run_ep.py
"""

import os
import pathlib

import numpy as np
import onnxruntime as ort

HERE = pathlib.Path(__file__).resolve().parent
CACHE_DIR = HERE / "cache"
PROVIDER_OPTIONS = {provider_options}


def session(graph):
    options = ort.SessionOptions()
    options.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    provider = dict(PROVIDER_OPTIONS, {cache_dir}=str(CACHE_DIR), {cache_key}=graph)
    provider = {{k: os.path.expandvars(v) if isinstance(v, str) else v for k, v in provider.items()}}  # ${{...}} from the environment
    if "config_file" in provider and not pathlib.Path(provider["config_file"]).is_absolute():
        provider["config_file"] = str(HERE / provider["config_file"])
    return ort.InferenceSession(str(HERE.parent / "quark" / f"{{graph}}.onnx"), sess_options=options,
                                providers=["VitisAIExecutionProvider"], provider_options=[provider])


if __name__ == "__main__":
    for graph in {graphs}:
        s = session(graph)
        inp = s.get_inputs()[0]
        out = s.run(None, {{inp.name: np.zeros(inp.shape, np.float32)}})[0]
        print(graph, "compiled and ran on", s.get_providers()[0], "output", out.shape)
'''


def ep_options(ep: Mapping[str, Any], precision: str) -> Mapping[str, Any]:
    """The rule set's EP section for a model of ``precision``: a BF16 or mixed model takes the section's ``bf16``
    keys where it has them (Ryzen AI: a config file instead of the INT8 xclbin), whole, not merged."""
    return {**ep, **ep["bf16"]} if precision != "int8" and "bf16" in ep else ep


def vitisai_config(ep: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``vitisai_config.json`` the target's provider options name, or None when the board image ships it."""
    return dict(ep["vitisai_config"]) if "vitisai_config" in ep else None


def run_ep_script(ep: Mapping[str, Any], description: str) -> str:
    """``run_ep.py`` for the target's provider options (cache options named as the target's EP spells them)."""
    cache_dir, cache_key = ep["cache_keys"]
    return _RUN_EP.format(description=description, provider_options=json.dumps(dict(ep["provider_options"])),
                          cache_dir=cache_dir, cache_key=cache_key, graphs=json.dumps(list(GRAPHS)))
