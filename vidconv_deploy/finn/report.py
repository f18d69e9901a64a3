"""``finn_report``: unmapped nodes, throughput, latency, resources against the board budget, fit verdict.

The streaming split runs the early graph once per frame and the later graph once per clip, both
accelerators on the same device, so a clip's figures combine the two graphs' finn-plus estimates:
resources add up; clip fps = min(early fps / frames, later fps); latency = early latency
+ (frames - 1) x early initiation interval + later latency (the host's collage copy not counted).
FINN's latency is its critical-path sum, which it calls "very pessimistic" (dataflow_performance.py).
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from vidconv_deploy.finn.boards import RESOURCES, Board
from vidconv_deploy.runners import GRAPHS



def utilization(used: dict[str, float | None], budget: dict[str, int]) -> dict[str, float | None]:
    """Used / available per resource; None where finn-plus gives no estimate or the board has none of it."""
    out: dict[str, float | None] = {}
    for key in RESOURCES:
        amount, available = used.get(key), budget[key]
        if amount is None:
            out[key] = None
        elif available:
            out[key] = round(amount / available, 4)
        else:
            out[key] = 0.0 if amount == 0 else None
    return out


def fits(used: dict[str, float | None], budget: dict[str, int]) -> bool:
    """Every estimated resource within the board's budget (a resource the board lacks must be unused)."""
    return all(used[key] is None or used[key] <= budget[key] for key in RESOURCES)


def combine(estimates: dict[str, dict[str, Any]], frames: int, clk_ns: float) -> dict[str, Any]:
    """Clip-level fps, latency and resources from the early (per frame) and later (per clip) estimates."""
    early, later = estimates["early"], estimates["later"]
    used: dict[str, float | None] = {key: None for key in RESOURCES}
    for key in RESOURCES:
        amounts = [e["resources"][key] for e in (early, later) if key in e["resources"]]
        used[key] = sum(amounts) if len(amounts) == 2 else None
    cycles = early["critical_path_cycles"] + (frames - 1) * early["max_cycles"] + later["critical_path_cycles"]
    return {
        "fps": min(early["fps"] / frames, later["fps"]),
        "latency_ms": cycles * clk_ns / 1e6,
        "resources": used,
    }


def finn_report(
    board: Board,
    bits: str,
    frames: int,
    clk_ns: float,
    unmapped: dict[str, list[dict[str, str]]],
    estimates: dict[str, dict[str, Any]] | None,
    extra: dict[str, Any],
) -> dict[str, Any]:
    """The report the issue asks for; ``estimates`` is None when unmapped nodes stopped the flow."""
    flat_unmapped = [{"graph": graph, **node} for graph in GRAPHS for node in unmapped.get(graph, [])]
    if estimates is None:
        clip = {"fps": None, "latency_ms": None, "resources": {key: None for key in RESOURCES}}
    else:
        clip = combine(estimates, frames, clk_ns)
    fit = estimates is not None and not flat_unmapped and fits(clip["resources"], board.budget)
    return {
        "unmapped_nodes": flat_unmapped,
        "fps": clip["fps"],
        "latency_ms": clip["latency_ms"],
        "resources": clip["resources"],
        "board": {"name": board.name, "part": board.part, "finn_board": board.finn_board, "budget": board.budget,
                  "source": board.source},
        "utilization": utilization(clip["resources"], board.budget),
        "fits": fit,
        "bits": bits,
        "clk_ns": clk_ns,
        "fps_unit": f"clips of {frames} frames per second at {1e3 / clk_ns:g} MHz",
        "estimator": "finn-plus analytical estimates (exp_cycles_per_layer, res_estimation, dataflow_performance); "
                     "FF is not estimated by them (null); no synthesis ran",
        "graphs": estimates or {},
        **extra,
    }


def print_report(report: dict[str, Any], console: Console | None = None) -> None:
    """A table for people: per resource used, available and utilization, then fps, latency and the verdict."""
    console = console or Console(stderr=True)
    for node in report["unmapped_nodes"]:
        console.print(f"[red]unmapped[/] {node['graph']}/{node['node']} ({node['op_type']}): {node['why']}")
    table = Table(title=f"FINN estimate for {report['board']['name']} ({report['board']['part']}), {report['bits']}")
    for column in ("resource", "used", "available", "utilization"):
        table.add_column(column, justify="left" if column == "resource" else "right")
    for key in RESOURCES:
        used, share = report["resources"][key], report["utilization"][key]
        table.add_row(key, "n/a" if used is None else f"{used:,.0f}", f"{report['board']['budget'][key]:,}",
                      "n/a" if share is None else f"{share:.1%}")
    console.print(table)
    if report["fps"] is not None:
        console.print(f"{report['fps']:.2f} clips/s, latency {report['latency_ms']:.2f} ms ({report['fps_unit']})")
    console.print("[green]fits[/]" if report["fits"] else "[red]does not fit[/]")
