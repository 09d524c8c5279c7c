"""The VolF pretraining pool: what goes in, how it is sampled, what it costs, what it refuses."""

import pickle
import tracemalloc
from collections import Counter

import numpy as np
import pytest
from helpers.cached_cases import make_case
from helpers.pretraining import make_image_folder, make_preprocessed_dataset

from volfnet.errors import VolfnetError
from volfnet.training.pretrain_pool import (
    PoolEntry,
    PoolRequest,
    PoolSource,
    VolumePool,
    build_pool,
)


def request(*datasets, **kwargs) -> PoolRequest:
    return PoolRequest(datasets=list(datasets), num_workers=1, progress=False, **kwargs)


def test_pool_lists_training_images_test_images_and_extra_folders_of_two_datasets(roots, tmp_path):
    first = make_preprocessed_dataset(roots, 1, "First", count=3, num_test=2)
    make_preprocessed_dataset(roots, 2, "Second", count=2, seed=1)
    extra = make_image_folder(tmp_path / "unlabelled" / "scans", count=2)
    pool, datasets = build_pool(request("1", "Dataset002_Second", extra_folders=[extra]))
    assert [d.name for d in datasets] == ["Dataset001_First", "Dataset002_Second"]
    assert [(s.name, len(s)) for s in pool.sources] == [
        ("Dataset001_First/imagesTr", 3),
        ("Dataset001_First/imagesTs", 2),
        ("Dataset002_Second/imagesTr", 2),
        ("extra/scans", 2),
    ]
    assert pool.group_names == ["Dataset001_First", "Dataset002_Second", "extra/scans"]
    assert pool.num_volumes == 9
    # imagesTs and extra folders are preprocessed with the first dataset's plans, beside its cache
    assert pool.sources[1].folder == first / "3d_fullres_pretrain_pool" / "imagesTs"
    assert pool.sources[3].folder == first / "3d_fullres_pretrain_pool" / "scans"
    image = pool.volume(PoolEntry(3, 0, 0))
    assert isinstance(image, np.memmap) and image.dtype == np.float32 and image.shape[0] == 1
    assert abs(float(image.mean())) < 1e-3 and abs(float(image.std()) - 1) < 1e-2  # z-scored by the plans
    # Labels are ignored: a training case without its segmentation is still in the pool.
    (first / "3d_fullres" / "case_000_seg.npy").unlink()

    # A rerun skips complete cases (no file is rewritten) and lists the same pool.
    stamp = {p: p.stat().st_mtime_ns for p in (first / "3d_fullres_pretrain_pool").rglob("*.npy")}
    again, _ = build_pool(request("1", "2", extra_folders=[extra]))
    assert [(s.name, s.case_ids) for s in again.sources] == [(s.name, s.case_ids) for s in pool.sources]
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp

    # Without test images, and a folder of the same name from elsewhere gets its own cache.
    other = make_image_folder(tmp_path / "elsewhere" / "scans", count=1, seed=9)
    no_test, _ = build_pool(request("1", extra_folders=[other], include_test_images=False))
    assert [s.name for s in no_test.sources] == ["Dataset001_First/imagesTr", "extra/scans-2"]


def test_weighted_sampling_by_group_and_every_volume_equally_likely_by_default(roots):
    make_preprocessed_dataset(roots, 1, "Big", count=6, shape=(24, 24, 24))
    make_preprocessed_dataset(roots, 2, "Small", count=2, shape=(24, 24, 24), seed=1)
    default, _ = build_pool(request("1", "2"))
    assert default.group_probabilities() == pytest.approx([0.75, 0.25])
    weighted, _ = build_pool(request("1", "2", weights=[1.0, 3.0]))
    assert weighted.group_probabilities() == pytest.approx([0.25, 0.75])
    rng = np.random.default_rng(0)
    counts = Counter(e.source for e in weighted.draw(rng, 4000))
    assert counts[1] / 4000 == pytest.approx(0.75, abs=0.03)
    cases = Counter(e.case for e in weighted.draw(np.random.default_rng(1), 6000) if e.source == 0)
    assert sorted(cases) == list(range(6)) and max(cases.values()) / min(cases.values()) < 1.4
    with pytest.raises(VolfnetError, match="one weight per dataset"):
        build_pool(request("1", "2", weights=[1.0]))
    with pytest.raises(VolfnetError, match="positive sum"):
        build_pool(request("1", "2", weights=[0.0, 0.0]))


