"""The classic CNNs of the Vitis AI Model Zoo, written out in plain PyTorch with torchvision's layer shapes.

torchvision itself is not used: its PyPI wheels are CUDA builds that do not import beside the
project's CPU torch (``operator torchvision::nms does not exist``), and no CPU wheel of the matching
0.28.0 is available to this project. The DPU cost depends only on the layer shapes, so each network
here has exactly torchvision's convolutions, pools, channel counts and strides (random weights; BatchNorm
is kept so the ONNX export folds it into the convs as the Vitis AI quantizer does).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _cbr(cin: int, cout: int, k: int, s: int = 1, p: int | None = None, groups: int = 1, act: type[nn.Module] = nn.ReLU,
         padding: int | tuple[int, int] | None = None) -> nn.Sequential:
    pad = padding if padding is not None else (k // 2 if p is None else p)
    return nn.Sequential(nn.Conv2d(cin, cout, k, s, pad, groups=groups, bias=False), nn.BatchNorm2d(cout), act())


class _Basic(nn.Module):
    expansion = 1

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        out = width * self.expansion
        self.body = nn.Sequential(_cbr(cin, width, 3, stride), nn.Conv2d(width, out, 3, 1, 1, bias=False), nn.BatchNorm2d(out))
        self.down = None if stride == 1 and cin == out else nn.Sequential(nn.Conv2d(cin, out, 1, stride, bias=False), nn.BatchNorm2d(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + (x if self.down is None else self.down(x)))


class _Bottleneck(_Basic):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__(cin, width, stride)
        out = width * 4
        self.body = nn.Sequential(_cbr(cin, width, 1), _cbr(width, width, 3, stride),
                                  nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out))


def _resnet(block: type[_Basic], layers: list[int], classes: int = 1000) -> nn.Module:
    mods: list[nn.Module] = [_cbr(3, 64, 7, 2, 3), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for i, n in enumerate(layers):
        for j in range(n):
            mods.append(block(cin, 64 * 2**i, 2 if j == 0 and i > 0 else 1))
            cin = 64 * 2**i * block.expansion
    return nn.Sequential(*mods, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(cin, classes))


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers = [] if expand == 1 else [_cbr(cin, hidden, 1, act=nn.ReLU6)]
        layers += [_cbr(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.body, self.residual = nn.Sequential(*layers), stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


def mobilenet_v2() -> nn.Module:
    mods: list[nn.Module] = [_cbr(3, 32, 3, 2, act=nn.ReLU6)]
    cin = 32
    for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]:
        for i in range(n):
            mods.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
            cin = c
    return nn.Sequential(*mods, _cbr(cin, 1280, 1, act=nn.ReLU6), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1280, 1000))


def mobilenet_v1() -> nn.Module:
    """MobileNet v1 1.0 (Howard et al. 2017, Table 1), as TF-slim's mobilenet_v1 the Model Zoo quantized."""
    mods: list[nn.Module] = [_cbr(3, 32, 3, 2)]
    cin = 32
    for cout, s in [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1)]:
        mods += [_cbr(cin, cin, 3, s, groups=cin), _cbr(cin, cout, 1)]
        cin = cout
    return nn.Sequential(*mods, nn.AdaptiveAvgPool2d(1), nn.Conv2d(1024, 1001, 1), nn.Flatten())


