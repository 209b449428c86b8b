"""The application shell of both frameworks' commands: what ``python -m torch_ref.<cmd>`` and
``python -m paddle_impl.<cmd>`` share beyond the model, written once.

- :mod:`app.config`, :mod:`app.training`: the training recipe (YAML + overrides) and the
  trainers' command line, checkpoint folder and metrics file;
- :mod:`app.evaluation`: the evaluate command (inputs, scene loop, report, JSON, expectation);
- :mod:`app.predict`: the predict command (options, band loop, summary), over
  :mod:`app.raster` (GeoTIFF / PNG input and output by row bands) and :mod:`app.preview`
  (colour rendering with a class legend);
- :mod:`app.cli`: argparse pieces shared by every command;
- :mod:`app.backend`: the protocol each framework's ``backend.BACKEND`` implements, through
  which the commands build, load and run a model without importing a framework;
- :mod:`app.exported`: export folders (``model.yml``, its check against the program's
  convolution shapes, folder replacement) and ONNX exports run by onnxruntime.

Framework-free (numpy, PIL, PyYAML, tqdm; rasterio, onnx and onnxruntime on demand). The dataset facts these
commands rely on are in :mod:`isaid`, the checkpoint facts in :mod:`weights` and
:mod:`convert`; none of them imports this package (docs/architecture.md).
"""
