"""Training data out of the index: prechip cubes, band statistics, the data-loader dataset."""

import io
import multiprocessing
from datetime import date

import numpy as np
import pyarrow as pa
import pytest

from stacchip_core import Chipper, Indexer
from stacchip_core.demo.synthetic import band_pattern
from stacchip_core.training.bandstats import Moments, band_stats, moments
from stacchip_core.training.dataset import ChipDataset
from stacchip_core.training.prechip import ChipFilter, plan_cubes, prechip


@pytest.fixture(scope="module")
def index(synthetic_scenes, tmp_path_factory):
    """A merged index of S2 (two items, 18 chips), NAIP (4) and Landsat (4) chips."""
    tables = [
        Indexer(str(synthetic_scenes[k]), chip_max_nodata=1.0).create_index()
        for k in ("s2", "s2pc", "naip", "landsat")
    ]
    path = tmp_path_factory.mktemp("idx") / "merged.parquet"
    import pyarrow.parquet as pq

    pq.write_table(pa.concat_tables(tables), path)
    return str(path)


def cubes_in(folder):
    out = {}
    for path in sorted(folder.rglob("cube_*.npz")):
        with np.load(path) as z:
            out[path.relative_to(folder).as_posix()] = {k: z[k] for k in z.files}
    return out


def test_cubes_hold_exactly_the_chips_they_name(index, tmp_path, synthetic_scenes):
    report = prechip(
        index,
        str(tmp_path),
        cube_size=4,
        spares=1,
        cubes_per_job=10,
        chip_filter=ChipFilter(max_nodata=1.0),
    )
    assert report["failed"] == [] and report["failed_chips"] == []
    cubes = cubes_in(tmp_path)
    # S2: 18 chips in blocks of 5 -> 3 cubes; NAIP and Landsat: 4 chips < 5 -> none
    assert sorted(cubes) == [f"v1/sentinel-2-l2a/cube_00000{k}.npz" for k in range(3)]
    import pyarrow.parquet as pq

    table = pq.read_table(index)
    rows = {r["chipid"]: r for r in table.to_pylist()}
    seen = []
    for cube in cubes.values():
        assert cube["pixels"].shape == (4, 10, 256, 256) and cube["pixels"].dtype == np.float32
        assert list(cube["bands"]) == [
            "blue",
            "green",
            "red",
            "rededge1",
            "rededge2",
            "rededge3",
            "nir",
            "nir08",
            "swir16",
            "swir22",
        ]
        for n, chipid in enumerate(cube["chipids"]):
            row = rows[str(chipid)]
            with Chipper(row["item_href"]) as chipper:  # default assets: canonical band order
                direct = np.concatenate(
                    list(chipper.chip(row["chip_index_x"], row["chip_index_y"]).values())
                )
            np.testing.assert_array_equal(cube["pixels"][n], direct.astype(np.float32))
            seen.append(str(chipid))
        # the S2 synthetic items were acquired 2024-03-11 14:11:54 UTC: ISO week 11
        np.testing.assert_allclose(
            cube["week_norm"][0],
            [np.sin(2 * np.pi * 11 / 52), np.cos(2 * np.pi * 11 / 52)],
            rtol=1e-6,
        )
        hour = 14 + 11 / 60
        np.testing.assert_allclose(
            cube["hour_norm"][0],
            [np.sin(2 * np.pi * hour / 24), np.cos(2 * np.pi * hour / 24)],
            rtol=1e-5,
        )
        lat = np.radians(
            (
                rows[str(cube["chipids"][0])]["bbox"]["ymin"]
                + rows[str(cube["chipids"][0])]["bbox"]["ymax"]
            )
            / 2
        )
        assert cube["lat_norm"][0][0] == pytest.approx(np.sin(lat), abs=1e-4)
    assert len(seen) == len(set(seen)) == 12  # a permutation: no chip twice


