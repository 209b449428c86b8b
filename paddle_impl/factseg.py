"""FactSeg: "Foreground Activation-Driven Small Object Semantic Segmentation in Large-Scale Remote
Sensing Imagery", Ma et al., IEEE TGRS 2021 (official code: Junjue-Wang/FactSeg).

Naming as in the official code: ``fg*`` is the MULTI-CLASS branch, ``bi*`` the binary
foreground-activation branch. Shared ResNet-50, two independent FPNs and decoders.
Training-mode forward with labels returns ``{"joint_loss": ...}``; eval returns the fused
probabilities, normalised per pixel for any batch size (the official fusion is right only for
a batch of one: docs/official_models.md, "FactSeg").
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple, Union

import paddle
import paddle.nn as nn

from .decoder import AsymmetricDecoder
from .fpn import FPN
from .layers import conv2d, upsample_bilinear
from .losses import joint_log_probs, joint_loss
from .resnet import ENCODER_CHANNELS, ResNetEncoder
from .shapes import check_input_size


class FactSeg(nn.Layer):
    """FactSeg with a ResNet-50 encoder, name for name ``torch_ref.FactSeg``.

    Its state dict is the official checkpoint's but for BatchNorm's buffer names.

    Paper: `FactSeg: Foreground Activation-Driven Small Object Semantic Segmentation in Large-Scale
    Remote Sensing Imagery`, A. Ma, J. Wang, Y. Zhong, Z. Zheng, IEEE TGRS 2021.
    Official code: https://github.com/Junjue-Wang/FactSeg (on Z-Zheng/SimpleCV); what it does, in
    our words, and the one deliberate deviation (per-pixel fusion): docs/official_models.md, "FactSeg".

    Args:
        num_classes: classes of the multi-class branch (iSAID: 16, background included).
    """

    def __init__(self, num_classes: int = 16) -> None:
        super().__init__()
        self.resencoder = ResNetEncoder()
        self.fgfpn = FPN(ENCODER_CHANNELS, 256)
        self.bifpn = FPN(ENCODER_CHANNELS, 256)
        self.fg_decoder = AsymmetricDecoder(256, 128)
        self.bi_decoder = AsymmetricDecoder(256, 128)
        self.fg_cls = conv2d(128, num_classes, 1)
        self.bi_cls = conv2d(128, 1, 1)
        self.fg_upsample = upsample_bilinear(4)
        self.bi_upsample = upsample_bilinear(4)

    def logits(self, x: paddle.Tensor) -> Tuple[paddle.Tensor, paddle.Tensor]:
        """(multi-class logits [B,C,H,W], binary logits [B,1,H,W]) at input resolution."""
        check_input_size(x)
        features = self.resencoder(x)
        fg = self.fg_cls(self.fg_decoder(self.fgfpn(features)))
        bi = self.bi_cls(self.bi_decoder(self.bifpn(features)))
        return self.fg_upsample(fg), self.bi_upsample(bi)

    def forward(
        self, x: paddle.Tensor, y: Optional[Dict[str, paddle.Tensor]] = None
    ) -> Union[Dict[str, paddle.Tensor], paddle.Tensor]:
        """Training mode with labels ``y = {"cls": [B,H,W] int64}`` (255 = ignore): ``{"joint_loss": loss}``;
        otherwise the fused class probabilities [B,C,H,W] at input resolution."""
        fg_logits, bi_logits = self.logits(x)
        if self.training and y is not None:
            return {"joint_loss": joint_loss(fg_logits, bi_logits, y["cls"])}
        return joint_log_probs(fg_logits, bi_logits).exp()
