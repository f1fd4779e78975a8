"""StacchipGeoDataset: TorchGeo's GeoDataset contract over a stacchip index, its samplers,
and one of its trainers fed from an index."""

from typing import ClassVar

import numpy as np
import pyarrow as pa
import pytest

from stacchip_core import Indexer
from stacchip_core.demo.synthetic import band_pattern

S2_ORIGIN = (499980.0, 6400000.0)  # EPSG:32720, 10 m; the S2 scene is 768 px: 3 x 3 chips


@pytest.fixture(scope="module")
def index(synthetic_scenes):
    """The S2 scene (9 chips, EPSG:32720) and the Landsat scene (EPSG:3031)."""
    return pa.concat_tables([Indexer(str(synthetic_scenes[k]), chip_max_nodata=1.0).create_index()
                             for k in ("s2", "landsat")])


@pytest.fixture(scope="module")
def dataset(torchgeo, index):
    from stacchip_core.training.torchgeo import StacchipGeoDataset

    return StacchipGeoDataset(
        index, bands=["blue", "green", "red", "nir"], label_column="cloud_cover_percentage"
    )


def test_index_holds_the_chips_of_one_crs(dataset):
    import pandas as pd

    assert dataset.crs.to_epsg() == 32720 and dataset.res == (10.0, 10.0)
    assert len(dataset) == 9  # the Landsat chips (EPSG:3031) are left out
    x, y, t = dataset.bounds
    assert (x.start, x.stop, y.start, y.stop) == (
        S2_ORIGIN[0],
        S2_ORIGIN[0] + 7680,
        S2_ORIGIN[1] - 7680,
        S2_ORIGIN[1],
    )
    assert t.start == t.stop == pd.Timestamp("2024-03-11 14:11:54")
    assert dataset.index.index.closed == "both"


@pytest.mark.parametrize("i", [0, 4, 8])
def test_a_chip_query_returns_that_chip(dataset, i):
    sample = dataset[dataset.chip_query(i)]
    row = dataset.table.slice(i, 1).to_pylist()[0]
    r0, c0 = row["chip_index_y"] * 256, row["chip_index_x"] * 256
    assert set(sample) == {"image", "bounds", "crs", "label"}
    assert tuple(sample["image"].shape) == (4, 256, 256)
    for b, name in enumerate(["blue", "green", "red", "nir"]):
        np.testing.assert_array_equal(
            sample["image"][b].numpy(), band_pattern(b, 768, 768)[r0 : r0 + 256, c0 : c0 + 256]
        )
    assert sample["label"].item() == pytest.approx(row["cloud_cover_percentage"])


def test_a_query_across_four_chips_is_mosaicked(dataset):
    import pandas as pd

    # 200 x 150 px starting at pixel (col 180, row 220): touches chips (0,0), (1,0), (0,1), (1,1)
    x0, y1 = S2_ORIGIN[0] + 180 * 10, S2_ORIGIN[1] - 220 * 10
    t = pd.Timestamp("2024-03-11 14:11:54")
    sample = dataset[x0:x0 + 2000:10.0, y1 - 1500:y1:10.0, t:t:1]
    assert tuple(sample["image"].shape) == (4, 150, 200)
    np.testing.assert_array_equal(
        sample["image"][2].numpy(), band_pattern(2, 768, 768)[220:370, 180:380]
    )
    rows = {
        (r["chip_index_x"], r["chip_index_y"]): r["cloud_cover_percentage"]
        for r in dataset.table.to_pylist()
    }
    # the label: chip fractions weighted by the pixels each chip gave (rows 220..255 | 256..369)
    w = {(0, 0): 76 * 36, (1, 0): 124 * 36, (0, 1): 76 * 114, (1, 1): 124 * 114}
    assert sample["label"].item() == pytest.approx(
        sum(rows[k] * n for k, n in w.items()) / 30000, rel=1e-6
    )
    with pytest.raises(IndexError):
        dataset[
            x0 : x0 + 10 : 10.0,
            y1 - 10 : y1 : 10.0,
            pd.Timestamp("2020-01-01") : pd.Timestamp("2020-02-01") : 1,
        ]


def test_overlapping_items_fill_each_pixel_from_the_earliest(torchgeo, synthetic_scenes, tmp_path):
    """Two items of different dates overlapping off the chip lattice: each pixel of a query
    comes from the earliest item holding it, and a later chip that the earlier one half
    covers fills only the rest (the masked copy of ``_sample``; no test reached it before)."""
    from datetime import UTC, datetime

    import pandas as pd

    from stacchip_core.demo import synthetic
    from stacchip_core.training.torchgeo import StacchipGeoDataset

    shift = 300  # px east: off the 256 px lattice, the later item's chip 1 spans cols 556..811
    later = synthetic.sentinel2_scene(
        tmp_path, 768, item_id="S2_LATER", when=datetime(2024, 4, 10, 14, 11, 54, tzinfo=UTC),
        origin=(S2_ORIGIN[0] + shift * 10, S2_ORIGIN[1]),
    )
    index = pa.concat_tables([Indexer(str(p), chip_max_nodata=1.0).create_index()
                              for p in (synthetic_scenes["s2"], later)])
    ds = StacchipGeoDataset(index, bands=["blue", "green", "red", "nir"])
    # cols 700..799, rows 100..149 of the first scene: its east edge is col 768
    x0, y1 = S2_ORIGIN[0] + 700 * 10, S2_ORIGIN[1] - 100 * 10
    when = slice(pd.Timestamp("2024-03-01"), pd.Timestamp("2024-05-01"), 1)
    image = ds[x0:x0 + 1000:10.0, y1 - 500:y1:10.0, when]["image"].numpy()
    assert image.shape == (4, 50, 100) and image.dtype == np.float32
    scene = np.stack([band_pattern(b, 768, 768) for b in range(4)])  # either item's pixels
    np.testing.assert_array_equal(image[:, :, :68], scene[:, 100:150, 700:768])  # the earlier
    np.testing.assert_array_equal(image[:, :, 68:], scene[:, 100:150, 768 - shift:800 - shift])