def test_permutation_plan_and_job_split(index, tmp_path):
    import pyarrow.parquet as pq

    table = pq.read_table(index)
    plan = plan_cubes(table, cube_size=2, spares=0, seed=7)
    all_rows = np.concatenate([c.rows for c in plan])
    assert len(all_rows) == len(set(all_rows.tolist())) == 18 + 4 + 4  # every chip once
    assert [c.platform for c in plan] == ["landsat-c2l2-sr"] * 2 + ["naip"] * 2 + [
        "sentinel-2-l2a"
    ] * 9
    assert [c.rows.tolist() for c in plan_cubes(table, 2, 0, 7)] == [
        c.rows.tolist() for c in plan
    ]  # seeded
    assert [c.rows.tolist() for c in plan_cubes(table, 2, 0, 8)] != [c.rows.tolist() for c in plan]
    one = tmp_path / "one"
    prechip(
        index,
        str(one),
        cube_size=2,
        spares=0,
        seed=7,
        cubes_per_job=4,
        chip_filter=ChipFilter(max_nodata=1.0),
    )
    split = tmp_path / "split"
    for job in range(2):
        prechip(
            index,
            str(split),
            cube_size=2,
            spares=0,
            seed=7,
            job=job,
            cubes_per_job=2,
            chip_filter=ChipFilter(max_nodata=1.0),
        )
    a, b = cubes_in(one), cubes_in(split)
    assert (
        sorted(a)
        == sorted(b)
        == [
            "v1/landsat-c2l2-sr/cube_000000.npz",
            "v1/landsat-c2l2-sr/cube_000001.npz",
            "v1/naip/cube_000000.npz",
            "v1/naip/cube_000001.npz",
        ]
    )
    for key in a:
        np.testing.assert_array_equal(a[key]["pixels"], b[key]["pixels"])
    # NAIP: one 4-band asset, canonical order red, green, blue, nir
    naip = a["v1/naip/cube_000000.npz"]
    assert list(naip["bands"]) == ["red", "green", "blue", "nir"] and naip["pixels"].shape[1] == 4
    again = prechip(
        index,
        str(one),
        cube_size=2,
        spares=0,
        seed=7,
        cubes_per_job=4,
        chip_filter=ChipFilter(max_nodata=1.0),
    )
    assert again["written"] == [] and len(again["skipped"]) == 4


def test_filters(index):
    import pyarrow.parquet as pq

    table = pq.read_table(index)
    nodata = table["nodata_percentage"].to_numpy()
    assert len(ChipFilter(max_nodata=0.05).apply(table)) == int((nodata <= 0.05).sum())
    assert set(
        ChipFilter(platforms=("naip",), max_nodata=1).apply(table)["platform"].to_pylist()
    ) == {"naip"}
    assert (
        len(ChipFilter(max_nodata=1, start=date(2024, 1, 1)).apply(table)) == 18 + 4
    )  # S2 and Landsat are 2024
    assert len(ChipFilter(max_nodata=1, end=date(2022, 1, 1)).apply(table)) == 4  # NAIP 2021
    cloud = table["cloud_cover_percentage"].to_numpy()
    assert len(ChipFilter(max_nodata=1, max_cloud=0.1).apply(table)) == int((cloud <= 0.1).sum())
    bbox = table["bbox"][0].as_py()
    inside = ChipFilter(
        max_nodata=1, bbox=(bbox["xmin"], bbox["ymin"], bbox["xmin"] + 1e-6, bbox["ymin"] + 1e-6)
    ).apply(table)
    assert 1 <= len(inside) <= 4 and table["chipid"][0].as_py() in inside["chipid"].to_pylist()


