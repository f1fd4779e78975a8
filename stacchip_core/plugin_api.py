"""The public plugin API: everything a source plugin imports, from one module.

A plugin (the six under ``plugins/``, the template ``stacchip plugin new`` writes, a third
party's) imports from here or from the ``stacchip_core`` root and nothing else of
stacchip-core; import-linter checks this for the plugins in this repository
(``tests/test_architecture.py``). The names below are stable: the modules behind them may move.

- declarations: `Platform`, `Band`;
- hook markers: `hookimpl`, `hookimpl_for`;
- statistics: `ChipStats`, `class_mask`, `ClassMask`, `bit_mask`, and the hook arguments' types
  `ChipGrid`, `AssetReader`, `NativeBand`;
- selection and normalization: the `Sample`, `Store` and `Catalog` protocols,
  `copy_assets` (the common normalization: copy the assets, rewrite the hrefs),
  `copy_into`, `fetch`, `scratch_dir`, `asset_href`, `open_store`, `write_cog`,
  `key_segment`, `join_key`, `apply_gdal_options`, `source_s3_endpoint`;
- messages: `redact`, `redact_text`, and the typed errors (`StacchipError` and its subclasses);
- console scripts: `env_job`, a processor configured by environment variables.

This module sits above every layer of the package (it re-exports from all of them), so
nothing inside stacchip-core imports it.
"""

from __future__ import annotations

from stacchip_core.core.chipstats import ChipStats, ClassMask, bit_mask, class_mask
from stacchip_core.core.grid import ChipGrid
from stacchip_core.core.output import write_cog
from stacchip_core.core.raster import AssetReader, NativeBand, asset_href
from stacchip_core.errors import (
    AssetError,
    CatalogError,
    ConfigError,
    GridError,
    ItemError,
    NotFoundError,
    ObjectError,
    PlatformError,
    ProjectionError,
    SampleAttributeError,
    SampleError,
    StacchipError,
    UnsafeKeyError,
)
from stacchip_core.hookspecs import hookimpl, hookimpl_for
from stacchip_core.io.files import scratch_dir
from stacchip_core.io.keys import join as join_key
from stacchip_core.io.keys import segment as key_segment
from stacchip_core.io.settings import apply_gdal_options, source_s3_endpoint
from stacchip_core.io.store import open_store
from stacchip_core.io.urls import redact, redact_text
from stacchip_core.pipeline.ingest import copy_assets, copy_into, fetch
from stacchip_core.platform import Band, Platform
from stacchip_core.types import Catalog, Sample, Store

__all__ = [
    "AssetError", "AssetReader", "Band", "Catalog", "CatalogError", "ChipGrid", "ChipStats",
    "ClassMask", "ConfigError", "GridError", "ItemError", "NativeBand", "NotFoundError",
    "ObjectError", "Platform", "PlatformError", "ProjectionError", "Sample", "SampleAttributeError",
    "SampleError", "StacchipError", "Store", "UnsafeKeyError", "apply_gdal_options",
    "asset_href", "bit_mask", "class_mask", "copy_assets", "copy_into", "env_job", "fetch",
    "hookimpl", "hookimpl_for", "join_key", "key_segment", "open_store", "redact",
    "redact_text", "scratch_dir", "source_s3_endpoint", "write_cog",
]


def env_job(platform: str, sample_vars: tuple[str, ...] = ("STACCHIP_SAMPLE_SOURCE",)) -> None:
    """Run one processing job of ``platform`` configured by environment variables.

    The body of a processor's console script (``stacchip-sentinel-2`` and the like): the job
    number comes from ``AWS_BATCH_JOB_ARRAY_INDEX``, ``JOB_COMPLETION_INDEX`` or
    ``SLURM_ARRAY_TASK_ID``, the target from ``STACCHIP_BUCKET``, the samples from the first
    of ``sample_vars`` that is set, the catalog from ``STACCHIP_STAC_API``. Logs at INFO.

    Args:
        platform: The platform name, as the plugin declares it.
        sample_vars: Environment variables naming the sample source, tried in order.

    Raises:
        SystemExit: With code 1 and one ``Error: ...`` line on stderr when the job fails.
    """
    # the command line module is imported when a script runs, not when the plugin loads
    from stacchip_core.cli import env_job as run

    run(platform, sample_vars)
