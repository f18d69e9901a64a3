"""FINN boards: FPGA part, FINN board name and the programmable-logic budget a FINN build may use.

Budgets are the whole device's LUT, FF, BRAM_18K, URAM and DSP counts; a FINN design also needs
room for its DMA and interconnect, so a fit near 100 % is optimistic. Sources per board below.
"""

from __future__ import annotations

import dataclasses
import difflib

from vidconv_deploy.errors import UserError

RESOURCES = ("LUT", "FF", "BRAM_18K", "URAM", "DSP")


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


_FINN_PARTS = "finn-plus 1.6.1 finn/util/basic.py pynq_part_map / part_map"

BOARDS: dict[str, Board] = {
    "kv260": Board(
        "kv260", "KV260_SOM", "xck26-sfvc784-2LV-c",
        {"LUT": 117120, "FF": 234240, "BRAM_18K": 288, "URAM": 64, "DSP": 1248},
        f"part: {_FINN_PARTS}; budget: AMD DS987 (Kria K26 SOM) = Vivado report_utilization 'Available' "
        "for xck26-sfvc784-2LV-c (117120 CLB LUTs, 234240 registers, 144 BRAM36 tiles, 64 URAM, 1248 DSP)",
    ),
    "zcu104": Board(
        "zcu104", "ZCU104", "xczu7ev-ffvc1156-2-e",
        {"LUT": 230000, "FF": 460000, "BRAM_18K": 610, "URAM": 92, "DSP": 1728},
        f"part: {_FINN_PARTS}; budget: finn-plus 1.6.1 finn/util/platforms.py ZU7EV_Platform.compute_resources",
    ),
    "pynq-z2": Board(
        "pynq-z2", "Pynq-Z2", "xc7z020clg400-1",
        {"LUT": 53200, "FF": 106400, "BRAM_18K": 280, "URAM": 0, "DSP": 220},
        f"part: {_FINN_PARTS}; budget: finn-plus 1.6.1 finn/util/platforms.py Zynq7020_Platform.compute_resources",
    ),
    "vck190": Board(
        "vck190", "VCK190", "xcvc1902-vsva2197-2MP-e-S",
        {"LUT": 899840, "FF": 1799680, "BRAM_18K": 1934, "URAM": 463, "DSP": 1968},
        f"part: {_FINN_PARTS} (part_map only); budget: AMD DS950 Versal AI Core product table, VC1902 "
        "(899840 LUTs, 2 FFs per LUT, 967 BRAM36, 463 URAM, 1968 DSP engines; the DSP count also in UG1702 "
        "platforminfo for xilinx_vck190_base)",
        zynq_shell=False,
    ),
}


def get_board(name: str) -> Board:
    """Look up a board by its short name (``kv260``); a typo gets the closest names."""
    key = name.lower().removeprefix("finn-")
    try:
        return BOARDS[key]
    except KeyError:
        close = difflib.get_close_matches(key, BOARDS, n=2)
        hint = f"did you mean {' or '.join(close)}?" if close else f"choose one of {', '.join(BOARDS)}"
        raise UserError(f"unknown FINN board {name!r}: {hint}") from None


def finn_targets() -> list[str]:
    """``vidconv-export`` target names of the FINN boards (``finn-kv260``, ...)."""
    return [f"finn-{name}" for name in BOARDS]
