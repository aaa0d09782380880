"""The README's demo command (`make demo`) end to end: search, decode, retrain, predict."""
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataloaders import dataset_info

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_make_demo_runs_search_decode_retrain_predict(tmp_path):
    demo = tmp_path / "demo"
    search = ("--epochs 2 --alpha-epoch 1 --max-samples 8 --filter-multiplier 2 "
              "--num-layers 4 --steps 2 --block-multiplier 2 --crop-size 32 --batch-size 2")
    retrain = "--iters 4 --eval-interval 2 --filter-multiplier 4 --crop-size 32 --batch-size 2 --max-samples 8"
    # `-o install`: use this interpreter instead of (re)building the virtual environment.
    res = subprocess.run(["make", "-o", "install", "demo", f"PY={sys.executable}",
                          f"DEMO_DIR={demo}", f"SEARCH_FLAGS={search}",
                          f"RETRAIN_FLAGS={retrain}"],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert (demo / "search" / "genotype.json").is_file()
    assert (demo / "search" / "architecture.png").is_file()
    assert (demo / "retrain" / "best.pth.tar").is_file()
    images = sorted((demo / "images").glob("*.png"))
    assert len(images) == 4
    for image in images:
        mask = Image.open(demo / "predictions" / f"{image.stem}_mask.png")
        assert mask.size == Image.open(image).size
        assert np.asarray(mask).max() < dataset_info("planted_context").num_classes
        assert (demo / "predictions" / f"{image.stem}_overlay.png").is_file()
