"""--dataset folder: a user's own images and masks, with or without classes.json, class-id or
colour masks, in every stage; each bad input one line naming the file and the fix."""
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataloaders import IGNORE_INDEX, build_dataset, dataset_info
from dataloaders.datasets import folder
from utils.errors import UserError

REPO = Path(__file__).resolve().parents[1]
COLOURS = [[200, 0, 0], [0, 200, 0], [0, 0, 200]]


def make_tree(root: Path, *, counts=None, size=(24, 40), classes=3, colour=False,
              suffix=".jpg", nested=False, seed=0) -> Path:
    """ROOT/images/SPLIT and ROOT/masks/SPLIT with `counts[split]` random pairs; class-id
    masks (some pixels 255), or RGB colour masks with classes.json when `colour`."""
    rng = np.random.default_rng(seed)
    for split, count in (counts or {"train": 4, "val": 2}).items():
        for i in range(count):
            rel = Path(f"sub{i % 2}") / f"img{i}" if nested else Path(f"img{i}")
            image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            ids = rng.integers(0, classes, size).astype(np.uint8)
            ids[0, :4] = IGNORE_INDEX
            ids[1, 0] = classes - 1  # every class present in every mask
            (root / "images" / split / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / "masks" / split / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save((root / "images" / split / rel).with_suffix(suffix))
            if colour:
                rgb = np.zeros((*size, 3), np.uint8)  # ignored pixels stay black
                for c in range(classes):
                    rgb[ids == c] = COLOURS[c]
                Image.fromarray(rgb).save((root / "masks" / split / rel).with_suffix(".png"))
            else:
                Image.fromarray(ids).save((root / "masks" / split / rel).with_suffix(".png"))
    if colour:
        (root / "classes.json").write_text(json.dumps({
            "classes": [{"name": n, "color": c} for n, c in zip(("road", "car", "sky"),
                                                              COLOURS[:classes])],
            "ignore_color": [0, 0, 0]}))
    return root


def build(root, split="train", train=False):
    return build_dataset("folder", split, data_root=str(root), train=train, crop_size=16)


def test_classes_counted_from_the_masks_once_and_cached(tmp_path, caplog):
    root = make_tree(tmp_path, classes=3, nested=True)
    with caplog.at_level(logging.INFO):
        info = dataset_info("folder", str(root))
    assert info.num_classes == 3 and info.class_names == ("class_0", "class_1", "class_2")
    assert len(set(info.palette)) == 3 and "3 classes counted from 4 train masks" in caplog.text
    assert json.loads((root / "masks" / folder.COUNT_CACHE).read_text())["num_classes"] == 3
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert dataset_info("folder", str(root)) == info
    assert "counted" not in caplog.text  # read from the cache
    image, mask = build(root)[0]
    assert image.shape == (3, 24, 40) and mask.shape == (24, 40)
    assert set(mask.unique().tolist()) <= {0, 1, 2, IGNORE_INDEX}
    assert (mask[0, :4] == IGNORE_INDEX).all()


def test_classes_json_names_colours_and_colour_masks(tmp_path):
    root = make_tree(tmp_path, colour=True, suffix=".png")
    info = dataset_info("folder", str(root))
    assert info.class_names == ("road", "car", "sky")
    assert info.palette == tuple(tuple(c) for c in COLOURS)
    ids = make_tree(tmp_path / "ids", colour=False, suffix=".png")  # the same draws as ids
    for (_, colour_mask), (_, id_mask) in zip(build(root), build(ids)):
        assert (colour_mask == id_mask).all()


@pytest.mark.parametrize("damage, message", [
    (lambda r: (r / "masks/train/img1.png").unlink(), "has no mask"),
    (lambda r: (r / "images/train/img1.jpg").unlink(), "has no image"),
    (lambda r: Image.new("L", (7, 5)).save(r / "masks/train/img2.png"), "must match"),
    (lambda r: [p.unlink() for p in (r / "images/val").iterdir()]
     + [p.unlink() for p in (r / "masks/val").iterdir()], "is empty"),
    (lambda r: (r / "classes.json").write_text("{not json"), "fix its JSON"),
    (lambda r: (r / "classes.json").write_text('{"classes": ["a", "a"]}'), "names a class twice"),
    (lambda r: (r / "classes.json").write_text('{"classes": [{"name": "a", "color": [1, 2, 3]},'
                                               ' {"name": "b"}]}'), "some classes only"),
])
def test_bad_layouts_are_one_line_naming_the_file(tmp_path, damage, message):
    root = make_tree(tmp_path)
    damage(root)
    with pytest.raises(UserError, match=message) as err:
        build(root, "val" if message == "is empty" else "train")
    assert "\n" not in str(err.value)


def test_mask_values_outside_the_classes_fail_when_loaded(tmp_path):
    root = make_tree(tmp_path)
    (root / "classes.json").write_text('{"classes": ["a", "b"]}')  # the masks use id 2 too
    with pytest.raises(UserError, match=r"holds ids \[2\], outside the 2 classes"):
        build(root)[0]
    colour = make_tree(tmp_path / "colour", colour=True, suffix=".png")
    spec = json.loads((colour / "classes.json").read_text())
    spec["classes"] = spec["classes"][:2]  # sky's colour unknown now
    (colour / "classes.json").write_text(json.dumps(spec))
    with pytest.raises(UserError, match=r"colours \[\[0, 0, 200\]\]"):
        build(colour)[0]


@pytest.mark.slow
def test_every_stage_runs_on_a_folder_dataset(tmp_path):
    root = make_tree(tmp_path / "data", counts={"train": 8, "val": 2}, size=(48, 64),
                     colour=True, suffix=".png")
    data = ["--dataset", "folder", "--data-root", str(root), "--workers", "0"]
    small = ["--filter-multiplier", "2", "--crop-size", "32", "--batch-size", "2"]

    def cli(*argv):
        done = subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return done

    search = tmp_path / "search"
    cli("train_autodeeplab.py", *data, *small, "--epochs", "2", "--alpha-epoch", "1",
        "--num-layers", "3", "--steps", "2", "--block-multiplier", "2", "--out-dir", search)
    cli("decode_autodeeplab.py", "--resume", search / "checkpoint.pth.tar")
    retrain = tmp_path / "retrain"
    cli("train.py", *data, *small, "--genotype", search / "genotype.json", "--iters", "2",
        "--eval-interval", "2", "--warmup-iters", "1", "--out-dir", retrain)
    cli("train.py", "--resume", retrain / "checkpoint.pth.tar", "--eval-only",
        "--data-root", root)
    cli("predict.py", "--checkpoint", retrain / "checkpoint.pth.tar", "--input",
        root / "images" / "val", "--out-dir", tmp_path / "pred")
    mask = np.asarray(Image.open(tmp_path / "pred" / "img0_mask.png").convert("RGB"))
    assert {tuple(c) for c in mask.reshape(-1, 3)} <= {tuple(c) for c in COLOURS}


def cli_error(capsys, stage, *argv):
    """Run entry point `stage` ("search" or "retrain") in this process; expect exit 2 and
    return the one error line (tests/test_reliability's helpers)."""
    from tests.test_reliability import error_line, retrain, search

    logging.getLogger().handlers.clear()  # an earlier test's, writing to its closed capture
    return error_line(capsys, {"search": search, "retrain": retrain}[stage], *argv)


TINY = {"search": ["--filter-multiplier", "2", "--num-layers", "3", "--steps", "2",
                   "--block-multiplier", "2", "--crop-size", "16", "--batch-size", "2",
                   "--epochs", "1", "--alpha-epoch", "0", "--workers", "0"],
        "retrain": ["--filter-multiplier", "2", "--crop-size", "16", "--batch-size", "2",
                    "--iters", "2", "--warmup-iters", "1", "--workers", "0"]}
# Each bad input of the layout, at the command line: (damage, the file the line names, found
# when the dataset is built (no run folder) or only when the item is loaded).
CLI_DAMAGE = {
    "image without mask": (lambda r: (r / "masks/train/img1.png").unlink(),
                           "images/train/img1.jpg", True),
    "mask without image": (lambda r: (r / "images/train/img1.jpg").unlink(),
                           "masks/train/img1.png", True),
    "mask of another size": (lambda r: Image.new("L", (7, 5)).save(r / "masks/train/img2.png"),
                             "masks/train/img2.png", True),
    "empty split": (lambda r: [p.unlink() for s in ("images", "masks")
                               for p in (r / s / "val").iterdir()], "images/val", True),
    "classes.json not JSON": (lambda r: (r / "classes.json").write_text("{not json"),
                              "classes.json", True),
    "classes.json contradicts the masks": (
        lambda r: (r / "classes.json").write_text('{"classes": ["a", "b"]}'),
        "masks/train/img", False),
}


@pytest.mark.parametrize("stage", ["search", "retrain"])
@pytest.mark.parametrize("problem", list(CLI_DAMAGE))
def test_bad_input_at_the_command_line_is_one_line_exit_2_and_writes_nothing(
        tmp_path, capsys, stage, problem):
    damage, named, at_build = CLI_DAMAGE[problem]
    root = make_tree(tmp_path / "data")
    damage(root)
    extra = ["--genotype", "autodeeplab"] if stage == "retrain" else []
    run = tmp_path / "run"
    line = cli_error(capsys, stage, "--dataset", "folder", "--data-root", root, *TINY[stage],
                     *extra, "--out-dir", run)
    assert str(root / named) in line, line
    if at_build:
        assert not run.exists()
    else:  # met by the first batch: the run folder holds its log, but no checkpoint
        assert not list(run.glob("*.pth.tar"))
