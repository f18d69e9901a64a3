"""The collage: L = rows * cols frame feature maps tiled row-major into one 2-D map.

Frame t lands at grid row t // cols, column t % cols, exactly as the authors' rearrange
``(b t) c h w -> b c (row h) (col w)``.
"""

from __future__ import annotations

import torch


def frames_to_collage(frames: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B*L, C, H, W)`` per-frame maps -> ``(B, C, rows*H, cols*W)`` collages, frames row-major."""
    rows, cols = grid
    n, c, h, w = frames.shape
    x = frames.reshape(n // (rows * cols), rows, cols, c, h, w)
    x = x.permute(0, 3, 1, 4, 2, 5)  # b, c, row, h, col, w
    return x.reshape(n // (rows * cols), c, rows * h, cols * w)


def collage_to_frames(collage: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`frames_to_collage`: ``(B, C, rows*H, cols*W)`` -> ``(B*L, C, H, W)``."""
    rows, cols = grid
    b, c, hh, ww = collage.shape
    h, w = hh // rows, ww // cols
    x = collage.reshape(b, c, rows, h, cols, w).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b * rows * cols, c, h, w)


def tile_to_collage(frame: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Repeat one frame-sized map over every cell of the collage (the authors' ``repeat``)."""
    return frame.repeat(1, 1, grid[0], grid[1])