def test_a_failing_chip_is_replaced_by_a_spare(index, tmp_path):
    import pyarrow.parquet as pq

    table = pq.read_table(index)
    plan = plan_cubes(table, cube_size=4, spares=1, seed=42)
    victim = plan[0].rows[1]  # second chip of the first S2 cube
    hrefs = table["item_href"].to_pylist()
    hrefs[victim] = str(tmp_path / "gone.json")
    broken = table.set_column(
        table.schema.get_field_index("item_href"), "item_href", pa.array(hrefs)
    )
    # without its layout the chip needs its (gone) item JSON
    lays = broken["layouts"].to_pylist()
    lays[victim] = None
    broken = broken.set_column(
        broken.schema.get_field_index("layouts"), "layouts", pa.array(lays, pa.binary())
    )
    pq.write_table(broken, tmp_path / "broken.parquet")
    report = prechip(
        str(tmp_path / "broken.parquet"),
        str(tmp_path / "out"),
        cube_size=4,
        spares=1,
        cubes_per_job=1,
        chip_filter=ChipFilter(max_nodata=1.0),
    )
    assert (
        len(report["failed_chips"]) == 1
        and table["chipid"][int(victim)].as_py() in report["failed_chips"][0]
    )
    with np.load(tmp_path / "out" / "v1" / "sentinel-2-l2a" / "cube_000000.npz") as cube:
        expected = [table["chipid"][int(r)].as_py() for r in plan[0].rows if r != victim]
        assert (
            list(cube["chipids"]) == expected
        )  # the spare (fifth chip) took the failed one's place


def test_stats_equal_numpy_over_the_same_pixels(index, tmp_path):
    prechip(
        index,
        str(tmp_path),
        cube_size=2,
        spares=0,
        cubes_per_job=20,
        chip_filter=ChipFilter(max_nodata=1.0),
    )
    result = band_stats(str(tmp_path), workers=2)
    assert set(result) == {"landsat-c2l2-sr", "naip", "sentinel-2-l2a"}
    for platform, nodata in (("sentinel-2-l2a", 0), ("naip", None), ("landsat-c2l2-sr", 0)):
        pixels = np.concatenate(
            [np.load(p)["pixels"] for p in sorted((tmp_path / "v1" / platform).glob("*.npz"))]
        )
        for b, (band, s) in enumerate(result[platform].items()):
            values = pixels[:, b].astype(np.float64).ravel()
            if nodata is not None:
                values = values[values != nodata]
            assert s["count"] == values.size
            assert s["mean"] == pytest.approx(values.mean(), rel=1e-12)
            assert s["std"] == pytest.approx(values.std(), rel=1e-9)
    assert result["landsat-c2l2-sr"]["red"]["count"] < 4 * 256 * 256  # fill pixels were left out


def test_moment_merging_is_stable_with_a_large_offset():
    rng = np.random.default_rng(0)
    chunks = [1e9 + rng.normal(0, 1e-3, size=(3, 1, 8, 8)) for _ in range(50)]
    total = Moments(np.zeros(1, np.int64), np.zeros(1), np.zeros(1))
    for c in chunks:
        total = total.merge(moments(c))
    values = np.concatenate([c.ravel() for c in chunks])
    assert total.std[0] == pytest.approx(values.std(), rel=1e-5)  # float64 resolves ~1e-7 at 1e9
    naive = np.sqrt(np.mean(values**2) - np.mean(values) ** 2)  # sum of squares: cancels
    assert abs(naive - values.std()) > 1e-4


def test_dataset_items_and_sampler(index, torch):
    from stacchip_core.training.dataset import PlatformBatchSampler  # re-exported from samplers

    ds = ChipDataset(
        index, bands={"sentinel-2-l2a": ["red", "nir"]}, transform=lambda s: {**s, "seen": True}
    )
    assert len(ds) == 26
    s2 = int(np.flatnonzero(ds.platforms == "sentinel-2-l2a")[0])
    sample = ds[s2]
    assert sample["pixels"].shape == (2, 256, 256) and sample["seen"]
    row = ds.table.slice(s2, 1).to_pylist()[0]
    np.testing.assert_array_equal(
        sample["pixels"][0],
        band_pattern(2, 768, 768)[
            row["chip_index_y"] * 256 : (row["chip_index_y"] + 1) * 256,
            row["chip_index_x"] * 256 : (row["chip_index_x"] + 1) * 256,
        ],
    )
    naip = ds[int(np.flatnonzero(ds.platforms == "naip")[0])]
    assert naip["pixels"].shape == (4, 256, 256)
    sampler = PlatformBatchSampler(ds.platforms, batch_size=4, seed=3)
    batches = list(sampler)
    assert sorted(i for b in batches for i in b) == list(range(26))
    assert all(len(set(ds.platforms[b])) == 1 for b in batches)
    assert batches == list(PlatformBatchSampler(ds.platforms, batch_size=4, seed=3))
    sampler.set_epoch(1)
    assert list(sampler) != batches
    assert (
        len(PlatformBatchSampler(ds.platforms, 4, drop_last=True)) == 4 + 1 + 1
    )  # 18//4, 4//4, 4//4


