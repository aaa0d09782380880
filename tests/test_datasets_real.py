"""Cityscapes, PASCAL VOC (+ SBD), COCO and ADE20K on tiny trees in their download layouts.

Counts, sizes, dtypes and label mapping of each loader; the search A/B split; a one-iteration
search and retrain on each tree; the one-line errors of a broken layout or a missing root.
"""
import csv
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
import train_autodeeplab
from config_utils import search_args, train_args
from dataloaders import IGNORE_INDEX, ROOT_VARIABLES, build_dataset, dataset_info
from dataloaders.datasets import coco
from dataloaders.transforms import ResizeShorter
from engine.genotype_io import save_genotype
from modeling.genotypes import GENOTYPES, Genotype
from tests import fixtures_layouts as layouts
from utils.errors import UserError

MAKERS = {
    "cityscapes": layouts.make_cityscapes,
    "pascal": lambda root: layouts.make_pascal(root, sbd=True),
    "coco": layouts.make_coco,
    "ade20k": layouts.make_ade20k,
}
# (train, val) counts and image (height, width) of each tree.
COUNTS = {"cityscapes": (4, 2), "pascal": (4, 2), "coco": (4, 2), "ade20k": (4, 2)}
SIZES = {"cityscapes": layouts.CITYSCAPES_SIZE}
RUN_FLAGS = ["--epochs", "1", "--max-samples", "4", "--crop-size", "32", "--batch-size", "2",
             "--workers", "0", "--filter-multiplier", "2"]
SEARCH_TINY = ["--num-layers", "3", "--steps", "2", "--block-multiplier", "2",
               "--alpha-epoch", "0"]
RETRAIN_TINY = ["--warmup-iters", "1"]
# Cityscapes is searched at half resolution by default (--resize 512): far too big here.
EXTRA = {"cityscapes": ["--resize", "24"]}


