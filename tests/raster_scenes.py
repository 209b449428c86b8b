"""Large georeferenced test scenes, written and read back with rasterio (tests and benchmarks).

Not part of the application: the predict command only needs :mod:`app.raster`. These helpers
build scenes bigger than memory would like (written block by block) and read back the
georeferencing a prediction must keep.
"""

from __future__ import annotations

import warnings
from typing import Dict

import numpy as np

from app.raster import GEOTIFF_BLOCK
from isaid.imageio import atomic_output


def write_geotiff_by_windows(
    path: str, height: int, width: int, fill, crs="EPSG:32633", transform=None, block_rows: int = 512
) -> None:
    """Write a 3-band uint8 GeoTIFF of ``height`` x ``width`` without holding it in memory.

    ``fill(row_start, row_end) -> uint8 [rows, width, 3]`` produces the pixels of each block
    of rows. ``transform`` defaults to a 0.5 m north-up grid at an arbitrary UTM origin. Used
    by the tests and the prediction benchmark to build large georeferenced scenes.
    """
    import rasterio
    import rasterio.windows
    from rasterio.transform import Affine

    if transform is None:
        transform = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4649776.0)
    profile = dict(
        driver="GTiff",
        height=height,
        width=width,
        count=3,
        dtype="uint8",
        crs=crs,
        transform=transform,
        tiled=True,
        blockxsize=GEOTIFF_BLOCK,
        blockysize=GEOTIFF_BLOCK,
        compress="deflate",
        BIGTIFF="IF_SAFER",
        photometric="rgb",
    )
    with atomic_output(path) as temporary:
        with rasterio.open(temporary, "w", **profile) as dataset:
            for row_start in range(0, height, block_rows):
                row_end = min(height, row_start + block_rows)
                pixels = np.asarray(fill(row_start, row_end), dtype=np.uint8)
                window = rasterio.windows.Window(0, row_start, width, row_end - row_start)
                dataset.write(pixels.transpose(2, 0, 1), window=window)


def read_georeference(path: str) -> Dict[str, object]:
    """``{"height", "width", "count", "dtype", "crs", "transform"}`` of a raster (rasterio)."""
    import rasterio

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with rasterio.open(path) as dataset:
            return {
                "height": dataset.height,
                "width": dataset.width,
                "count": dataset.count,
                "dtype": dataset.dtypes[0],
                "crs": dataset.crs,
                "transform": dataset.transform,
                "compress": dataset.compression.value if dataset.compression else None,
                "tiled": dataset.profile.get("tiled", False),
            }


def write_sparse_geotiff(path, side: int) -> None:
    """A ``side`` x ``side`` RGB BigTIFF that declares its whole size but stores only its first
    256x256 tile (sparse, deflate): a few KB on disk, GBs once decoded."""
    import rasterio
    import rasterio.windows

    profile = dict(driver="GTiff", height=side, width=side, count=3, dtype="uint8", tiled=True, compress="deflate")
    with rasterio.open(path, "w", SPARSE_OK="TRUE", BIGTIFF="YES", **profile) as dataset:
        dataset.write(np.zeros((3, 256, 256), dtype=np.uint8), window=rasterio.windows.Window(0, 0, 256, 256))
