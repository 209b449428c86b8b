"""Input checks shared by the models."""

from __future__ import annotations

import paddle

from common.constants import SIZE_MULTIPLE


def check_input_size(x: paddle.Tensor) -> None:
    if x.ndim != 4:
        raise ValueError(f"expected an input of shape [B,3,H,W], got {list(x.shape)}")
    height, width = x.shape[-2:]
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise ValueError(
            f"input height and width must be multiples of {SIZE_MULTIPLE}, got {height}x{width} "
            f"(pad the image bottom/right, as the evaluator does)"
        )
