"""What the Vitis AI tools need to know about a DPU board, read from its rule set (``hw/rules``).

The rule-set YAML is the one place where board facts live, next to their sources: the DPU core
(``arch.name``, e.g. ``DPUCZDX8G_ISA1_B4096``, which vai_q_pytorch's ``target=`` takes) and the
``arch.json`` that ``vai_c_xir -a`` compiles for (``board.arch_json``). The arch.json files sit in
the Vitis AI image under ``/opt/vitis_ai/compiler/arch/<DPU>/<BOARD>/``, copied there from the
``vaic`` conda package (Vitis-AI 3.5 ``docker/common/install_torch.sh``).
"""

from __future__ import annotations

import dataclasses

from vidconv_deploy.check.ruleset import list_targets, load_ruleset
from vidconv_deploy.errors import UserError


@dataclasses.dataclass(frozen=True)
class DpuBoard:
    """One DPU target as the compiler and the board runner see it."""

    target: str
    name: str
    core: str
    arch_json: str

    @property
    def family(self) -> str:
        """The DPU family, e.g. ``DPUCZDX8G`` (the folder under ``/opt/vitis_ai/compiler/arch``)."""
        return self.core.split("_")[0]


def dpu_targets() -> list[str]:
    """Every selectable target whose rule set names an arch.json (the DPU boards)."""
    return [t for t in list_targets() if "arch_json" in load_ruleset(t).data.get("board", {})]


def dpu_board(target: str) -> DpuBoard:
    """The board facts of a ``dpu-*`` target; any other target is a :class:`UserError`."""
    data = load_ruleset(target).data  # an unknown name already fails here, with suggestions
    board = data.get("board", {})
    if "arch_json" not in board:
        raise UserError(f"target {target!r} is not a DPU board: choose one of {', '.join(dpu_targets())}")
    return DpuBoard(target=target, name=board["name"], core=data["arch"]["name"], arch_json=board["arch_json"])