def test_torchgeo_samplers_and_collate(dataset):
    from torch.utils.data import DataLoader
    from torchgeo.datasets import stack_samples
    from torchgeo.samplers import GridGeoSampler, RandomGeoSampler

    grid = GridGeoSampler(dataset, size=256, stride=256)
    assert len(grid) == 9
    batches = list(DataLoader(dataset, sampler=grid, batch_size=3, collate_fn=stack_samples))
    assert [tuple(b["image"].shape) for b in batches] == [(3, 4, 256, 256)] * 3
    seen = np.concatenate([b["image"][:, 0].numpy() for b in batches]).reshape(9, -1)
    full = band_pattern(0, 768, 768)
    expected = sorted(
        full[y * 256 : (y + 1) * 256, x * 256 : (x + 1) * 256].tobytes()
        for y in range(3)
        for x in range(3)
    )
    assert sorted(a.astype(np.uint16).tobytes() for a in seen) == expected
    rand = RandomGeoSampler(dataset, size=64, length=6)
    batch = next(iter(DataLoader(dataset, sampler=rand, batch_size=6, collate_fn=stack_samples)))
    assert tuple(batch["image"].shape) == (6, 4, 64, 64) and (batch["image"] > 0).all()


def test_torchgeo_regression_trainer_fits_on_an_index(dataset, lightning, tmp_path):
    """The documented example: TorchGeo's RegressionTask learns chip cloud fractions."""
    import torch
    from torch.utils.data import DataLoader
    from torchgeo.datasets import stack_samples
    from torchgeo.samplers import GridGeoSampler, RandomGeoSampler
    from torchgeo.trainers import RegressionTask

    torch.manual_seed(0)
    task = RegressionTask(model="resnet18", weights=None, in_channels=4, num_outputs=1, lr=1e-3)
    loader = DataLoader(dataset, sampler=RandomGeoSampler(dataset, size=64, length=8), batch_size=4,
                        collate_fn=stack_samples)
    trainer = lightning.Trainer(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    val = DataLoader(dataset, sampler=GridGeoSampler(dataset, size=256, stride=256), batch_size=9,
                     collate_fn=stack_samples)
    trainer.fit(task, train_dataloaders=loader, val_dataloaders=val)
    assert trainer.global_step == 3
    assert torch.isfinite(trainer.callback_metrics["train_loss"]) and torch.isfinite(
        trainer.callback_metrics["val_loss"]
    )


# --- batches of queries over HTTP: one pipeline call, each tile fetched once -----------------

RGB = ["red", "green", "blue"]


@pytest.fixture(scope="module")
def http_scene(tmp_path_factory):
    """A 1024 px S2 scene with noise (512 px tiles of ~300 KB: 2 x 2 per band, never within
    the I/O layer's 64 KiB coalescing gap unless adjacent in the file), behind the loopback
    Range server; yields ``(server, index table)``."""
    import json
    import shutil
    from pathlib import Path

    from rangeserver import RangeServer

    from stacchip_core.demo import synthetic

    d = tmp_path_factory.mktemp("http_scene")
    src = synthetic.sentinel2_scene(d, 1024, bands_10m=("blue", "green", "red"), bands_20m=(),
                                    noise=4000)
    item = json.loads(Path(src).read_text())
    root = d / "served"
    root.mkdir()
    for asset in item["assets"].values():
        shutil.copy(asset["href"], root / Path(asset["href"]).name)
        asset["href"] = Path(asset["href"]).name
    (root / "item.json").write_text(json.dumps(item))
    with RangeServer(root) as server:
        table = Indexer(f"{server.url}/item.json", platform="sentinel-2-l2a",
                        stats=False).create_index()
        yield server, table


def _query(col: int, row: int, size: int = 256):
    """The query of ``size`` px from pixel (col, row) of the S2 scene (10 m)."""
    import pandas as pd

    x0, y1 = S2_ORIGIN[0] + col * 10, S2_ORIGIN[1] - row * 10
    t = pd.Timestamp("2024-03-11 14:11:54")
    return slice(x0, x0 + size * 10, 10.0), slice(y1 - size * 10, y1, 10.0), slice(t, t, 1)


def test_a_batch_of_queries_reads_each_tile_once(torchgeo, http_scene):
    """``__getitems__``: the same pixels as one query at a time, from one request per tile
    the batch touches (a tile and a chip shared by queries are fetched once)."""
    from stacchip_core.core.layout import decode
    from stacchip_core.core.tiles import GridSpec, plan
    from stacchip_core.training.torchgeo import StacchipGeoDataset

    server, table = http_scene
    queries = [
        _query(128, 128),  # chips (0,0), (1,0), (0,1), (1,1): all in tile (0,0)
        _query(256, 256),  # chip (1,1) alone, shared with the first query
        _query(600, 700),  # chips (2,2), (3,2), (2,3), (3,3): all in tile (1,1)
    ]
    chips = [(0, 0), (1, 0), (0, 1), (1, 1), (2, 2), (3, 2), (2, 3), (3, 3)]
    lays = decode(table.slice(0, 1).to_pylist()[0]["layouts"])
    grid = GridSpec.from_layouts(lays, 256)
    touched = {(k, t) for k in RGB for x, y in chips for t in plan(lays[k], grid, x, y).tiles}
    assert len(touched) == 6  # tiles (0,0) and (1,1) of three bands

    server.reset()
    batch = StacchipGeoDataset(table, bands=RGB).__getitems__(queries)
    assert server.requests == len(touched)
    tile_bytes = sum(
        int(lays[k].counts[ty * lays[k].tiles_across + tx]) for k, (tx, ty) in touched
    )
    # a tile's range holds GDAL's 4-byte leader and trailer around it
    assert tile_bytes <= server.bytes <= tile_bytes + 8 * len(touched)

    server.reset()
    one_by_one = StacchipGeoDataset(table, bands=RGB)
    singles = [one_by_one[q] for q in queries]
    assert server.requests >= len(touched)
    for q, a, b in zip(queries, batch, singles):
        assert a["bounds"] == q and tuple(a["image"].shape) == (3, 256, 256)
        np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
    # the pixels are the served files' (read whole with rasterio)
    import rasterio

    for b, name in enumerate(RGB):
        with rasterio.open(server.root / f"{name}.tif") as ds:
            full = ds.read(1)
        np.testing.assert_array_equal(batch[0]["image"][b].numpy(), full[128:384, 128:384])
        np.testing.assert_array_equal(batch[2]["image"][b].numpy(), full[700:956, 600:856])


@pytest.mark.parametrize("how", ["batch_sampler", "sampler"])
def test_data_loader_batches_go_through_getitems(torchgeo, http_scene, how):
    """TorchGeo's batch sampler, and a sampler with ``batch_size``: torch's fetcher hands each
    batch's queries to ``__getitems__`` in one call, with the pixels of single queries."""
    import torch
    from torch.utils.data import DataLoader
    from torchgeo.datasets import stack_samples
    from torchgeo.samplers import RandomBatchGeoSampler, RandomGeoSampler

    from stacchip_core.training.torchgeo import StacchipGeoDataset

    class Counted(StacchipGeoDataset):
        calls: ClassVar[list[int]] = []

        def __getitems__(self, queries):
            self.calls.append(len(queries))
            return super().__getitems__(queries)

    _, table = http_scene
    ds = Counted(table, bands=RGB)
    if how == "batch_sampler":
        sampler = RandomBatchGeoSampler(ds, size=100, batch_size=4, length=8)
        loader = DataLoader(ds, batch_sampler=sampler, collate_fn=stack_samples)
    else:
        loader = DataLoader(ds, sampler=RandomGeoSampler(ds, size=100, length=8), batch_size=4,
                            collate_fn=stack_samples)
    batches = list(loader)
    assert Counted.calls == [4, 4]
    assert [tuple(b["image"].shape) for b in batches] == [(4, 3, 100, 100)] * 2
    got = torch.cat([b["image"] for b in batches])
    # each sample carries its query: read them again one at a time
    queries = [q for b in batches for q in b["bounds"]]
    expected = torch.stack([StacchipGeoDataset(table, bands=RGB)[q]["image"] for q in queries])
    np.testing.assert_array_equal(got.numpy(), expected.numpy())


def test_a_pickled_dataset_reads_the_same(dataset):
    """What a spawned worker gets: the copy rebuilds its lookup and gives the same sample."""
    import pickle

    query = dataset.chip_query(4)
    before = dataset[query]["image"].numpy()
    copy = pickle.loads(pickle.dumps(dataset))
    np.testing.assert_array_equal(copy[query]["image"].numpy(), before)


@pytest.mark.slow  # 4.5 s: the child imports torch and torchgeo
def test_a_spawned_worker_reads_the_same(dataset):
    """A real spawned process: the table and the GeoDataFrame reach it through shared memory
    (training.handoff), and it reads the same pixels."""
    import multiprocessing

    from torch_stack_child import read_query

    query = dataset.chip_query(4)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=read_query, args=(child, dataset, query))
    p.start()
    assert parent.poll(120)  # a child that failed sends nothing
    got = parent.recv()
    p.join(60)
    np.testing.assert_array_equal(got, dataset[query]["image"].numpy())
