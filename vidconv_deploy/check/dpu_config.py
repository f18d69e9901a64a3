"""The DPU a target assumes: decode a fingerprint into the facts the rules, the lowering and the bound read.

A board does not fix its DPU: the KV260's Kria app overlays carry a DPUCZDX8G B3136 where the Model
Zoo's KV260 figures use a B4096. What the toolchain must agree on is the DPU's 64-bit *fingerprint*:
``xdputil query`` prints it on the board, vai_c_xir reads it from the arch.json it compiles with and
stores it in each DPU subgraph (attr ``dpu_fingerprint``), and VART refuses an xmodel whose
fingerprint differs from the DPU's in any bit (``DpuRunnerBaseImp::check_fingerprint``, Vitis-AI
``src/vai_runtime/vart/dpu-runner/src/dpu_runner_base_imp.cpp``; a zero on either side skips the check).

fingerprint = type << 56 | ISA << 48 | feature code (Vitis-AI
``src/vai_runtime/target_factory/src/target_factory.cpp``, ``get_fingerprint``). The feature code's
layout differs per type and ISA; each decoder below follows its ``create_target_<TYPE>_ISA<n>.cpp``
in ``src/vai_runtime/target_factory/src/`` and decodes only the fields that file reads. A type or ISA
without such a decoder here is refused, never guessed.

A rule set chooses its configuration by name (``--dpu-arch``, the names its ``dpu.configurations``
table lists, each with its fingerprint and source), by fingerprint (``--fingerprint``) or by the
arch.json the user will compile with (``--arch-json``); :func:`dpu_facts` gives the decoded facts as
the rule set's keys (``channel_parallel``, ``engines.conv.pixel_parallel``, ...), so every
reader of those keys follows the configuration.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vidconv_deploy.errors import UserError

FACTORY = "Vitis-AI src/vai_runtime/target_factory"
#: target_factory.cpp ``type2int``: the type code in the fingerprint's top byte.
TYPE_CODES = {1: "DPUCZDX8G", 2: "DPUCAHX8H", 3: "DPUCAHX8L", 4: "DPUCZDI4G", 5: "DPUCVDX8H", 6: "DPUCVDX8G",
              7: "DPUCADF8H", 8: "IPU_PHX", 9: "DPUCV2DX8G"}
EXAMPLE = "0x101000016010406"  # the KV260 Kria app overlays' B3136 (kria-vitis-platforms issue 25)


@dataclasses.dataclass(frozen=True)
class Bank:
    """One weight bank group of the target factory: ``num`` banks, each ``width`` channels wide, ``depth`` deep."""

    width: int
    num: int
    depth: int

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class DpuConfig:
    """A decoded fingerprint: the engine facts vai_c_xir compiles for."""

    fingerprint: int
    family: str
    isa: int
    size: str                  # B3136, C32B3, C20B14: the name the target factory gives this parallelism
    pixel_parallel: int
    channel_parallel: int      # input channel parallelism (ICP), UG1414's channel_parallel
    output_channel_parallel: int
    alu_pixel_parallel: int
    batch: int
    conv_bank: Bank
    alu_bank: Bank
    conv_nonlinear: tuple[str, ...]
    alu_nonlinear: tuple[str, ...]
    features: Mapping[str, Any]  # the remaining decoded fields (argmax, channel augmentation, ...)
    decoder: str

    @property
    def hex(self) -> str:
        return f"{self.fingerprint:#x}"

    @property
    def name(self) -> str:
        """The target factory's name for this size (vai_q_pytorch's ``target=``), e.g. ``DPUCZDX8G_ISA1_B3136``."""
        return f"{self.family}_ISA{self.isa}_{self.size}"

    @property
    def peak_ops_per_clock(self) -> int:
        return 2 * self.pixel_parallel * self.channel_parallel * self.output_channel_parallel


def _bits(value: int, low: int, count: int) -> int:
    return (value >> low) & ((1 << count) - 1)


def _pick(table: tuple[int, ...], index: int, what: str, value: int, known: str) -> int:
    if index >= len(table):
        raise UserError(f"fingerprint {value:#x}: {what} {index} is not one the target factory knows ({known}): "
                        f"copy the fingerprint exactly as xdputil query prints it")
    return table[index]


#: create_target_DPUCZDX8G_ISA1.cpp PP_MAP / ICP_MAP (= OCP_MAP), indexed by bits 0-3 (ARCH). Indices 8-11
#: (PP 2-4, ICP 4-8) are in the table but are none of PG338's sizes B512 ... B4096, so they are refused.
_ZD_PP, _ZD_ICP = (4, 4, 8, 4, 8, 8, 8, 8), (8, 10, 8, 12, 10, 12, 14, 16)


def _dpuczdx8g_isa1(v: int) -> DpuConfig:
    """DPUCZDX8G ISA1 (DPU IP v4.x): ARCH bits 0-3, ALU pixel parallelism 8-11, image bank groups 24-25,
    channel augmentation 26, leaky ReLU in the conv engine 28 and in the ALU 29, save-engine argmax 30.
    Every bank is 2048 deep whatever the fingerprint (the decoder sets no other depth); depthwise conv,
    average and max pool are always ALU types (no bit turns them off in ISA1)."""
    arch = _bits(v, 0, 4)
    pp = _pick(_ZD_PP, arch, "ARCH", v, "0-7 = B512, B800, B1024, B1152, B1600, B2304, B3136, B4096")
    icp = _ZD_ICP[arch]
    cv_leaky, alu_leaky = bool(_bits(v, 28, 1)), bool(_bits(v, 29, 1))
    return DpuConfig(
        v, "DPUCZDX8G", 1, f"B{2 * pp * icp * icp}", pp, icp, icp, _bits(v, 8, 4), 1,
        Bank(icp, icp, 2048), Bank(icp, 1, 2048),
        ("relu", *(("leaky_relu",) if cv_leaky else ()), "relu6"), ("relu", *(("leaky_relu",) if alu_leaky else ()), "relu6"),
        {"image_bank_groups": _bits(v, 24, 2), "channel_augmentation": bool(_bits(v, 26, 1)),
         "conv_leaky_relu": cv_leaky, "alu_leaky_relu": alu_leaky, "argmax": bool(_bits(v, 30, 1))},
        f"{FACTORY}/src/create_target_DPUCZDX8G_ISA1.cpp")


#: create_target_DPUCVDX8G_ISA3.cpp: OCP_MAP by ARCH (PP 8, ICP 16 throughout); WGT_RD_MAP by RDEPTH.
_CV_OCP, _CV_WGT_RD = (16, 32, 64), (14, 13, 13, 12, 12, 14, 13)


def _dpucvdx8g_isa3(v: int) -> DpuConfig:
    """DPUCVDX8G ISA3 (Versal AIE): ARCH bits 0-3 (output channel parallelism 16/32/64), batch 4-7, ALU pixel
    parallelism 8-11, bank depth index 12-15, then the DPUCZDX8G flags (conv leaky ReLU also enables
    hsigmoid and hswish). 16 conv weight banks, each 16 channels wide, 2**WGT_RD deep."""
    ocp = _pick(_CV_OCP, _bits(v, 0, 4), "ARCH", v, "0-2 = C16, C32, C64")
    depth = 1 << _pick(_CV_WGT_RD, _bits(v, 12, 4), "RDEPTH", v, "0-6")
    cv_leaky, alu_leaky, batch = bool(_bits(v, 28, 1)), bool(_bits(v, 29, 1)), _bits(v, 4, 4)
    return DpuConfig(
        v, "DPUCVDX8G", 3, f"C{ocp}B{batch}", 8, 16, ocp, _bits(v, 8, 4), batch,
        Bank(16, 16, depth), Bank(16, 1, depth),
        ("relu", *(("leaky_relu", "hsigmoid", "hswish") if cv_leaky else ()), "relu6"),
        ("relu", *(("leaky_relu",) if alu_leaky else ()), "relu6"),
        {"image_bank_groups": _bits(v, 24, 2), "channel_augmentation": bool(_bits(v, 26, 1)),
         "conv_leaky_relu": cv_leaky, "alu_leaky_relu": alu_leaky, "argmax": bool(_bits(v, 30, 1))},
        f"{FACTORY}/src/create_target_DPUCVDX8G_ISA3.cpp")


#: create_target_DPUCV2DX8G_ISA1.cpp PP_MAP / ICP_MAP / OCP_MAP by CV_ARCH.
_V2_PP, _V2_ICP, _V2_OCP = (1, 1, 1, 2, 4), (16, 16, 32, 32, 32), (16, 32, 32, 32, 32)
_V2_NONLINEAR = ("relu", "leaky_relu", "hsigmoid", "hswish", "relu6")


def _dpucv2dx8g_isa1(v: int) -> DpuConfig:
    """DPUCV2DX8G ISA1 (Versal AI Edge, AIE-ML): CV_ARCH bits 0-3, ALU cores 4-7 (AIE cores = 2**CV_ARCH + ALU
    cores), batch 8-15, channel augmentation 26, argmax 30. One weight bank group (4 banks, ICP/2 wide,
    32768 deep) serves conv and ALU; both fuse every activation the decoder lists."""
    arch = _bits(v, 0, 4)
    pp = _pick(_V2_PP, arch, "CV_ARCH", v, "0-4")
    alu_cores, batch = _bits(v, 4, 4), _bits(v, 8, 8)
    icp, bank = _V2_ICP[arch], Bank(_V2_ICP[arch] // 2, 4, 1 << 15)
    return DpuConfig(
        v, "DPUCV2DX8G", 1, f"C{(1 << arch) + alu_cores}B{batch}", pp, icp, _V2_OCP[arch], alu_cores // 2, batch,
        bank, bank, _V2_NONLINEAR, _V2_NONLINEAR,
        {"channel_augmentation": bool(_bits(v, 26, 1)), "argmax": bool(_bits(v, 30, 1))},
        f"{FACTORY}/src/create_target_DPUCV2DX8G_ISA1.cpp")


_DECODERS = {(1, 1): _dpuczdx8g_isa1, (6, 3): _dpucvdx8g_isa3, (9, 1): _dpucv2dx8g_isa1}
_DECODED = ", ".join(f"{TYPE_CODES[t]} ISA{i}" for t, i in _DECODERS)


def parse_fingerprint(text: str, what: str = "--fingerprint") -> int:
    """A fingerprint as xdputil query / arch.json write it (``0x...``, up to 16 hex digits)."""
    if not isinstance(text, str) or not re.fullmatch(r"0[xX][0-9a-fA-F]{1,16}", text.strip()):
        raise UserError(f"{what} {text!r} is not a DPU fingerprint: give the hex number xdputil query prints "
                        f"on the board, e.g. {EXAMPLE}")
    return int(text.strip(), 16)


def decode_fingerprint(value: int) -> DpuConfig:
    """The configuration a fingerprint encodes; a type, ISA or field value without a decoder is a UserError."""
    type_code, isa = value >> 56, _bits(value, 48, 8)
    decoder = _DECODERS.get((type_code, isa))
    if decoder is None:
        kind = f"{TYPE_CODES[type_code]} ISA{isa}" if type_code in TYPE_CODES else f"type code {type_code}"
        raise UserError(f"fingerprint {value:#x} is a {kind} DPU, which this toolchain cannot decode (it decodes "
                        f"{_DECODED}): give the fingerprint of one of those")
    return decoder(value)


def read_arch_json(path: Path) -> int:
    """The fingerprint of an arch.json (vai_c_xir's ``-a`` file: ``{"fingerprint": "0x..."}``)."""
    if not path.is_file():
        raise UserError(f"--arch-json {path}: no such file: give the arch.json you will compile with "
                        f'(the DPU build writes one; {{"fingerprint": "{EXAMPLE}"}} is enough)')
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"--arch-json {path} is not JSON ({type(err).__name__}): give the arch.json vai_c_xir takes") from None
    if not isinstance(data, dict) or "fingerprint" not in data:
        raise UserError(f'--arch-json {path} has no "fingerprint": give the arch.json of the DPU build '
                        f'(at least {{"fingerprint": "{EXAMPLE}"}})')
    return parse_fingerprint(str(data["fingerprint"]), f"--arch-json {path}: fingerprint")


