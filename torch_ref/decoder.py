"""The light "asymmetric" decoder of FarSeg (Zheng et al., CVPR 2020), shared by FactSeg.

One block per input stride (4/8/16/32) with 1/1/2/3 stages; a stage is 3x3 conv (no bias) + BN +
ReLU + bilinear x2 (align_corners=True; none in the stride-4 block). Output = mean of the blocks.
Keys: ``blocks.{i}.{j}.{0=conv,1=bn}``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn

from .layers import batch_norm2d, conv2d, upsample_bilinear


def decoder_stage(in_channels: int, out_channels: int, upsample: bool) -> nn.Sequential:
    return nn.Sequential(
        conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        batch_norm2d(out_channels),
        nn.ReLU(),
        upsample_bilinear(2) if upsample else nn.Identity(),
    )


class AsymmetricDecoder(nn.Module):
    def __init__(
        self,
        in_channels: int = 256,
        out_channels: int = 128,
        in_strides: Sequence[int] = (4, 8, 16, 32),
        out_stride: int = 4,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        for stride in in_strides:
            num_upsample = int(math.log2(stride)) - int(math.log2(out_stride))
            num_stages = max(num_upsample, 1)
            self.blocks.append(
                nn.Sequential(
                    *[
                        decoder_stage(in_channels if j == 0 else out_channels, out_channels, num_upsample > 0)
                        for j in range(num_stages)
                    ]
                )
            )

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        outputs = [block(feature) for block, feature in zip(self.blocks, features)]
        # Official: sum(...) / 4. regardless of the number of blocks (always 4 here).
        return sum(outputs) / 4.0
