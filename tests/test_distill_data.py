"""Multi-crop augmentation and the training stream: probabilities applied as configured, exact reproducibility."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as F

from pipeline.distill.agreement import held_out_tiles
from pipeline.distill.augment import MultiCrop, MultiCropConfig, crop_box
from pipeline.distill.data import TileStream, make_loader
from pipeline.distill.held_out import HeldOutMismatch, HeldOutSplit, check_same_held_out, held_out_period
from storage.slide_writer import SlideWriter
from storage.tile_store import TileStore
from storage.tile_units import TileSource, TileUnit, open_tile_source

TILE = 28
# Every probability off and the crop the whole tile: each test turns on what it measures.
QUIET = dict(
    global_crop_size=TILE,
    global_crops_scale=(1.0, 1.0),
    local_crops_number=1,
    local_crop_size=TILE,
    local_crops_scale=(1.0, 1.0),
    crops_ratio=(1.0, 1.0),
    hflip_p=0.0,
    vflip_p=0.0,
    rot90_p=0.0,
    color_jitter_p=0.0,
    grayscale_p=0.0,
    global_blur_p=(0.0, 0.0),
    local_blur_p=0.0,
)
SMALL = MultiCropConfig(global_crop_size=28, local_crop_size=14, local_crops_number=2)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _write_store(root, slides: dict[str, int], seed: int, tiles_per_shard: int = 8):
    """A tile store of noise tiles, ``slides`` maps slide id to tile count."""
    store = TileStore.create_or_open(root, {"tile_size_px": TILE, "tiles_per_shard": tiles_per_shard})
    rng = np.random.default_rng(seed)
    for slide_id, n_tiles in slides.items():
        writer = SlideWriter(
            store,
            slide_id,
            capacity=n_tiles,
            tile_size_px=TILE,
            tiles_per_shard=tiles_per_shard,
            jpeg_quality=90,
            jpeg_subsampling="444",
        )
        writer.append(rng.integers(0, 256, (n_tiles, TILE, TILE, 3), dtype=np.uint8))
        writer.finish(
            np.zeros((n_tiles, 2), np.int64),
            np.ones(n_tiles, np.float32),
            np.ones((2, 2), np.uint8),
            8.0,
            {"slide_id": slide_id},
        )
    return root


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> list[str]:
    """Two stores, 44 tiles in 7 units of 8, 8, 4, 8, 5 and 8, 3 tiles."""
    folder = tmp_path_factory.mktemp("stores")
    return [
        str(_write_store(folder / "a.zarr", {"slide-a": 20, "slide-b": 13}, seed=0)),
        str(_write_store(folder / "b.zarr", {"slide-c": 11}, seed=1)),
    ]


def _stream(stores, **changes) -> TileStream:
    arguments = dict(seed=0, global_batch=8, rank=0, world=1, transform=MultiCrop(SMALL), piece_tiles=4, window_tiles=8)
    return TileStream(stores, **(arguments | changes))


def _equal(first: dict, second: dict) -> bool:
    return all(torch.equal(first[key], second[key]) for key in ("global_crops", "local_crops", "index"))


# --- augmentation ---------------------------------------------------------------------------------------------

NOISE = torch.from_numpy(np.random.default_rng(7).integers(0, 256, (TILE, TILE, 3), dtype=np.uint8))
CHANGED = lambda crop: not torch.equal(crop, NOISE)  # noqa: E731
GRAY = lambda crop: torch.equal(crop[..., 0], crop[..., 1]) and torch.equal(crop[..., 1], crop[..., 2])  # noqa: E731


def _rates(detect: Callable[[torch.Tensor], bool], draws: int, **settings) -> list[float]:
    """Share of crops where ``detect`` saw the operation: global crop 1, global crop 2, local crops."""
    multicrop = MultiCrop(MultiCropConfig(**(QUIET | settings)))
    seen = np.zeros(3)
    for draw in range(draws):
        crops = multicrop(NOISE, torch.Generator().manual_seed(draw))
        seen += [detect(crops["global_crops"][0]), detect(crops["global_crops"][1]), detect(crops["local_crops"][0])]
    return list(seen / draws)


@pytest.mark.parametrize(
    ("name", "detect"),
    [
        ("hflip_p", lambda crop: torch.equal(crop, NOISE.flip(1))),
        ("vflip_p", lambda crop: torch.equal(crop, NOISE.flip(0))),
        ("rot90_p", CHANGED),
        ("color_jitter_p", CHANGED),
        ("grayscale_p", GRAY),
    ],
)
def test_every_crop_applies_an_operation_with_the_configured_probability(name, detect, monkeypatch):
    jitter = {}
    if name == "color_jitter_p":  # a brightness factor near 1 leaves uint8 pixels as they were: make it visible
        jitter = dict(brightness=0.5, contrast=0.0, saturation=0.0, hue=0.0)
        monkeypatch.setattr(F, "adjust_brightness", lambda image, factor: 255 - image)
    for p in (0.0, 1.0):
        assert _rates(detect, 200, **{name: p}, **jitter) == [p] * 3
    for p in (0.2, 0.8):
        assert np.mean(_rates(detect, 2000, **{name: p}, **jitter)) == pytest.approx(p, abs=0.025)


@pytest.mark.parametrize(
    ("name", "detect", "local"),
    [
        ("global_blur_p", CHANGED, "local_blur_p"),
        ("global_solarize_p", CHANGED, None),
    ],
)
def test_blur_and_solarisation_follow_each_crop_kinds_probability(name, detect, local):
    extra = {"blur_sigma": (1.0, 2.0)}  # a sigma of 0.1 leaves a uint8 image unchanged
    exact = _rates(detect, 200, **{name: (0.0, 1.0)}, **({local: 1.0} if local else {}), **extra)
    assert exact == [0, 1, local is not None]
    first, second, local_rate = _rates(detect, 2000, **{name: (0.2, 0.8)}, **({local: 0.5} if local else {}), **extra)
    assert first == pytest.approx(0.2, abs=0.04) and second == pytest.approx(0.8, abs=0.04)
    assert local_rate == (pytest.approx(0.5, abs=0.04) if local else 0)


def test_rotations_turn_by_one_to_three_quarters_evenly():
    multicrop = MultiCrop(MultiCropConfig(**(QUIET | {"rot90_p": 1.0})))
    turns = [
        next(k for k in range(4) if torch.equal(crop, torch.rot90(NOISE, k, dims=(0, 1))))
        for draw in range(600)
        for crop in multicrop(NOISE, torch.Generator().manual_seed(draw))["global_crops"]
    ]
    assert set(turns) == {1, 2, 3}
    assert all(abs(turns.count(k) / len(turns) - 1 / 3) < 0.04 for k in (1, 2, 3))


def test_crops_depend_on_the_generator_only_and_have_the_configured_shapes():
    multicrop, tile = MultiCrop(MultiCropConfig()), torch.randint(0, 256, (224, 224, 3), dtype=torch.uint8)
    torch.manual_seed(1)
    first = multicrop(tile, torch.Generator().manual_seed(5))
    torch.manual_seed(2)  # the global generator must not matter
    again = multicrop(tile, torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for kind in first for a, b in zip(first[kind], again[kind]))
    assert [c.shape for c in first["global_crops"]] == [(224, 224, 3)] * 2
    assert [c.shape for c in first["local_crops"]] == [(98, 98, 3)] * 8
    assert all(c.dtype == torch.uint8 and c.is_contiguous() for kind in first for c in first[kind])


def test_crop_boxes_keep_the_scale_and_ratio_asked_for():
    generator = torch.Generator().manual_seed(0)
    for _ in range(500):
        top, left, height, width = crop_box(224, 224, (0.05, 0.32), (3 / 4, 4 / 3), generator)
        assert 0 <= top <= 224 - height and 0 <= left <= 224 - width
        assert 0.04 < height * width / 224**2 < 0.33 and 0.7 < width / height < 1.4


# --- stream ---------------------------------------------------------------------------------------------------


def test_batches_have_the_documented_shapes_and_types(stores):
    step, batch = next(iter(_stream(stores, global_batch=6, rank=1, world=2, start_step=2)))
    assert step == 2
    assert batch["global_crops"].shape == (2, 3, 28, 28, 3) and batch["global_crops"].dtype == torch.uint8
    assert batch["local_crops"].shape == (2, 3, 14, 14, 3) and batch["local_crops"].dtype == torch.uint8
    assert batch["index"].tolist() == [15, 16, 17] and batch["index"].dtype == torch.int64
    no_locals = _stream(stores, transform=MultiCrop(SMALL.model_copy(update={"local_crops_number": 0}))).batch(0)
    assert no_locals["local_crops"].shape == (0, 8, 14, 14, 3)


def test_the_seed_alone_decides_the_stream(stores):
    first, again, other = (list(itertools.islice(_stream(stores, seed=seed), 7)) for seed in (0, 0, 1))
    assert all(a[0] == b[0] and _equal(a[1], b[1]) for a, b in zip(first, again))
    assert not any(torch.equal(a[1]["global_crops"], b[1]["global_crops"]) for a, b in zip(first, other))


def test_starting_at_a_step_reads_only_its_tiles_and_gives_the_same_batches(stores, monkeypatch):
    fresh = _stream(stores)
    expected = [fresh.batch(step) for step in (13, 14)]  # pass 2 starts at position 88 = step 11
    read = []
    original = TileSource.read_tiles

    def recording(self, unit, tiles):
        read.extend((unit, tile) for tile in tiles)
        return original(self, unit, tiles)

    monkeypatch.setattr(TileSource, "read_tiles", recording)
    resumed = _stream(stores, start_step=13)
    items = list(itertools.islice(resumed, 2))
    assert [step for step, _ in items] == [13, 14]
    assert all(_equal(batch, want) for (_, batch), want in zip(items, expected))
    needed = [
        (ref.unit, ref.tile)
        for ref in (resumed.tile_at(position) for step in (13, 14) for position in resumed.positions(step))
    ]
    assert sorted(read, key=str) == sorted(needed, key=str)  # those 16 tiles, each once; nothing of steps 0-12


def _counting_reads(monkeypatch) -> list[int]:
    """Patch the shard reader's one read function to record the size of every read."""
    from storage import shard_file

    sizes, original = [], shard_file._read_at

    def counting(file, offset, size):
        data = original(file, offset, size)
        sizes.append(len(data))
        return data

    monkeypatch.setattr(shard_file, "_read_at", counting)
    return sizes