@dataclasses.dataclass(frozen=True)
class DpuChoice:
    """What the user named: ``--dpu-arch NAME``, ``--fingerprint 0x...`` or ``--arch-json FILE`` (``flag`` without dashes)."""

    flag: str
    value: str

    def __str__(self) -> str:
        return f"--{self.flag.replace('_', '-')} {self.value}"


def _named(table: Mapping[str, Any], name: str, target: str) -> tuple[str, Mapping[str, Any]]:
    wanted = name.strip().upper()
    for key, entry in table.items():
        full = decode_fingerprint(parse_fingerprint(entry["fingerprint"], f"{target} dpu.configurations.{key}")).name
        if wanted in (key.upper(), full.upper()):
            return key, entry
    raise UserError(f"--dpu-arch {name}: {target} knows {', '.join(table)}: give one of them, or --fingerprint 0x... "
                    f"(xdputil query on the board) / --arch-json FILE for another DPU")


def dpu_facts(target: str, data: Mapping[str, Any], choice: DpuChoice | None) -> dict[str, Any]:
    """The rule-set keys of the configuration ``choice`` names (None: the board's ``board.dpu``), to merge over
    ``data`` (the resolved rule set of ``target``, with its ``dpu`` section).

    Keys: ``arch`` (name, size, fingerprint, source, chosen_by, features), ``channel_parallel``,
    ``engines.conv`` (pixel_parallel, output_channel_parallel, weight_bank, nonlinear), ``engines.alu``
    (weight_bank, nonlinear), ``perf.alu_pixel_parallel`` and, for the batched Versal DPUs,
    ``board.batch``.
    """
    section = data["dpu"]
    table = section["configurations"]
    if choice is None:
        key, entry = _named(table, data["board"]["dpu"], target)
        fingerprint, source, chosen = parse_fingerprint(entry["fingerprint"]), entry["source"], f"the {target} default ({key})"
    elif choice.flag == "dpu_arch":
        key, entry = _named(table, choice.value, target)
        fingerprint, source, chosen = parse_fingerprint(entry["fingerprint"]), entry["source"], str(choice)
    else:
        fingerprint = read_arch_json(Path(choice.value)) if choice.flag == "arch_json" else parse_fingerprint(choice.value)
        source, chosen = str(choice), str(choice)
    config = decode_fingerprint(fingerprint)
    if config.family != section["family"]:
        raise UserError(f"{chosen}: fingerprint {config.hex} is a {config.family} ({config.name}) but {target} has a "
                        f"{section['family']}: choose the dpu-* target of that board, or that board's fingerprint")
    arch = {"name": config.name, "size": config.size, "fingerprint": config.hex, "chosen_by": chosen,
            "source": f"{source}; decoded by {config.decoder}", "features": dict(config.features),
            **({"arch_json": choice.value} if choice is not None and choice.flag == "arch_json" else {})}
    derived: dict[str, Any] = {
        "arch": arch, "channel_parallel": config.channel_parallel,
        "engines": {"conv": {"pixel_parallel": config.pixel_parallel, "output_channel_parallel": config.output_channel_parallel,
                             "weight_bank": config.conv_bank.to_dict(), "nonlinear": list(config.conv_nonlinear)},
                    "alu": {"weight_bank": config.alu_bank.to_dict(),
                            "nonlinear": list(config.alu_nonlinear)}},
        "perf": {"alu_pixel_parallel": config.alu_pixel_parallel}}
    if config.family != "DPUCZDX8G":
        derived["board"] = {"batch": config.batch}
    return derived
