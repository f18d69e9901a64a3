"""Key lists of the foreign checkpoint layouts, written from their documented facts (not from our mapping).

Each function returns ``{key: shape}`` for a ConvNeXt/ViC of the given widths and depths; tests fill
them with random values to make checkpoints in that layout.
"""

from __future__ import annotations

import torch

Shapes = dict[str, tuple[int, ...]]


def _block(prefix: str, d: int, names: dict[str, str], gamma: str, gamma_shape: tuple[int, ...]) -> Shapes:
    return {
        f"{prefix}{names['dw']}.weight": (d, 1, 7, 7),
        f"{prefix}{names['dw']}.bias": (d,),
        f"{prefix}{names['norm']}.weight": (d,),
        f"{prefix}{names['norm']}.bias": (d,),
        f"{prefix}{names['fc1']}.weight": (4 * d, d),
        f"{prefix}{names['fc1']}.bias": (4 * d,),
        f"{prefix}{names['fc2']}.weight": (d, 4 * d),
        f"{prefix}{names['fc2']}.bias": (d,),
        f"{prefix}{gamma}": gamma_shape,
    }


FB_NAMES = {"dw": "dwconv", "norm": "norm", "fc1": "pwconv1", "fc2": "pwconv2"}


def _facebook_backbone(dims, depths, prefix: str = "") -> Shapes:
    shapes: Shapes = {
        f"{prefix}downsample_layers.0.0.weight": (dims[0], 3, 4, 4),
        f"{prefix}downsample_layers.0.0.bias": (dims[0],),
        f"{prefix}downsample_layers.0.1.weight": (dims[0],),
        f"{prefix}downsample_layers.0.1.bias": (dims[0],),
    }
    for i in range(1, 4):
        shapes[f"{prefix}downsample_layers.{i}.0.weight"] = (dims[i - 1],)
        shapes[f"{prefix}downsample_layers.{i}.0.bias"] = (dims[i - 1],)
        shapes[f"{prefix}downsample_layers.{i}.1.weight"] = (dims[i], dims[i - 1], 2, 2)
        shapes[f"{prefix}downsample_layers.{i}.1.bias"] = (dims[i],)
    for s, (d, n) in enumerate(zip(dims, depths)):
        for j in range(n):
            shapes.update(_block(f"{prefix}stages.{s}.{j}.", d, FB_NAMES, "gamma", (d,)))
    return shapes


def facebook_keys(dims, depths, classes: int = 1000) -> Shapes:
    """facebookresearch/ConvNeXt ImageNet model: downsample_layers, stages, norm, head."""
    shapes = _facebook_backbone(dims, depths)
    shapes.update({"norm.weight": (dims[3],), "norm.bias": (dims[3],)})
    shapes.update({"head.weight": (classes, dims[3]), "head.bias": (classes,)})
    return shapes


def authors_keys(dims, depths, grid, neck_dim: int, classes: int, neck: bool = True) -> Shapes:
    """The authors' MMAction2 VidConv: backbone.* with temporal convs in stages 3-4, cls_head.*."""
    rows, cols = grid
    shapes = _facebook_backbone(dims, depths, prefix="backbone.")
    for s in (2, 3):
        for j in range(depths[s]):
            d = dims[s]
            shapes[f"backbone.stages.{s}.{j}.dwconv_tem.weight"] = (d, 1, rows, cols)
            shapes[f"backbone.stages.{s}.{j}.dwconv_tem.bias"] = (d,)
            shapes[f"backbone.stages.{s}.{j}.gamma_tem"] = (d,)
    if neck:
        shapes["cls_head.temp_conv.0.conv.weight"] = (neck_dim, dims[3], rows, cols)
        for name in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"cls_head.temp_conv.0.bn.{name}"] = (neck_dim,)
        shapes["cls_head.temp_conv.0.bn.num_batches_tracked"] = ()
    feature = neck_dim if neck else dims[3]
    shapes.update({"cls_head.fc_cls.weight": (classes, feature), "cls_head.fc_cls.bias": (classes,)})
    return shapes


def timm_keys(dims, depths, classes: int = 1000) -> Shapes:
    """timm ConvNeXt: stem.{0,1}, stages.N.downsample.{0,1}, stages.N.blocks.M.*, head.{norm,fc}."""
    shapes: Shapes = {
        "stem.0.weight": (dims[0], 3, 4, 4),
        "stem.0.bias": (dims[0],),
        "stem.1.weight": (dims[0],),
        "stem.1.bias": (dims[0],),
    }
    names = {"dw": "conv_dw", "norm": "norm", "fc1": "mlp.fc1", "fc2": "mlp.fc2"}
    for s, (d, n) in enumerate(zip(dims, depths)):
        if s:
            shapes[f"stages.{s}.downsample.0.weight"] = (dims[s - 1],)
            shapes[f"stages.{s}.downsample.0.bias"] = (dims[s - 1],)
            shapes[f"stages.{s}.downsample.1.weight"] = (d, dims[s - 1], 2, 2)
            shapes[f"stages.{s}.downsample.1.bias"] = (d,)
        for j in range(n):
            shapes.update(_block(f"stages.{s}.blocks.{j}.", d, names, "gamma", (d,)))
    shapes.update({"head.norm.weight": (dims[3],), "head.norm.bias": (dims[3],)})
    shapes.update({"head.fc.weight": (classes, dims[3]), "head.fc.bias": (classes,)})
    return shapes


def torchvision_keys(dims, depths, classes: int = 1000) -> Shapes:
    """torchvision ConvNeXt: features.0 stem, features.{1,3,5,7} stages, features.{2,4,6} downsamples."""
    shapes: Shapes = {
        "features.0.0.weight": (dims[0], 3, 4, 4),
        "features.0.0.bias": (dims[0],),
        "features.0.1.weight": (dims[0],),
        "features.0.1.bias": (dims[0],),
    }
    names = {"dw": "block.0", "norm": "block.2", "fc1": "block.3", "fc2": "block.5"}
    for s, (d, n) in enumerate(zip(dims, depths)):
        for j in range(n):
            shapes.update(_block(f"features.{2 * s + 1}.{j}.", d, names, "layer_scale", (d, 1, 1)))
        if s < 3:
            shapes[f"features.{2 * s + 2}.0.weight"] = (d,)
            shapes[f"features.{2 * s + 2}.0.bias"] = (d,)
            shapes[f"features.{2 * s + 2}.1.weight"] = (dims[s + 1], d, 2, 2)
            shapes[f"features.{2 * s + 2}.1.bias"] = (dims[s + 1],)
    shapes.update({"classifier.0.weight": (dims[3],), "classifier.0.bias": (dims[3],)})
    shapes.update({"classifier.2.weight": (classes, dims[3]), "classifier.2.bias": (classes,)})
    return shapes


def random_state(shapes: Shapes, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random values for a key list; BatchNorm variances positive, counters integer."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[key] = torch.randn(shape, generator=gen) * 0.1
    return state