def test_each_loader_worker_of_each_rank_reads_only_the_bytes_of_its_own_steps(tmp_path, monkeypatch):
    """4 ranks x 3 loader workers, windows of 4 global batches (the production ratio): every worker reads its
    own tiles' JPEG bytes and their index entries, within 1.1x of the bytes it uses.
    """
    store = str(_write_store(tmp_path / "s.zarr", {f"slide-{i}": 40 for i in range(6)}, seed=3, tiles_per_shard=16))
    source = open_tile_source(store)
    world, workers, steps = 4, 3, 12
    streams = [
        _stream([store], global_batch=16, rank=rank, world=world, piece_tiles=4, window_tiles=64)
        for rank in range(world)
    ]
    used = {}  # bytes of the tiles each (rank, worker) uses, measured without the stream
    for rank, stream in enumerate(streams):
        for worker in range(workers):
            refs = [stream.tile_at(p) for step in range(worker, steps, workers) for p in stream.positions(step)]
            used[rank, worker] = sum(len(source.read_encoded(ref.unit, ref.tile, 1)[0]) for ref in refs)
    sizes = _counting_reads(monkeypatch)
    for rank, stream in enumerate(streams):
        for worker in range(workers):  # what DataLoader worker ``worker`` of ``workers`` does: its steps only
            read_before = sum(sizes)
            for step in range(worker, steps, workers):
                stream.batch(step)
            read = sum(sizes) - read_before
            assert used[rank, worker] <= read <= 1.1 * used[rank, worker], (rank, worker, read, used[rank, worker])


