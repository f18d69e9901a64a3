"""What the Vitis AI tools need to know about a DPU board, read from its rule set (``hw/rules``).

The rule-set YAML is the one place where board facts live, next to their sources: the DPU core
(``arch.name``, e.g. ``DPUCZDX8G_ISA1_B4096``, which vai_q_pytorch's ``target=`` takes), its
fingerprint (``arch.fingerprint``: what vai_c_xir writes into the xmodel and VART compares with the
board's DPU) and the ``arch.json`` that ``vai_c_xir -a`` compiles for (``board.arch_json``, the
image's file for the board's default DPU). The arch.json files sit in
the Vitis AI image under ``/opt/vitis_ai/compiler/arch/<DPU>/<BOARD>/``, copied there from the
``vaic`` conda package (Vitis-AI 3.5 ``docker/common/install_torch.sh``).
"""

from __future__ import annotations

import dataclasses

from vidconv_deploy.check.ruleset import RuleSet, list_targets, load_ruleset
from vidconv_deploy.errors import UserError


@dataclasses.dataclass(frozen=True)
class DpuBoard:
    """One DPU target as the compiler and the board runner see it."""

    target: str
    name: str
    core: str
    arch_json: str
    #: The fingerprint the bundle assumes (``0x...``) and how it was chosen (the board default, --dpu-arch ...).
    fingerprint: str
    chosen_by: str
    #: The user's own arch.json (--arch-json), copied into the bundle; None: compile with ``arch_json``.
    user_arch_json: str | None = None
    #: True when the fingerprint is the board's default one (the image's arch.json is compiled with).
    default: bool = True

    @property
    def family(self) -> str:
        """The DPU family, e.g. ``DPUCZDX8G`` (the folder under ``/opt/vitis_ai/compiler/arch``)."""
        return self.core.split("_")[0]


def dpu_targets() -> list[str]:
    """Every selectable target whose rule set names an arch.json (the DPU boards)."""
    return [t for t in list_targets() if "arch_json" in load_ruleset(t).data.get("board", {})]


def dpu_board(target: str | RuleSet) -> DpuBoard:
    """The board facts of a ``dpu-*`` target (a name: its default DPU; a rule set: the DPU it was resolved for);
    any other target is a :class:`UserError`."""
    rules = target if isinstance(target, RuleSet) else load_ruleset(target)  # an unknown name fails here
    data, board = rules.data, rules.data.get("board", {})
    if "arch_json" not in board:
        raise UserError(f"target {rules.name!r} is not a DPU board: choose one of {', '.join(dpu_targets())}")
    arch = data["arch"]
    default = arch["fingerprint"] == load_ruleset(rules.name).data["arch"]["fingerprint"]
    return DpuBoard(target=rules.name, name=board["name"], core=arch["name"], arch_json=board["arch_json"],
                    fingerprint=arch["fingerprint"], chosen_by=arch["chosen_by"], user_arch_json=arch.get("arch_json"),
                    default=default)
