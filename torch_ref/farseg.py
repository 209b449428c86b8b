"""FarSeg: "Foreground-Aware Relation Network for Geospatial Object Segmentation in High Spatial
Resolution Remote Sensing Imagery", Zheng et al., CVPR 2020 (official code: Z-Zheng/FarSeg v1.0).

ResNet-50 -> FPN -> foreground-scene relation -> light decoder -> 1x1 classifier -> x4 bilinear.
Training-mode forward with labels returns ``{"cls_loss": ...}`` (annealing softmax focal loss,
step counter in the ``buffer_step`` buffer); eval returns softmax probabilities.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Union

import torch
import torch.nn as nn

from .decoder import AsymmetricDecoder
from .fpn import FPN
from .layers import batch_norm2d, conv2d, upsample_bilinear
from .losses import annealing_softmax_focal_loss
from .resnet import ENCODER_CHANNELS, ResNetEncoder
from .shapes import check_input_size


class SceneRelation(nn.Module):
    """Foreground-scene relation: r_i = sigmoid(<scene_i, content_i>), output r_i * reencoded_i."""

    def __init__(self, scene_channels: int = 2048, channels: int = 256, num_levels: int = 4) -> None:
        super().__init__()
        self.scene_encoder = nn.ModuleList(
            [
                nn.Sequential(conv2d(scene_channels, channels, 1), nn.ReLU(), conv2d(channels, channels, 1))
                for _ in range(num_levels)
            ]
        )
        self.content_encoders = nn.ModuleList(
            [nn.Sequential(conv2d(channels, channels, 1), batch_norm2d(channels), nn.ReLU()) for _ in range(num_levels)]
        )
        self.feature_reencoders = nn.ModuleList(
            [nn.Sequential(conv2d(channels, channels, 1), batch_norm2d(channels), nn.ReLU()) for _ in range(num_levels)]
        )
        self.normalizer = nn.Sigmoid()

    def forward(self, scene: torch.Tensor, features: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        content = [encode(f) for encode, f in zip(self.content_encoders, features)]
        scenes = [encode(scene) for encode in self.scene_encoder]
        relations = [self.normalizer((s * c).sum(dim=1, keepdim=True)) for s, c in zip(scenes, content)]
        reencoded = [encode(f) for encode, f in zip(self.feature_reencoders, features)]
        return [r * p for r, p in zip(relations, reencoded)]


class FarSeg(nn.Module):
    """FarSeg with a ResNet-50 encoder, module for module the official model.

    Its state dict is the official checkpoint's: same keys, shapes and order.

    Paper: `Foreground-Aware Relation Network for Geospatial Object Segmentation in High Spatial
    Resolution Remote Sensing Imagery`, Z. Zheng, Y. Zhong, J. Wang, A. Ma, CVPR 2020
        - https://arxiv.org/abs/2011.09766
    Official code: https://github.com/Z-Zheng/FarSeg (tag v1.0, on Z-Zheng/SimpleCV); what it
    does, in our words: docs/official_models.md, "FarSeg".

    Args:
        num_classes: output classes (iSAID: 16, background included).
    """

    def __init__(self, num_classes: int = 16) -> None:
        super().__init__()
        # First state-dict key; float32 like the official buffer (only its integer value matters).
        self.register_buffer("buffer_step", torch.zeros((), dtype=torch.float32))
        self.en = ResNetEncoder()
        self.fpn = FPN(ENCODER_CHANNELS, 256)
        self.decoder = AsymmetricDecoder(256, 128)
        self.cls_pred_conv = conv2d(128, num_classes, 1)
        self.upsample4x_op = upsample_bilinear(4)
        self.sr = SceneRelation(ENCODER_CHANNELS[-1], 256)
        self.gap = nn.AdaptiveAvgPool2d(1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-softmax class scores [B,C,H,W] at input resolution."""
        check_input_size(x)
        features = self.en(x)
        pyramid = self.fpn(features)
        scene = self.gap(features[-1])  # c5, the backbone output (not p5)
        refined = self.sr(scene, pyramid)
        return self.upsample4x_op(self.cls_pred_conv(self.decoder(refined)))

    def forward(
        self, x: torch.Tensor, y: Optional[Dict[str, torch.Tensor]] = None
    ) -> Union[Dict[str, torch.Tensor], torch.Tensor]:
        """Training mode with labels ``y = {"cls": [B,H,W] int64}`` (255 = ignore): ``{"cls_loss": loss}``,
        ``buffer_step`` counted up first; otherwise class probabilities [B,C,H,W] at input resolution."""
        logits = self.logits(x)
        if self.training and y is not None:
            with torch.no_grad():
                self.buffer_step += 1  # before the loss, as the official code does
            step = float(self.buffer_step.item())
            return {"cls_loss": annealing_softmax_focal_loss(logits, y["cls"], step)}
        return logits.softmax(dim=1)
