"""write_samples.py: images of a generated dataset and their labels, to try predict.py on."""
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from dataloaders import dataset_info

REPO = Path(__file__).resolve().parents[1]


def write(*argv):
    return subprocess.run([sys.executable, "write_samples.py", *map(str, argv)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_writes_images_and_labels_of_a_generated_dataset(tmp_path):
    done = write("--dataset", "planted_context", "--out-dir", tmp_path, "--count", "3",
                 "--image-size", "40", "56")
    assert done.returncode == 0, done.stderr
    images = sorted(tmp_path.glob("val_*.png"))
    assert [p.name for p in images] == ["val_000.png", "val_001.png", "val_002.png"]
    assert done.stdout.split() == [str(p) for p in images]
    classes = dataset_info("planted_context").num_classes
    for image in images:
        rgb = np.asarray(Image.open(image))
        label = np.asarray(Image.open(tmp_path / "labels" / image.name))
        assert rgb.shape == (40, 56, 3) and label.shape == (40, 56)
        assert label.max() < classes


def test_a_dataset_with_files_or_no_images_is_one_line(tmp_path):
    for argv, message in ((["--dataset", "camvid"], "camvid is not a generated dataset"),
                          (["--count", "0"], "count must be positive")):
        done = write(*argv, "--out-dir", tmp_path / "out")
        assert done.returncode != 0 and done.stderr.strip().count("\n") == 0
        assert message in done.stderr and not (tmp_path / "out").exists()
