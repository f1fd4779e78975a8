"""Typed errors (issue 15, item 4): each kind of bad input raises its own StacchipError
subclass, chains the low-level cause, and the CLI still prints one line."""

import numpy as np
import pyproj
import pytest
from affine import Affine

import stacchip_core
from stacchip_core import errors
from stacchip_core.errors import StacchipError


def _parse_range(tmp_path):
    from stacchip_core.pipeline.runner import parse_range

    parse_range("5:2")


def _bad_range(tmp_path):
    from stacchip_core.pipeline.runner import parse_range

    parse_range("a:b")


def _bad_job_index(tmp_path, monkeypatch):
    from stacchip_core.pipeline.runner import job_index_from_env

    monkeypatch.setenv("AWS_BATCH_JOB_ARRAY_INDEX", "seven")
    job_index_from_env()


def _no_catalog(tmp_path):
    from stacchip_core.io.catalog import open_catalog

    open_catalog(tmp_path / "missing.ndjson")


def _bad_query(tmp_path):
    from stacchip_core.io.catalog import open_catalog

    (tmp_path / "items.ndjson").write_text("")
    list(
        open_catalog(tmp_path / "items.ndjson")
        .search(query={"eo:cloud_cover": {"like": 3}})
        .items()
    )


def _negative_sample(tmp_path):
    from stacchip_core.pipeline.process import load_sample

    load_sample(None, -1)


def _unreadable_sample(tmp_path):
    from stacchip_core.pipeline.process import load_sample

    (tmp_path / "samples.geojson").write_text("{not json")
    load_sample(tmp_path / "samples.geojson", 0)


def _sample_out_of_range(tmp_path):
    from stacchip_core.pipeline.process import load_sample

    (tmp_path / "samples.geojson").write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {},'
        ' "geometry": {"type": "Point", "coordinates": [1, 2]}}]}')
    load_sample(tmp_path / "samples.geojson", 1)


def _merge_no_name(tmp_path):
    from stacchip_core.pipeline.merge import merge

    merge(tmp_path, "")


def _merge_nothing(tmp_path):
    from stacchip_core.pipeline.merge import merge

    (tmp_path / "in").mkdir()
    merge(tmp_path / "in", tmp_path / "out.parquet")


def _prediction_shape(tmp_path):
    from stacchip_core.training.xarray import ChipGeoref

    ChipGeoref(Affine(10, 0, 0, 0, -10, 0), pyproj.CRS("EPSG:32720"), 256, 256, None).scaled(
        100, 100
    )


def _no_cubes(tmp_path):
    from stacchip_core.training.bandstats import band_stats

    band_stats(tmp_path)


def _cubes_disagree(tmp_path):
    from stacchip_core.training.bandstats import band_stats

    pixels = np.ones((1, 2, 4, 4), dtype="uint16")
    np.savez(tmp_path / "cube_0.npz", platform="p", bands=["red", "nir"], pixels=pixels)
    np.savez(tmp_path / "cube_1.npz", platform="p", bands=["nir", "red"], pixels=pixels)
    band_stats(tmp_path, workers=1)


def _not_an_index(tmp_path):
    from stacchip_core.training.prechip import load_index

    (tmp_path / "index.parquet").write_bytes(b"PAR1 not really")
    load_index(str(tmp_path / "index.parquet"))


def _unknown_platform(tmp_path):
    from stacchip_core.plugins import get_platform

    get_platform("no-such-platform")


# (case, the error it raises, a phrase of its message, the type of the chained cause or None)
def _missing_item(tmp_path):
    from stacchip_core import Indexer

    Indexer(tmp_path / "missing.json")


def _not_an_item(tmp_path):
    from stacchip_core import Indexer

    (tmp_path / "item.json").write_text("{not json")
    Indexer(tmp_path / "item.json")


def _row_without_item(tmp_path):
    from stacchip_core.core.chipper import chip_from_row

    chip_from_row({"chipid": "a-0-0", "chip_index_x": 0, "chip_index_y": 0})


def _unsupported_chip_output(tmp_path):
    from stacchip_core.core.chip import Chip
    from stacchip_core.core.output import write_chip

    chip = Chip(arrays={"red": np.zeros((1, 4, 4), "uint16")}, transform=Affine.identity(),
                crs=pyproj.CRS.from_epsg(32633), item_id="a", x=0, y=0, band_names=("red",))
    write_chip(tmp_path / "chip.jpg", chip)


def _unsupported_store(tmp_path):
    from stacchip_core.io.store import open_store

    open_store("ftp://host/prefix")