def test_multichannel_cases_count_each_channel_as_a_volume(roots):
    make_preprocessed_dataset(roots, 3, "Two", count=2, channels=2, shape=(24, 24, 24))
    pool, _ = build_pool(request("3"))
    assert pool.num_cases == 2 and pool.num_volumes == 4
    assert {(e.case, e.channel) for e in pool.entries()} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert {e.channel for e in pool.draw(np.random.default_rng(0), 50)} == {0, 1}
    assert pool.case_name(PoolEntry(0, 1, 1)) == "Dataset003_Two/imagesTr/case_001[channel 1]"


def test_ten_thousand_volumes_cost_names_only_and_nothing_is_opened_until_sampled(tmp_path):
    ids = tuple(f"ct_{i:05d}" for i in range(10_000))
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    pool = VolumePool([PoolSource("big/imagesTr", tmp_path / "missing", ids, 1, 0)], ["big"])
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert pool.num_volumes == 10_000 and pool.num_open() == 0
    assert grown < 200_000  # the ids already exist; the pool adds bookkeeping, never arrays
    assert len(pickle.dumps(pool)) < 200_000  # what a spawned worker receives: names, about 16 bytes each
    entries = pool.draw(np.random.default_rng(0), 8)  # drawing needs no file either
    assert len({e.case for e in entries}) == 8


def test_only_sampled_cases_are_opened_memory_mapped_and_the_number_open_is_bounded(roots):
    make_preprocessed_dataset(roots, 1, "Few", count=4, shape=(24, 24, 24))
    pool, _ = build_pool(request("1"))
    pool.max_open_volumes = 2
    assert pool.num_open() == 0
    for case in range(4):
        assert isinstance(pool.volume(PoolEntry(0, case, 0)), np.memmap)
    assert pool.num_open() == 2
    assert pickle.loads(pickle.dumps(pool)).num_open() == 0  # workers open their own maps


def test_empty_pool_and_missing_dataset_are_clear_errors(roots, tmp_path):
    folder = roots["preprocessed"] / "Dataset004_Empty"
    make_preprocessed_dataset(roots, 4, "Empty", count=1)
    for path in (folder / "3d_fullres").iterdir():
        path.unlink()
    with pytest.raises(VolfnetError, match="pretraining pool is empty"):
        build_pool(request("4"))
    with pytest.raises(VolfnetError, match="volfnet_plan_and_preprocess -d 7"):
        build_pool(request("7"))
    empty_folder = tmp_path / "nothing"
    empty_folder.mkdir()
    with pytest.raises(VolfnetError, match="no images found"):
        build_pool(request("4", extra_folders=[empty_folder]))


def test_images_with_a_channel_count_the_network_cannot_take(roots, tmp_path):
    make_preprocessed_dataset(roots, 5, "Pairs", count=1, channels=2, shape=(24, 24, 24))
    plain = make_image_folder(tmp_path / "plain", count=1)
    with pytest.raises(VolfnetError, match=r"2 channels per case.*_\{CCCC\}"):
        build_pool(request("5", extra_folders=[plain]))
    one_channel = make_image_folder(tmp_path / "named", count=1, nnunet_names=True)  # only _0000 of two channels
    with pytest.raises(VolfnetError, match="channel count the network cannot take"):
        build_pool(request("5", extra_folders=[one_channel]))
    # A cached case whose array does not have the plans' channel count fails when sampled, naming the file.
    make_preprocessed_dataset(roots, 6, "Broken", count=1, shape=(24, 24, 24))
    cases = roots["preprocessed"] / "Dataset006_Broken" / "3d_fullres"
    make_case(cases, "case_000", np.zeros((3, 24, 24, 24), np.float32), np.zeros((1, 24, 24, 24), np.int8))
    pool, _ = build_pool(request("6"))
    with pytest.raises(VolfnetError, match=r"case_000\.npy: shape \[3, 24, 24, 24\].*channel count"):
        pool.volume(PoolEntry(0, 0, 0))


def test_default_configuration_is_3d_fullres_or_the_only_one_planned():
    from types import SimpleNamespace

    from volfnet.errors import VolfnetError
    from volfnet.training.pretrain_pool import default_configuration

    assert default_configuration(SimpleNamespace(configurations={"3d_fullres": 0, "2d": 0}, dataset_name="D")) == "3d_fullres"
    assert default_configuration(SimpleNamespace(configurations={"2d": 0}, dataset_name="D")) == "2d"  # a dataset of pictures
    with pytest.raises(VolfnetError, match=r"D has no 3d_fullres; choose one of \['2d', '3d_lowres'\] with -c"):
        default_configuration(SimpleNamespace(configurations={"2d": 0, "3d_lowres": 0}, dataset_name="D"))