def test_dataset_indices_count_from_the_end(index):
    ds = ChipDataset(index, bands=["red"])
    ids = ds.table["chipid"].to_pylist()
    assert [s["chipid"] for s in ds.__getitems__([-1, 0])] == [ids[25], ids[0]]


@pytest.mark.parametrize("indices,error", [
    ([0, 26], "index 26 out of range for 26 chips"),
    ([-27, 0], "index -27 out of range for 26 chips"),  # named as given, not as -27 + 26
])
def test_dataset_names_an_index_out_of_range(index, indices, error):
    with pytest.raises(IndexError, match=f"^{error}$"):
        ChipDataset(index, bands=["red"]).__getitems__(indices)


def _read(args):
    ds, i = args
    s = ds[i]
    return s["chipid"], s["pixels"].sum(dtype=np.float64)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_dataset_in_worker_processes_matches_one_process(index, method):
    ds = ChipDataset(index)
    single = [_read((ds, i)) for i in range(len(ds))]
    ds[0]  # open handles in the parent first: forked workers must not reuse them
    with multiprocessing.get_context(method).Pool(2) as pool:
        parallel = pool.map(_read, [(ds, i) for i in range(len(ds))])
    assert parallel == single


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_torch_dataloader_with_two_workers(index, torch, method):
    from stacchip_core.training.samplers import PlatformBatchSampler

    ds = ChipDataset(index, bands=["red", "green", "blue"])
    sampler = PlatformBatchSampler(ds.platforms, batch_size=4, shuffle=False)
    # spawn: the index reaches the workers through shared memory (training.handoff)
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=sampler, num_workers=2, multiprocessing_context=method
    )
    batches = list(loader)
    assert len(batches) == len(sampler)
    single = [ds[i] for b in sampler for i in b]
    got = [(cid, px) for b in batches for cid, px in zip(b["chipid"], b["pixels"])]
    assert [c for c, _ in got] == [s["chipid"] for s in single]
    for (_, px), s in zip(got, single):
        assert torch.equal(px, torch.from_numpy(s["pixels"]))


def _with_freeze_count(sample: dict) -> dict:
    import gc

    return {**sample, "frozen": gc.get_freeze_count()}


@pytest.mark.parametrize("workers", [0, 1])
def test_a_dataloader_worker_freezes_the_heap_it_started_with(index, torch, workers):
    """A forked worker's first batch freezes the objects it inherited (training.workers), so
    the cyclic collector never walks them; the main process (``num_workers=0``) is left as
    it was."""
    import gc

    from stacchip_core.training.samplers import PlatformBatchSampler

    ds = ChipDataset(index, bands=["red"], transform=_with_freeze_count)
    sampler = PlatformBatchSampler(ds.platforms, batch_size=4, shuffle=False)
    before = gc.get_freeze_count()
    loader = torch.utils.data.DataLoader(
        ds, batch_sampler=sampler, num_workers=workers, multiprocessing_context=(
            "fork" if workers else None)
    )
    frozen = torch.cat([b["frozen"] for b in loader])
    assert len(frozen) == len(ds) and gc.get_freeze_count() == before
    if workers:
        assert int(frozen.min()) > 10_000  # torch, pyarrow, numpy...: the whole inherited heap
    else:
        assert frozen.tolist() == [before] * len(ds)