CASES = [
    (_parse_range, errors.ConfigError, "'5:2' is empty or negative", None),
    (_bad_range, errors.ConfigError, "'a:b' is not of the form a:b", ValueError),
    (
        _bad_job_index,
        errors.ConfigError,
        "AWS_BATCH_JOB_ARRAY_INDEX='seven' is not a job index",
        ValueError,
    ),
    (_no_catalog, errors.CatalogError, "no STAC API, item folder", None),
    (_bad_query, errors.CatalogError, "operator(s) ['like'] not supported", None),
    (_negative_sample, errors.SampleError, "sample index must be >= 0, got -1", None),
    (_unreadable_sample, errors.SampleError, "cannot read sample source", Exception),
    (_sample_out_of_range, errors.SampleError, "sample 1 is out of range", None),
    (_merge_no_name, errors.OutputError, "merge output '' names no file", None),
    (_merge_nothing, errors.NotFoundError, "no .parquet index files under", None),
    (
        _prediction_shape,
        errors.ShapeError,
        "an output of 100 x 100 px does not fit a chip of 256 x 256 px",
        None,
    ),
    (_no_cubes, errors.NotFoundError, "no cube_*.npz under", None),
    (
        _cubes_disagree,
        errors.CubeError,
        "cubes of p disagree on bands: ['red', 'nir'] vs ['nir', 'red']",
        None,
    ),
    (_not_an_index, errors.IndexFormatError, "is not a readable index", Exception),
    (_unknown_platform, errors.PlatformError, "unknown platform 'no-such-platform'", KeyError),
    (_missing_item, errors.ItemError, "no such item file", FileNotFoundError),
    (_not_an_item, errors.ItemError, "cannot read STAC item", ValueError),
    (_row_without_item, errors.IndexFormatError, "index row 'a-0-0' has no item_href", None),
    (_unsupported_chip_output, errors.OutputError, "unsupported output 'chip.jpg'", None),
    (
        _unsupported_store,
        errors.ConfigError,
        "unsupported store location 'ftp://host/prefix'",
        None,
    ),
]


@pytest.mark.parametrize(
    ("case", "error", "phrase", "cause"), CASES, ids=[c[0].__name__[1:] for c in CASES]
)
def test_each_bad_input_raises_its_typed_error(case, error, phrase, cause, tmp_path, monkeypatch):
    args = (tmp_path, monkeypatch) if case is _bad_job_index else (tmp_path,)
    with pytest.raises(error) as info:
        case(*args)
    assert type(info.value) is error  # the subclass itself, not a sibling or the base
    assert isinstance(info.value, StacchipError)
    assert phrase in str(info.value)
    if cause is None:
        assert info.value.__cause__ is None
    else:  # library code chains the low-level cause (raise ... from exc)
        assert isinstance(info.value.__cause__, cause)


def test_every_error_is_a_documented_stacchip_error_exported_from_the_root():
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, Exception)]
    assert len(classes) >= 15
    for cls in classes:
        assert issubclass(cls, StacchipError), cls
        assert (cls.__doc__ or "").strip(), cls
        assert getattr(stacchip_core, cls.__name__) is cls
        assert cls.__name__ in stacchip_core.__all__


def test_sample_attribute_error_is_a_sample_error_and_a_key_error():
    exc = errors.SampleAttributeError("sample 3 has no attribute 'tile'")
    assert isinstance(exc, errors.SampleError) and isinstance(exc, KeyError)
    assert str(exc) == "sample 3 has no attribute 'tile'"  # not KeyError's quoted repr


def test_cli_prints_one_line_without_the_chained_cause(tmp_path):
    """A chained cause stays out of the CLI's line: no traceback, no 'ValueError', no
    'The above exception was the direct cause'."""
    from conftest import run_script_named

    result = run_script_named("stacchip-naip", env={"AWS_BATCH_JOB_ARRAY_INDEX": "seven",
                                                    "STACCHIP_BUCKET": str(tmp_path)})
    assert result.returncode == 1
    assert (
        result.stderr.splitlines()[-1]
        == "Error: AWS_BATCH_JOB_ARRAY_INDEX='seven' is not a job index"
    )
    assert "Traceback" not in result.stderr and "direct cause" not in result.stderr
    assert "ValueError" not in result.stderr


@pytest.mark.parametrize("location", [
    "https://user:hunter2pw@127.0.0.1:9/samples.geojson?X-Amz-Signature=hunter2sig",
    "s3://no-such-bucket/samples.geojson?X-Amz-Signature=hunter2sig",
])
def test_cli_line_of_a_chained_error_redacts_the_url(tmp_path, location):
    """The cause's text is part of some messages (a sample source that cannot be read): the
    one line shows the URL without its credentials or signature."""
    from conftest import run_script_named

    result = run_script_named("stacchip-naip", env={"AWS_BATCH_JOB_ARRAY_INDEX": "0",
                                                    "STACCHIP_BUCKET": str(tmp_path),
                                                    "STACCHIP_SAMPLE_SOURCE": location,
                                                    "AWS_ENDPOINT_URL": "http://127.0.0.1:9"})
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].startswith("Error: cannot read sample source "), (
        result.stderr
    )
    assert "hunter2" not in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
