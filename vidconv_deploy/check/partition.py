"""Predict how the graph splits: connected components of same-device ops in the DAG.

This is what Vitis AI users discover only after compiling (issue 804: 33 subgraphs, 15 on the DPU).
Elided ops (shape/constant-only, Dropout) run nowhere: edges pass through them.

For a DPU graph each subgraph off the DPU also says how many bytes cross between it and the DPU per
run of the graph (once per frame for the streaming split's graphs): every tensor a DPU op hands it
and every tensor it hands a DPU op, one byte per element (the DPU reads and writes int8 feature maps
in DDR; VART's CPU subgraphs take and give them as ``xint8`` tensors).
"""

from __future__ import annotations

from typing import Any

import math

from vidconv_deploy.check.graph import ModelGraph
from vidconv_deploy.check.ops import Op, compute_predecessors, producers

DPU = "DPU"


def _sources(tensor: str, by_tensor: dict[str, Op]) -> list[Op]:
    """The non-elided ops whose results reach ``tensor``, looking through elided ones."""
    return compute_predecessors(Op("", "", [], inputs=[tensor]), by_tensor)


def _crossing(ops: list[Op], devices: dict[str, str], group_of: dict[str, str], graph: ModelGraph
              ) -> dict[str, dict[str, int | None]]:
    """Per subgraph off the DPU: bytes from the DPU into it and from it to the DPU (None: a shape unknown)."""
    by_tensor = producers(ops)
    seen: set[tuple[str, str, str]] = set()
    bytes_: dict[str, dict[str, int | None]] = {}
    for op in ops:
        if op.name not in devices:
            continue
        for tensor in op.inputs:
            for src in _sources(tensor, by_tensor):
                if src.name not in devices or (devices[src.name] == DPU) == (devices[op.name] == DPU):
                    continue
                other = group_of[op.name] if devices[op.name] != DPU else group_of[src.name]
                key = "dpu_to_cpu_bytes" if devices[op.name] != DPU else "cpu_to_dpu_bytes"
                if (tensor, other, key) in seen:
                    continue
                seen.add((tensor, other, key))
                entry = bytes_.setdefault(other, {"dpu_to_cpu_bytes": 0, "cpu_to_dpu_bytes": 0})
                shape = graph.static_shape(tensor)
                entry[key] = None if shape is None or entry[key] is None else entry[key] + math.prod(shape)
    return bytes_


def partition(ops: list[Op], devices: dict[str, str], graph: ModelGraph | None = None) -> dict[str, Any]:
    """Counts of ops and subgraphs per device, and each subgraph's ops in topological order.

    With ``graph`` (a DPU target's), each subgraph off the DPU also gets ``dpu_to_cpu_bytes`` and
    ``cpu_to_dpu_bytes`` per run (see the module docstring).
    """
    by_tensor = producers(ops)
    parent = {name: name for name in devices}

    def find(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for op in ops:
        if op.name not in devices:
            continue
        for pred in compute_predecessors(op, by_tensor):
            if devices.get(pred.name) == devices[op.name]:
                parent[find(pred.name)] = find(op.name)
    groups: dict[str, list[str]] = {}
    for op in ops:
        if op.name in devices:
            groups.setdefault(find(op.name), []).append(op.name)
    subgraphs = [{"device": devices[members[0]], "ops": members} for members in groups.values()]
    if graph is not None:
        group_of = {name: root for root, members in groups.items() for name in members}
        crossing = _crossing(ops, devices, group_of, graph)
        for root, sg in zip(groups, subgraphs):
            if sg["device"] != DPU:
                sg.update(crossing.get(root, {"dpu_to_cpu_bytes": 0, "cpu_to_dpu_bytes": 0}))
    summary: dict[str, dict[str, int]] = {}
    for sg in subgraphs:
        entry = summary.setdefault(sg["device"], {"ops": 0, "subgraphs": 0})
        entry["ops"] += len(sg["ops"])
        entry["subgraphs"] += 1
    return {"devices": dict(sorted(summary.items())), "subgraphs": subgraphs}
