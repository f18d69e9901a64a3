"""FINN boards: FPGA part, FINN board name and the programmable-logic budget a FINN build may use.

The facts are data, one file per board beside the DPU boards: ``hw/rules/finn-<board>.yaml``
(extending FINN's op rules ``finn.yaml``), each with its sources. Budgets are the whole device's
LUT, FF, BRAM_18K, URAM and DSP counts; a FINN design also needs room for its DMA and
interconnect, so a fit near 100 % is optimistic.
"""

from __future__ import annotations

import dataclasses
import difflib

from vidconv_deploy.check.ruleset import list_targets, load_ruleset
from vidconv_deploy.errors import UserError

RESOURCES = ("LUT", "FF", "BRAM_18K", "URAM", "DSP")
PREFIX = "finn-"


@dataclasses.dataclass(frozen=True)
class Board:
    """One FINN target board."""

    name: str
    finn_board: str
    part: str
    budget: dict[str, int]
    source: str
    #: FINN's Zynq shell flow (bitfile + PYNQ driver) knows this board (finn/util/basic.py pynq_part_map).
    zynq_shell: bool = True

    def to_dict(self) -> dict[str, object]:
        return dataclasses.asdict(self)


def finn_targets() -> list[str]:
    """Target names of the FINN boards (``finn-kv260``, ...): the FINN rule sets that name a board."""
    return [t for t in list_targets() if t.startswith(PREFIX) and "part" in load_ruleset(t).data.get("board", {})]


def get_board(name: str) -> Board:
    """Look up a board by its short name (``kv260``) or target name (``finn-kv260``); a typo gets the closest names."""
    key = name.lower().removeprefix(PREFIX)
    boards = [t.removeprefix(PREFIX) for t in finn_targets()]
    if key not in boards:
        close = difflib.get_close_matches(key, boards, n=2)
        hint = f"did you mean {' or '.join(close)}?" if close else f"choose one of {', '.join(boards)}"
        raise UserError(f"unknown FINN board {name!r}: {hint}")
    data = load_ruleset(PREFIX + key).data["board"]
    return Board(data["name"], data["finn_board"], data["part"], {r: int(data["budget"][r]) for r in RESOURCES},
                 data["source"], bool(data.get("zynq_shell", True)))