def test_pieces_of_shards_mix_many_slides_into_each_batch(tmp_path):
    """16 slides of one 32-tile shard each: whole-shard windows give a batch of 16 one or two slides, pieces of
    4 tiles in windows of 64 give it many, and every tile still comes once a pass.
    """
    store = str(
        _write_store(tmp_path / "many.zarr", {f"slide-{i:02d}": 32 for i in range(16)}, seed=2, tiles_per_shard=32)
    )

    def slides_per_batch(**layout) -> list[int]:
        stream = _stream([store], global_batch=16, **layout)
        refs = [[stream.tile_at(p) for p in stream.positions(step)] for step in range(32)]
        assert len({(r.unit, r.tile) for batch in refs for r in batch}) == 512  # a pass: every tile once
        return [len({r.unit.group for r in batch}) for batch in refs]

    assert max(slides_per_batch(piece_tiles=32, window_tiles=32)) == 1
    mixed = slides_per_batch(piece_tiles=4, window_tiles=64)
    assert min(mixed) >= 5 and np.median(mixed) >= 8


def test_two_ranks_together_see_what_one_rank_sees(stores):
    single = _stream(stores, global_batch=8)
    ranks = [_stream(stores, global_batch=8, rank=rank, world=2) for rank in (0, 1)]
    for step in range(7):  # across the end of the first pass (44 tiles)
        whole, halves = single.batch(step), [rank.batch(step) for rank in ranks]
        joined = {key: torch.cat([h[key] for h in halves], dim=1 if key != "index" else 0) for key in whole}
        assert _equal(whole, joined)
    with pytest.raises(ValueError, match="multiple of world"):
        _stream(stores, global_batch=9, world=2)


