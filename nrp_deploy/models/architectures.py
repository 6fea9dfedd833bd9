"""The two published purifier architectures, with the published module names.

Parameter names must match the authors' checkpoints key for key (``conv_first``, ``RRDB_trunk.N.RDBk.convJ``,
``trunk_conv``; ``recon_trunk.N.convJ``, ``conv_last``), so that ``NRP.pth`` and ``NRP_resG.pth`` load with
``strict=True`` and no renaming. Both networks are fully convolutional (3x3, stride 1, padding 1) and map
RGB in [0, 1] to an unclamped RGB estimate; clamping belongs to post-processing.
"""

from __future__ import annotations

import torch
from torch import nn


def _conv(in_ch: int, out_ch: int) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=1, padding=1, bias=True)


class ResidualDenseBlock(nn.Module):
    """Five densely connected convolutions; output = 0.2 * conv5(...) + input."""

    def __init__(self, nf: int = 64, gc: int = 32) -> None:
        super().__init__()
        self.conv1 = _conv(nf, gc)
        self.conv2 = _conv(nf + gc, gc)
        self.conv3 = _conv(nf + 2 * gc, gc)
        self.conv4 = _conv(nf + 3 * gc, gc)
        self.conv5 = _conv(nf + 4 * gc, nf)
        self.lrelu = nn.LeakyReLU(negative_slope=0.2, inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.lrelu(self.conv1(x))
        x2 = self.lrelu(self.conv2(torch.cat((x, x1), 1)))
        x3 = self.lrelu(self.conv3(torch.cat((x, x1, x2), 1)))
        x4 = self.lrelu(self.conv4(torch.cat((x, x1, x2, x3), 1)))
        x5 = self.conv5(torch.cat((x, x1, x2, x3, x4), 1))
        return x5 * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks in sequence, scaled by 0.2, plus the input."""

    def __init__(self, nf: int = 64, gc: int = 32) -> None:
        super().__init__()
        self.RDB1 = ResidualDenseBlock(nf, gc)
        self.RDB2 = ResidualDenseBlock(nf, gc)
        self.RDB3 = ResidualDenseBlock(nf, gc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.RDB3(self.RDB2(self.RDB1(x))) * 0.2 + x


class NRP(nn.Module):
    """The RRDB purifier: conv_first -> nb RRDBs -> trunk_conv (no global skip, no activation at the ends)."""

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, nb: int = 23, gc: int = 32) -> None:
        super().__init__()
        self.conv_first = _conv(in_nc, nf)
        self.RRDB_trunk = nn.Sequential(*[RRDB(nf, gc) for _ in range(nb)])
        self.trunk_conv = _conv(nf, out_nc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk_conv(self.RRDB_trunk(self.conv_first(x)))


class ResidualBlockNoBN(nn.Module):
    """conv -> ReLU -> conv, plus the input; no batch norm."""

    def __init__(self, nf: int = 64) -> None:
        super().__init__()
        self.conv1 = _conv(nf, nf)
        self.conv2 = _conv(nf, nf)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(self.relu(self.conv1(x)))


class NRP_resG(nn.Module):
    """The residual purifier: conv_first + LeakyReLU(0.1) -> nb residual blocks -> conv_last."""

    def __init__(self, in_nc: int = 3, out_nc: int = 3, nf: int = 64, nb: int = 23) -> None:
        super().__init__()
        self.conv_first = _conv(in_nc, nf)
        self.lrelu = nn.LeakyReLU(negative_slope=0.1, inplace=True)
        self.recon_trunk = nn.Sequential(*[ResidualBlockNoBN(nf) for _ in range(nb)])
        self.conv_last = _conv(nf, out_nc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_last(self.recon_trunk(self.lrelu(self.conv_first(x))))
