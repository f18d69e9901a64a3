"""The Xilinx DPU deploy path after quantization: golden vectors, the Vitis AI compile step, the board dir.

- :mod:`~vidconv_deploy.dpu.golden`: every DPU-side int8 tensor of one clip, in the board's layout.
- :mod:`~vidconv_deploy.dpu.compile`: vai_q_pytorch + vai_c_xir inside the Vitis AI image (or a
  record of why they did not run), and our fix positions against vai_q's.
- :mod:`~vidconv_deploy.dpu.board_dir`: what ``hw/board/run_xmodel.py`` needs on the board.
"""

from vidconv_deploy.dpu.board_dir import write_board_dir
from vidconv_deploy.dpu.boards import DpuBoard, dpu_board
from vidconv_deploy.dpu.compile import CompilePlan, CompileResult, compare_fix_points, prepare_compile, run_compile
from vidconv_deploy.dpu.golden import GoldenTensor, compare_golden, read_golden, write_clip_golden, write_golden

__all__ = [
    "CompilePlan",
    "CompileResult",
    "DpuBoard",
    "GoldenTensor",
    "compare_fix_points",
    "compare_golden",
    "dpu_board",
    "prepare_compile",
    "read_golden",
    "run_compile",
    "write_board_dir",
    "write_clip_golden",
    "write_golden",
]