@pytest.fixture(autouse=True)
def one_thread_no_roots(monkeypatch):
    """One thread on the shared cores; no dataset root from the caller's environment."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    for variable in (*ROOT_VARIABLES.values(), "AUTODEEPLAB_SBD"):
        monkeypatch.delenv(variable, raising=False)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    """One tree per dataset, shared by the tests that only read it."""
    base = tmp_path_factory.mktemp("layouts")
    roots = {}
    for name, make in MAKERS.items():
        make(base / name)
        roots[name] = base / name
    return roots


def dataset(name, root, split="train", **kwargs):
    kwargs.setdefault("train", False)
    kwargs.setdefault("crop_size", 32)
    return build_dataset(name, split, data_root=str(root), **kwargs)


# ---------------------------------------------------------------- what each loader gives


@pytest.mark.parametrize("name", sorted(MAKERS))
def test_counts_sizes_dtypes_and_info(trees, name):
    info = dataset_info(name)
    assert info.num_classes == len(info.class_names) == len(info.palette)
    assert len(set(info.palette)) == info.num_classes  # every class its own colour
    height, width = SIZES.get(name, layouts.SIZE)
    for split, count in zip(("train", "val"), COUNTS[name]):
        ds = dataset(name, trees[name], split)
        assert len(ds) == count and ds.info == info
        image, mask = ds[0]
        assert image.dtype == torch.float32 and image.shape == (3, height, width)
        assert mask.dtype == torch.int64 and mask.shape == (height, width)
        values = set(mask.unique().tolist())
        assert values <= set(range(info.num_classes)) | {IGNORE_INDEX}
    assert len(dataset(name, trees[name], max_samples=3)) == 3
    image, mask = dataset(name, trees[name], train=True, crop_size=40)[0]
    assert image.shape == (3, 40, 40) and mask.shape == (40, 40)


def test_cityscapes_label_ids_become_train_ids(trees):
    ds = dataset("cityscapes", trees["cityscapes"])
    for index in range(len(ds)):
        raw = np.asarray(Image.open(ds.pairs[index][1]))
        mask = ds[index][1].numpy()
        assert mask[0, 0] == 0 and mask[0, 1] == IGNORE_INDEX  # labelId 7 road, 0 unlabeled
        for label_id, train_id in ((7, 0), (26, 13), (33, 18), (1, 255), (4, 255), (29, 255)):
            assert (mask[raw == label_id] == train_id).all()
    assert ds.info.class_names[0] == "road" and ds.info.palette[0] == (128, 64, 128)


def test_cityscapes_resize_gives_half_resolution():
    # --resize is the shorter side: the search default 512 halves a 1024 x 2048 frame.
    image = Image.new("RGB", (2048, 1024))
    out_image, out_mask = ResizeShorter(512)(image, Image.new("L", (2048, 1024)))
    assert out_image.size == out_mask.size == (1024, 512)
    assert search_args.DATASET_DEFAULTS["cityscapes"]["resize"] == 512


def test_pascal_keeps_classes_and_border_and_adds_sbd(trees):
    root = trees["pascal"]
    voc = dataset("pascal", root)
    mask = voc[0][1]
    assert (mask[0] == IGNORE_INDEX).all() and mask[1, 0] == 15  # border row, person
    assert voc.info.palette[:3] == ((0, 0, 0), (128, 0, 0), (0, 128, 0))  # VOC colour map
    assert voc.info.palette[15] == (192, 128, 128)
    aug = dataset("pascal", root, use_sbd=True)
    ids = [image.stem for image, _ in aug.pairs]
    # VOC train, then the SBD images that are neither VOC val nor already VOC train.
    assert ids == [*layouts.VOC_TRAIN, *layouts.SBD_NEW]
    assert aug.pairs[-1][1].suffix == ".mat"
    assert aug[len(aug) - 1][1][1, 0] == 20  # from GTcls.Segmentation
    assert len(dataset("pascal", root, "val", use_sbd=True)) == len(layouts.VOC_VAL)


def test_coco_annotations_become_voc_classes_and_are_cached(tmp_path):
    layouts.make_coco(tmp_path)
    ds = dataset("coco", tmp_path)
    kept = [int(Path(str(name)).stem) for name in ds.table.file_names]
    assert kept == [1, 2, 4, 6]  # 3: under 1000 pixels, 5: a truck only (not VOC)
    dog_car, crowd_person, rle_chair, two_part_person = (ds[i][1] for i in range(4))
    assert dog_car[10, 10] == 12 and dog_car[40, 50] == 7  # COCO dog 18 -> 12, car 3 -> 7
    assert dog_car[33, 37] == IGNORE_INDEX  # the two instances overlap
    assert dog_car[2, 60] == 0
    assert crowd_person[20, 20] == 15 and crowd_person[2, 2] == 0  # uncompressed RLE
    assert rle_chair[20, 20] == 9 and rle_chair[45, 60] == 0  # compressed RLE
    assert two_part_person[10, 10] == 15 and two_part_person[40, 50] == 15
    assert len(dataset("coco", tmp_path, "val")) == 2  # val keeps images without objects

    cache = tmp_path / "annotations" / "autodeeplab_masks_train2017.npz"
    assert cache.is_file()
    stamp = cache.stat().st_mtime_ns
    again = dataset("coco", tmp_path)
    assert cache.stat().st_mtime_ns == stamp  # read, not rebuilt
    assert torch.equal(again[0][1], dog_car)
    # A changed JSON (size and mtime) rebuilds it: drop image 6.
    ann_file = tmp_path / "annotations" / "instances_train2017.json"
    document = ann_file.read_text().replace('"file_name": "000000000006.jpg"',
                                            '"file_name": "000000000005.jpg"')
    document = document.replace('"id": 6,', '"id": 66,')
    ann_file.write_text(document)
    assert len(dataset("coco", tmp_path)) == 3
    assert cache.stat().st_mtime_ns != stamp


def test_coco_read_only_annotations_fall_back_to_memory(tmp_path, monkeypatch, caplog):
    layouts.make_coco(tmp_path)

    def refuse(path, write):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(coco, "atomic_write", refuse)
    ds = dataset("coco", tmp_path)
    assert len(ds) == 4 and ds[0][1][10, 10] == 12
    assert "cannot write the COCO mask cache" in caplog.text
    assert not list((tmp_path / "annotations").glob("autodeeplab_masks_*"))
    # --max-samples without a cache computes only what it needs and writes nothing.
    monkeypatch.undo()
    assert len(dataset("coco", tmp_path, max_samples=2)) == 2
    assert not list((tmp_path / "annotations").glob("autodeeplab_masks_*"))


def test_ade20k_other_is_ignored_and_classes_shift(trees):
    ds = dataset("ade20k", trees["ade20k"])
    raw = np.asarray(Image.open(ds.pairs[0][1])).astype(np.int64)
    mask = ds[0][1].numpy()
    assert mask[0, :3].tolist() == [IGNORE_INDEX, 0, 149]
    assert (mask == np.where(raw == 0, IGNORE_INDEX, raw - 1)).all()
    assert ds.info.class_names[0] == "wall" and ds.info.class_names[-1] == "flag"


# ---------------------------------------------------------------- roots and errors


def test_root_from_environment_variable(trees, monkeypatch):
    monkeypatch.setenv("AUTODEEPLAB_ADE20K", str(trees["ade20k"]))
    assert len(build_dataset("ade20k", "val", train=False, crop_size=32)) == 2
    monkeypatch.setenv("AUTODEEPLAB_SBD", str(trees["pascal"] / "benchmark_RELEASE"))
    monkeypatch.setenv("AUTODEEPLAB_PASCAL", str(trees["pascal"] / "VOCdevkit"))
    assert len(build_dataset("pascal", "train", train=False, crop_size=32, use_sbd=True)) == 6


@pytest.mark.parametrize("name", sorted(ROOT_VARIABLES))
def test_missing_root_names_the_flag_and_the_variable(name):
    with pytest.raises(UserError, match=f"--data-root.*{ROOT_VARIABLES[name]}"):
        build_dataset(name, "train", train=False, crop_size=32)


def test_generated_only_arguments_are_ignored_with_one_warning(trees, caplog):
    with caplog.at_level("WARNING"):
        data = build_dataset("ade20k", "val", data_root=str(trees["ade20k"]), train=False,
                             crop_size=32, num_samples=5, image_size=(64, 64))
    assert len(data) == 2  # the files decide, not num_samples
    assert [r.getMessage() for r in caplog.records] == [
        "ade20k ignores num_samples and image_size (they only shape generated datasets)"]


def test_use_sbd_is_refused_for_other_datasets(trees):
    with pytest.raises(UserError, match="--use-sbd"):
        dataset("ade20k", trees["ade20k"], use_sbd=True)


# What to break in each tree, and what the error line must name.
BREAKS = {
    "cityscapes": ("gtFine/train", "gtFine/train"),
    "pascal": ("VOCdevkit/VOC2012/ImageSets/Segmentation/train.txt", "train.txt"),
    "coco": ("annotations/instances_train2017.json", "instances_train2017.json"),
    "ade20k": ("ADEChallengeData2016/annotations/training", "annotations/training"),
    "sbd": ("benchmark_RELEASE/dataset/cls/2009_000100.mat", "2009_000100.mat"),
}


@pytest.mark.parametrize("name", sorted(BREAKS))
def test_broken_layout_ends_in_one_error_line(tmp_path, capsys, name):
    dataset_name = "pascal" if name == "sbd" else name
    root = tmp_path / "data"
    MAKERS[dataset_name](root)
    target, named = BREAKS[name]
    path = root / target
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    argv = ["--dataset", dataset_name, "--data-root", str(root), "--out-dir",
            str(tmp_path / "run"), *RUN_FLAGS, *SEARCH_TINY]
    if name == "sbd":
        argv.append("--use-sbd")
    with pytest.raises(SystemExit) as exit_info:
        train_autodeeplab.main(search_args.get_args_parser().parse_args(argv))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert named in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # found before the run folder is made


def test_damaged_image_is_named_at_build_time(tmp_path):
    layouts.make_ade20k(tmp_path)
    image = next((tmp_path / "ADEChallengeData2016/images/validation").glob("*.jpg"))
    image.write_bytes(b"not a jpeg")
    with pytest.raises(UserError, match=image.name):
        dataset("ade20k", tmp_path, "val")


# ---------------------------------------------------------------- search and retrain runs


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(MAKERS))
def test_one_iteration_search_and_retrain(tmp_path, trees, name):
    root = ["--dataset", name, "--data-root", str(trees[name]), *RUN_FLAGS,
            *EXTRA.get(name, [])]
    search_dir = train_autodeeplab.main(search_args.get_args_parser().parse_args(
        [*root, *SEARCH_TINY, "--out-dir", str(tmp_path / "search")]))
    state = torch.load(search_dir / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert state["model_args"]["num_classes"] == dataset_info(name).num_classes
    # The A/B split: disjoint halves that together cover the (first 4 images of the) train split.
    split = state["split"]
    a, b = set(split["a"].tolist()), set(split["b"].tolist())
    assert split["num_train"] == min(4, COUNTS[name][0])
    assert a.isdisjoint(b) and a | b == set(range(split["num_train"])) and len(a) == len(b)
    rows = list(csv.DictReader(open(search_dir / "metrics.csv")))
    assert len(rows) == 1 and 0.0 <= float(rows[0]["val_miou"]) <= 1.0

    genotype = tmp_path / "genotype.json"
    save_genotype(Genotype((0, 1, 1), GENOTYPES["autodeeplab"].cell), genotype)
    train.main(train_args.get_args_parser().parse_args(
        [*root, *RETRAIN_TINY, "--genotype", str(genotype), "--out-dir",
         str(tmp_path / "retrain")]))
    state = torch.load(tmp_path / "retrain" / "checkpoint.pth.tar", map_location="cpu",
                       weights_only=True)
    assert state["model_args"]["num_classes"] == dataset_info(name).num_classes
    assert os.path.getsize(tmp_path / "retrain" / "metrics.csv") > 0