@pytest.mark.slow
def test_loader_workers_give_the_steps_in_order_as_one_process_does(stores):
    stream = _stream(stores, start_step=3)
    alone = list(itertools.islice(make_loader(stream, 0), 5))
    loader = make_loader(stream, 2)
    with_workers = list(itertools.islice(loader, 5))
    assert [step for step, _ in with_workers] == [3, 4, 5, 6, 7]
    assert all(a[0] == b[0] and _equal(a[1], b[1]) for a, b in zip(alone, with_workers))


def test_every_tile_comes_once_a_pass_with_its_own_pixels(stores):
    stream = _stream(stores, global_batch=4, transform=MultiCrop(MultiCropConfig(**QUIET)))
    sources = stream.sources  # ref.store numbers the stream's stores
    all_tiles = {
        (s, unit, tile) for s, source in enumerate(sources) for unit in source.units() for tile in range(unit.count)
    }
    assert stream.tiles_per_pass == len(all_tiles) == 44
    orders = []
    for first_step in (0, 11):  # passes 0 and 1, 11 steps of 4 each
        seen = []
        for step in range(first_step, first_step + 11):
            batch = stream.batch(step)
            for position, crop in zip(batch["index"].tolist(), batch["global_crops"][0]):
                ref = stream.tile_at(position)
                np.testing.assert_array_equal(crop.numpy(), sources[ref.store].read(ref.unit)[ref.tile])
                seen.append((ref.store, ref.unit, ref.tile))
        assert len(seen) == len(set(seen)) and set(seen) == all_tiles
        orders.append(seen)
    assert orders[0] != orders[1]


def _slide_tile(stream: TileStream, ref) -> tuple[str, str, int]:
    """A tile as (store, slide, index in the slide): what the held-out split is keyed by, but for the path."""
    return str(stream.sources[ref.store].root), ref.unit.group, ref.unit.start + ref.tile


def _every_tile(stores) -> dict[tuple[str, str, int], np.ndarray]:
    found = {}
    for store in stores:
        source = open_tile_source(store)
        for unit in source.units():
            for tile, pixels in enumerate(source.read(unit)):
                found[str(source.root), unit.group, unit.start + tile] = pixels
    return found


