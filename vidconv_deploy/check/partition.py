"""Predict how the graph splits: connected components of same-device ops in the DAG.

This is what Vitis AI users discover only after compiling (issue 804: 33 subgraphs, 15 on the DPU).
Elided ops (shape/constant-only, Dropout) run nowhere: edges pass through them.
"""

from __future__ import annotations

from typing import Any

from vidconv_deploy.check.ops import Op, compute_predecessors, producers


def partition(ops: list[Op], devices: dict[str, str]) -> dict[str, Any]:
    """Counts of ops and subgraphs per device, and each subgraph's ops in topological order."""
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
    summary: dict[str, dict[str, int]] = {}
    for sg in subgraphs:
        entry = summary.setdefault(sg["device"], {"ops": 0, "subgraphs": 0})
        entry["ops"] += len(sg["ops"])
        entry["subgraphs"] += 1
    return {"devices": dict(sorted(summary.items())), "subgraphs": subgraphs}
