"""Feature Pyramid Network (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017).

As in the official SimpleCV FPN: 1x1 lateral convs ``fpn_inner{1..4}`` and 3x3 output convs
``fpn_layer{1..4}`` (bias, no norm, no activation), nearest x2 top-down path, init
kaiming-uniform a=1 with zero bias.
"""

from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from .layers import conv2d


class FPN(nn.Module):
    def __init__(self, in_channels_list: Sequence[int], out_channels: int = 256) -> None:
        super().__init__()
        self.num_levels = len(in_channels_list)
        for level, in_channels in enumerate(in_channels_list, start=1):
            # Registration order inner_i, layer_i is the official state-dict order.
            setattr(self, f"fpn_inner{level}", conv2d(in_channels, out_channels, 1, init="kaiming_uniform_a1"))
            setattr(
                self, f"fpn_layer{level}", conv2d(out_channels, out_channels, 3, padding=1, init="kaiming_uniform_a1")
            )

    def forward(self, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        top = self.num_levels
        running = getattr(self, f"fpn_inner{top}")(features[-1])
        outputs = [getattr(self, f"fpn_layer{top}")(running)]
        for level in range(top - 1, 0, -1):
            top_down = F.interpolate(running, scale_factor=2, mode="nearest")
            running = getattr(self, f"fpn_inner{level}")(features[level - 1]) + top_down
            outputs.insert(0, getattr(self, f"fpn_layer{level}")(running))
        return outputs