def vgg16() -> nn.Module:
    mods: list[nn.Module] = []
    cin = 3
    for v in [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]:
        if v == "M":
            mods.append(nn.MaxPool2d(2, 2))
        else:
            mods += [nn.Conv2d(cin, int(v), 3, 1, 1), nn.ReLU()]
            cin = int(v)
    return nn.Sequential(*mods, nn.Flatten(), nn.Linear(512 * 49, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                         nn.Linear(4096, 1000))


class _Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, 1, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze(x)
        return torch.cat([self.e1(x), self.e3(x)], 1)


def squeezenet1_1() -> nn.Module:
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    return nn.Sequential(nn.Conv2d(3, 64, 3, 2), nn.ReLU(), pool(), _Fire(64, 16, 64), _Fire(128, 16, 64), pool(),
                         _Fire(128, 32, 128), _Fire(256, 32, 128), pool(), _Fire(256, 48, 192), _Fire(384, 48, 192),
                         _Fire(384, 64, 256), _Fire(512, 64, 256), nn.Conv2d(512, 1000, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


class _Branches(nn.Module):
    """Parallel branches concatenated along channels (the Inception module)."""

    def __init__(self, *branches: nn.Module) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([b(x) for b in self.branches], 1)


def _inception_v1_block(cin: int, c1: int, r3: int, c3: int, r5: int, c5: int, pool: int) -> nn.Module:
    return _Branches(_cbr(cin, c1, 1), nn.Sequential(_cbr(cin, r3, 1), _cbr(r3, c3, 3)),
                     nn.Sequential(_cbr(cin, r5, 1), _cbr(r5, c5, 3)),  # torchvision's 3x3 (as TF-slim)
                     nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), _cbr(cin, pool, 1)))


def inception_v1() -> nn.Module:
    cfg = [(192, 64, 96, 128, 16, 32, 32), (256, 128, 128, 192, 32, 96, 64), "M",
           (480, 192, 96, 208, 16, 48, 64), (512, 160, 112, 224, 24, 64, 64), (512, 128, 128, 256, 24, 64, 64),
           (512, 112, 144, 288, 32, 64, 64), (528, 256, 160, 320, 32, 128, 128), "M2",
           (832, 256, 160, 320, 32, 128, 128), (832, 384, 192, 384, 48, 128, 128)]
    mods: list[nn.Module] = [_cbr(3, 64, 7, 2, 3), nn.MaxPool2d(3, 2, ceil_mode=True), _cbr(64, 64, 1), _cbr(64, 192, 3),
                             nn.MaxPool2d(3, 2, ceil_mode=True)]
    for c in cfg:
        mods.append(nn.MaxPool2d(3, 2, ceil_mode=True) if c == "M" else nn.MaxPool2d(2, 2, ceil_mode=True) if c == "M2"
                    else _inception_v1_block(*c))
    return nn.Sequential(*mods, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(1024, 1000))


def _inc_a(cin: int, pool: int) -> nn.Module:
    return _Branches(_cbr(cin, 64, 1), nn.Sequential(_cbr(cin, 48, 1), _cbr(48, 64, 5)),
                     nn.Sequential(_cbr(cin, 64, 1), _cbr(64, 96, 3), _cbr(96, 96, 3)),
                     nn.Sequential(nn.AvgPool2d(3, 1, 1), _cbr(cin, pool, 1)))


def _inc_c(c7: int) -> nn.Module:
    return _Branches(_cbr(768, 192, 1),
                     nn.Sequential(_cbr(768, c7, 1), _cbr(c7, c7, (1, 7), padding=(0, 3)), _cbr(c7, 192, (7, 1), padding=(3, 0))),
                     nn.Sequential(_cbr(768, c7, 1), _cbr(c7, c7, (7, 1), padding=(3, 0)), _cbr(c7, c7, (1, 7), padding=(0, 3)),
                                   _cbr(c7, c7, (7, 1), padding=(3, 0)), _cbr(c7, 192, (1, 7), padding=(0, 3))),
                     nn.Sequential(nn.AvgPool2d(3, 1, 1), _cbr(768, 192, 1)))


class _IncE(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.b1, self.b3, self.bd, self.bp = _cbr(cin, 320, 1), _cbr(cin, 384, 1), nn.Sequential(_cbr(cin, 448, 1), _cbr(448, 384, 3)), \
            nn.Sequential(nn.AvgPool2d(3, 1, 1), _cbr(cin, 192, 1))
        self.b3a, self.b3b = _cbr(384, 384, (1, 3), padding=(0, 1)), _cbr(384, 384, (3, 1), padding=(1, 0))
        self.bda, self.bdb = _cbr(384, 384, (1, 3), padding=(0, 1)), _cbr(384, 384, (3, 1), padding=(1, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3, bd = self.b3(x), self.bd(x)
        return torch.cat([self.b1(x), self.b3a(b3), self.b3b(b3), self.bda(bd), self.bdb(bd), self.bp(x)], 1)


def inception_v3() -> nn.Module:
    return nn.Sequential(
        _cbr(3, 32, 3, 2, 0), _cbr(32, 32, 3, 1, 0), _cbr(32, 64, 3), nn.MaxPool2d(3, 2), _cbr(64, 80, 1), _cbr(80, 192, 3, 1, 0),
        nn.MaxPool2d(3, 2), _inc_a(192, 32), _inc_a(256, 64), _inc_a(288, 64),
        _Branches(_cbr(288, 384, 3, 2, 0), nn.Sequential(_cbr(288, 64, 1), _cbr(64, 96, 3), _cbr(96, 96, 3, 2, 0)), nn.MaxPool2d(3, 2)),
        _inc_c(128), _inc_c(160), _inc_c(160), _inc_c(192),
        _Branches(nn.Sequential(_cbr(768, 192, 1), _cbr(192, 320, 3, 2, 0)),
                  nn.Sequential(_cbr(768, 192, 1), _cbr(192, 192, (1, 7), padding=(0, 3)), _cbr(192, 192, (7, 1), padding=(3, 0)),
                                _cbr(192, 192, 3, 2, 0)), nn.MaxPool2d(3, 2)),
        _IncE(1280), _IncE(2048), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))


#: name -> (builder, input size); names match bench/data/model_zoo_dpu_throughput.yaml.
NETWORKS: dict[str, tuple[Callable[[], nn.Module], int]] = {
    "resnet50": (lambda: _resnet(_Bottleneck, [3, 4, 6, 3]), 224),
    "resnet18": (lambda: _resnet(_Basic, [2, 2, 2, 2]), 224),
    "mobilenet_v2": (mobilenet_v2, 224),
    "mobilenet_v1": (mobilenet_v1, 224),
    "inception_v1": (inception_v1, 224),
    "inception_v3": (inception_v3, 299),
    "vgg16": (vgg16, 224),
    "squeezenet1_1": (squeezenet1_1, 224),
}
