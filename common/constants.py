"""Constants more than one package needs that are facts of neither the dataset nor a checkpoint.

Dataset facts (``IGNORE_INDEX``, ``NUM_CLASSES``, the colour-mask file suffix) live in
:mod:`isaid.palette`; checkpoint facts in :mod:`weights`.
"""

from __future__ import annotations

from typing import Tuple

# Output stride of the ResNet-50 encoder: the models refuse an input whose height or width is
# not a multiple of it (the FPN's top-down additions would not line up), and every command
# pads or checks sizes against it.
SIZE_MULTIPLE = 32

# The two frameworks the project ports between, in the order reports list them.
FRAMEWORKS: Tuple[str, str] = ("torch", "paddle")
