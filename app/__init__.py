"""The application shell of both frameworks' commands: what ``python -m torch_ref.<cmd>`` and
``python -m paddle_impl.<cmd>`` share beyond the model (training configuration and command line,
the evaluate runner, the large-scene predictor and its raster input/output, shared argparse pieces).

Framework-free (numpy, PIL, PyYAML, rasterio on demand): each framework's ``train.py``,
``evaluate.py``, ``predict.py``, ``export.py`` and ``infer.py`` import from here. The dataset
facts these commands rely on (palette, windows, metrics, image IO) are in :mod:`isaid`, which
imports nothing from this package.
"""
