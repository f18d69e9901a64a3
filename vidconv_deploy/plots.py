"""Per-layer bar charts for the reports (SQNR per tensor, cycles per layer), written atomically as PNG.

One function so every report's plots share their look: a bar per layer in graph order, names
under the bars, a faint grid, 120 dpi.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from vidconv_deploy.atomic import atomic_path


def save_layer_bars(names: Sequence[str], values: Sequence[float], path: str | os.PathLike[str], title: str,
                    ylabel: str, colors: Sequence[str] | None = None, log: bool = False) -> None:
    """Bar chart of one value per layer; long names keep their tail (where layers differ)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6.0, 0.28 * len(names) + 2), 4.5))
    ax.bar(range(len(names)), values, color=list(colors) if colors else "tab:blue")
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n if len(n) <= 32 else "..." + n[-29:] for n in names], rotation=90, fontsize=6)
    if log:
        ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9, wrap=True)  # long titles wrap instead of running off a narrow figure
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