def test_prechip_from_and_to_s3(index, bucket, s3_server, tmp_path):
    import boto3

    client = boto3.client("s3", endpoint_url=s3_server)
    client.upload_file(index, bucket, "index/merged.parquet")
    remote = prechip(
        f"s3://{bucket}/index/merged.parquet",
        f"s3://{bucket}/cubes",
        cube_size=4,
        spares=1,
        cubes_per_job=10,
        chip_filter=ChipFilter(max_nodata=1.0),
    )
    local = prechip(
        index,
        str(tmp_path),
        cube_size=4,
        spares=1,
        cubes_per_job=10,
        chip_filter=ChipFilter(max_nodata=1.0),
    )
    assert [k for k in remote["written"]] == local["written"] and len(local["written"]) == 3
    for key in local["written"]:
        body = client.get_object(Bucket=bucket, Key=f"cubes/{key}")["Body"].read()
        with np.load(io.BytesIO(body)) as a, np.load(tmp_path / key) as b:
            np.testing.assert_array_equal(a["pixels"], b["pixels"])
            assert list(a["chipids"]) == list(b["chipids"])


# --- the batching rule's seeding -------------------------------------------------------------

PLATFORMS = np.array(["s2"] * 40 + ["naip"] * 12 + ["landsat"] * 7, dtype=object)


def _orders(torch, oversample: bool, seed: int, epoch: int) -> list[list[int]]:
    from stacchip_core.training.samplers import PlatformBatchSampler, epoch_batches

    if oversample:
        return [b.tolist() for b in epoch_batches(PLATFORMS, 4, epoch, seed, True, True, 1)]
    sampler = PlatformBatchSampler(PLATFORMS, 4, seed=seed)
    sampler.set_epoch(epoch)
    return list(sampler)


@pytest.mark.parametrize("oversample", [False, True])
def test_seed_and_epoch_pairs_give_their_own_orders(torch, oversample):
    """Seeded with the pair: (seed 0, epoch 1) is not (seed 1, epoch 0), as a seed + epoch
    seed made it; the same pair gives the same batches, and each batch holds one platform."""
    pairs = [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (0, 2)]
    orders = {pair: _orders(torch, oversample, *pair) for pair in pairs}
    assert orders[(0, 1)] != orders[(1, 0)] and orders[(0, 2)] != orders[(2, 0)]
    assert orders[(1, 1)] != orders[(0, 2)] and orders[(1, 1)] != orders[(2, 0)]
    assert len({str(o) for o in orders.values()}) == len(pairs)
    for pair in pairs:
        assert _orders(torch, oversample, *pair) == orders[pair]
    per = 40 if oversample else None
    for order in orders.values():
        assert all(len(set(PLATFORMS[b])) == 1 for b in order)
        rows = [i for b in order for i in b]
        if per is None:
            assert sorted(rows) == list(range(len(PLATFORMS)))
        else:  # every platform up to the largest's 40
            assert sorted(np.unique(PLATFORMS[rows], return_counts=True)[1]) == [per] * 3


def test_data_module_and_sampler_share_one_batching_rule(torch):
    """The data module's epoch batches are PlatformBatchSampler's, from the samplers module;
    the old import paths still give the same objects."""
    from stacchip_core.training import dataset, samplers

    for seed, epoch in [(0, 0), (3, 5)]:
        sampler = samplers.PlatformBatchSampler(PLATFORMS, 5, seed=seed)
        sampler.set_epoch(epoch)
        got = samplers.epoch_batches(PLATFORMS, 5, epoch, seed, True, False, 1)
        assert [b.tolist() for b in got] == list(sampler)
    assert dataset.PlatformBatchSampler is samplers.PlatformBatchSampler


def test_negative_seed_is_one_clear_error(torch):
    from stacchip_core.errors import ConfigError
    from stacchip_core.training.samplers import PlatformBatchSampler

    with pytest.raises(ConfigError, match="seed and epoch must be 0 or more"):
        list(PlatformBatchSampler(PLATFORMS, 4, seed=-1))


def test_the_dataset_module_does_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; import stacchip_core.training.dataset as d; "
        "assert 'torch' not in sys.modules, 'torch imported'; print(d.ChipDataset.__name__)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and r.stdout.strip() == "ChipDataset", r.stderr