@pytest.mark.parametrize("piece_tiles", [1, 4, 64])
def test_held_out_tiles_never_enter_the_stream_and_are_the_ones_the_agreement_reads(stores, piece_tiles):
    """44 tiles in 3 slides and 8 to keep aside: every 6th tile of each slide is held out (one residue class
    of its indices per slide), the others come once a pass with their own pixels, whatever the pieces (with
    1-tile pieces some are all held out), and the agreement reads exactly the held-out ones.
    """
    assert held_out_period(44, 8) == 6 and held_out_period(44, 256) == 4 and held_out_period(44, 0) == 0
    stream = _stream(
        stores, global_batch=1, piece_tiles=piece_tiles, transform=MultiCrop(MultiCropConfig(**QUIET)), held_out_tiles=8
    )
    every_tile = _every_tile(stores)
    seen = []
    for step in range(stream.tiles_per_pass):
        batch = stream.batch(step)
        tile = _slide_tile(stream, stream.tile_at(int(batch["index"][0])))
        np.testing.assert_array_equal(batch["global_crops"][0, 0].numpy(), every_tile[tile])
        seen.append(tile)
    assert len(set(seen)) == len(seen)
    held_out = set(every_tile) - set(seen)
    counts = {"slide-a": 20, "slide-b": 13, "slide-c": 11}
    for slide, count in counts.items():
        indices = sorted(index for _, group, index in held_out if group == slide)
        assert indices == list(range(indices[0], count, 6)) and indices[0] < 6, (slide, indices)
    evaluated = held_out_tiles(stores, 8, TILE)
    assert len(evaluated) == len(held_out) == 44 - stream.tiles_per_pass
    expected = sorted(every_tile[tile].tobytes() for tile in held_out)
    assert sorted(tile.numpy().tobytes() for tile in evaluated) == expected
    assert held_out_tiles(stores, 8, 14).shape == (len(held_out), 14, 14, 3)
    assert len(held_out_tiles(stores, 0, TILE)) == 0


def test_the_held_out_tiles_and_the_stream_do_not_depend_on_the_order_or_place_of_the_stores(stores, tmp_path):
    """The stores given in another order, or one of them moved, give the same held-out tiles and the same
    batches (a resume may list its stores otherwise); each split value holds out another of M disjoint sets.
    """
    moved = tmp_path / "moved.zarr"
    shutil.copytree(stores[1], moved)
    records = [HeldOutSplit.of(order, 8).record() for order in (stores, stores[::-1], [stores[0], str(moved)])]
    check_same_held_out(records[0], records[1], tmp_path)
    check_same_held_out(records[0], records[2], tmp_path)
    assert records[0] == records[1]  # paths too: the stores are taken in one order
    batches = [_stream(order, held_out_tiles=8) for order in (stores, stores[::-1])]
    assert all(_equal(batches[0].batch(step), batches[1].batch(step)) for step in range(6))
    splits = [
        {
            (s["identity"], slide, index)
            for s in HeldOutSplit.of(stores, 8, split).record()["stores"]
            for slide, indices in s["held_out"].items()
            for index in indices
        }
        for split in range(6)
    ]
    assert sum(map(len, splits)) == 44 and len(set().union(*splits)) == 44  # disjoint, and every tile once
    check_same_held_out(records[0], HeldOutSplit.of(stores, 8, 6).record(), tmp_path)  # split 6 is 0 again (M 6)
    with pytest.raises(HeldOutMismatch, match="other stores or other tiles held out"):
        check_same_held_out(records[0], HeldOutSplit.of(stores, 8, 1).record(), tmp_path)


def test_an_aligned_store_holds_out_the_same_grid_positions_in_every_condition(tmp_path):
    """An aligned store's conditions are one grid under several stains: a held-out position is held out in all of
    them (else its twin under another stain would be trained on), whatever the shards.
    """
    units = tuple(
        TileUnit("", (condition, shard), start, count)
        for condition in (0, 1, 2)
        for shard, (start, count) in enumerate([(0, 8), (8, 8), (16, 3)])
    )
    split = HeldOutSplit((TileSource(tmp_path, "aligned"),), (units,), ("identity",), every=5, split=0)
    grid = {
        condition: [u.start + t for u in units if u.position[0] == condition for t in split.held_out_in(0, u)]
        for condition in (0, 1, 2)
    }
    assert grid[0] == grid[1] == grid[2] and grid[0] == list(range(grid[0][0], 19, 5)) and grid[0][0] < 5
    assert split.record()["stores"][0]["held_out"] == {"0": grid[0], "1": grid[1], "2": grid[2]}
