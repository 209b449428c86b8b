"""Framework-free iSAID helpers (numpy + PIL): palette and class names, colour-mask decoding,
official sliding windows, IoU maths, image IO. Command-line tools: ``python -m isaid.prepare``
(download -> labels and patches) and ``python -m isaid.synth`` (synthetic scenes).

Importing this package imports numpy and PIL only; ``isaid.prepare`` (tqdm, zipfile) and
``isaid.synth`` are imported on demand. No deep-learning framework is imported anywhere here.
"""

from .imageio import (
    ImageReadError,
    read_index_mask,
    read_mask,
    read_mask_details,
    read_rgb,
    read_size,
    write_png_atomic,
)
from .metrics import confusion_from_labels, format_iou_table, iou_from_confusion, miou
from .palette import (
    CLASS_NAMES,
    IGNORE_INDEX,
    MEAN,
    NUM_CLASSES,
    PALETTE,
    STD,
    colorize,
    decode_color_mask,
    decode_color_mask_official,
    legend_items,
    normalize,
)
from .windows import num_windows, pad_bottom_right, pad_to_multiple, sliding_windows

__all__ = [
    "CLASS_NAMES",
    "IGNORE_INDEX",
    "ImageReadError",
    "MEAN",
    "NUM_CLASSES",
    "PALETTE",
    "STD",
    "colorize",
    "confusion_from_labels",
    "decode_color_mask",
    "decode_color_mask_official",
    "format_iou_table",
    "iou_from_confusion",
    "legend_items",
    "miou",
    "normalize",
    "num_windows",
    "pad_bottom_right",
    "pad_to_multiple",
    "read_index_mask",
    "read_mask",
    "read_mask_details",
    "read_rgb",
    "read_size",
    "sliding_windows",
    "write_png_atomic",
]
