import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dataloaders import IGNORE_INDEX, build_dataset, build_loader, dataset_info
from dataloaders.datasets import synthetic
from dataloaders.transforms import (
    PadIfSmaller,
    RandomHorizontalFlip,
    ResizeShorter,
    ToTensorNormalize,
    build_transforms,
    mean_fill,
)
from utils.errors import UserError

SYN = dataset_info("synthetic")


def syn(split="val", *, train=False, crop_size=32, **kwargs):
    return build_dataset("synthetic", split, train=train, crop_size=crop_size, **kwargs)


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_per_seed_and_split():
    a, b = syn(), syn()
    image, mask = a[3]
    for other_image, other_mask in (a[3], b[3]):
        assert torch.equal(image, other_image) and torch.equal(mask, other_mask)
    assert not torch.equal(image, syn(seed=1)[3][0])
    assert not torch.equal(syn("train")[3][0], image)  # another split, another stream


def test_synthetic_shapes_dtypes_and_sizes():
    assert len(syn("train")) == 64 and len(syn("val")) == 16
    assert len(syn(num_samples=10, max_samples=4)) == 4
    image, mask = syn()[0]
    assert image.dtype == torch.float32 and image.shape == (3, 96, 96)  # val: whole image
    assert mask.dtype == torch.int64 and mask.shape == (96, 96)
    image, mask = syn("train", train=True, crop_size=40)[0]
    assert image.shape == (3, 40, 40) and mask.shape == (40, 40)
    image, mask = syn(image_size=(48, 64), resize=24)[0]  # (height, width); shorter side -> 24
    assert image.shape == (3, 24, 32) and mask.shape == (24, 32)


def test_synthetic_content_covers_all_classes_and_is_normalised():
    ds = syn("train", num_samples=8)
    masks = torch.stack([ds[i][1] for i in range(len(ds))])
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    assert set(masks.unique().tolist()) == set(range(SYN.num_classes))
    assert images.mean().abs() < 0.3 and 0.7 < images.std() < 1.3
    assert SYN.num_classes == len(SYN.class_names) == len(SYN.palette)


def test_synthetic_train_augmentation_follows_torch_seed():
    ds = syn("train", train=True, crop_size=48)
    torch.manual_seed(0)
    first = ds[0]
    torch.manual_seed(0)
    again = ds[0]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_inner_blobs_are_surrounded_by_regions():
    # The context class: every inner blob pixel's neighbourhood is a region or the blob itself.
    rng = np.random.default_rng([0, 0, 0])
    for _ in range(4):
        _, mask = synthetic.generate(rng, 96, 96)
        ys, xs = np.nonzero(mask == synthetic.INNER_BLOB)
        for y, x in zip(ys, xs):
            window = mask[y - 1 : y + 2, x - 1 : x + 2]
            assert np.isin(
                window, (synthetic.FLAT_REGION, synthetic.STRIPED_REGION, synthetic.INNER_BLOB)
            ).all()


def test_unknown_names_raise_user_error():
    with pytest.raises(UserError, match="nope"):
        dataset_info("nope")
    with pytest.raises(UserError, match="nope"):
        build_dataset("nope", "train", train=True, crop_size=32)
    with pytest.raises(UserError, match="dev"):
        syn("dev")


# ---------------------------------------------------------------- transforms


def pil_pair(image: np.ndarray, mask: np.ndarray):
    return Image.fromarray(image.astype(np.uint8), "RGB"), Image.fromarray(
        mask.astype(np.uint8), "L"
    )


def test_pad_fills_ignore_in_mask_and_mean_in_image():
    image, mask = pil_pair(np.full((6, 10, 3), 200), np.ones((6, 10)))  # height 6, width 10
    image, mask = PadIfSmaller(8, fill=mean_fill(SYN.mean))(image, mask)
    x, y = ToTensorNormalize(SYN.mean, SYN.std)(image, mask)
    assert x.shape == (3, 8, 10) and y.shape == (8, 10)
    assert (y[6:] == IGNORE_INDEX).all() and (y[:6] == 1).all()
    assert torch.allclose(x[:, 6:], torch.zeros(3, 2, 10), atol=1e-6)  # the mean colour is 0


def test_flip_moves_image_and_mask_together():
    image = np.zeros((2, 3, 3))
    image[..., 0] = [[10, 20, 30], [40, 50, 60]]
    mask = np.array([[1, 2, 3], [4, 5, 6]])
    flipped_image, flipped_mask = RandomHorizontalFlip(p=1.0)(*pil_pair(image, mask))
    np.testing.assert_array_equal(np.asarray(flipped_image)[..., 0], [[30, 20, 10], [60, 50, 40]])
    np.testing.assert_array_equal(np.asarray(flipped_mask), [[3, 2, 1], [6, 5, 4]])
    same_image, same_mask = RandomHorizontalFlip(p=0.0)(*pil_pair(image, mask))
    np.testing.assert_array_equal(np.asarray(same_mask), mask)
    # With random flips, image and mask still agree pixel for pixel (red = 10 * label).
    pipeline = build_transforms(SYN.mean, SYN.std, train=True, crop_size=3, scale_range=(1.0, 1.0))
    generator = torch.Generator().manual_seed(0)
    flips = 0
    for _ in range(20):
        out_image, out_mask = pipeline(*pil_pair(image, mask), generator=generator)
        red = out_image[0, :2] * SYN.std[0] + SYN.mean[0]
        assert torch.allclose(red * 255, out_mask[:2].float() * 10, atol=1e-3)
        flips += int(out_mask[0, 0] == 3)
    assert 0 < flips < 20


def test_crop_larger_than_image_is_padded():
    image, mask = pil_pair(np.full((6, 10, 3), 90), np.full((6, 10), 2))
    pipeline = build_transforms(
        SYN.mean, SYN.std, train=True, crop_size=32, scale_range=(1.0, 1.0)
    )
    x, y = pipeline(image, mask, generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 32, 32) and y.shape == (32, 32)
    assert (y == 2).sum() == 60 and (y == IGNORE_INDEX).sum() == 32 * 32 - 60


def test_resize_shorter_uses_nearest_for_masks():
    mask = np.tile(np.array([0, 5]), (20, 20))  # 20 x 40, alternating labels
    image, out_mask = ResizeShorter(7)(*pil_pair(np.zeros((20, 40, 3)), mask))
    assert image.size == (14, 7) and out_mask.size == (14, 7)
    assert set(np.unique(np.asarray(out_mask))) <= {0, 5}


# ---------------------------------------------------------------- camvid (real data)


def test_camvid_counts_sizes_and_labels(camvid_root):
    train = build_dataset("camvid", "train", data_root=str(camvid_root), train=False, crop_size=0)
    val = build_dataset("camvid", "val", data_root=str(camvid_root), train=False, crop_size=0)
    assert len(train) == 367 and len(val) == 101
    assert train.info.num_classes == 11 and train.info.class_names[0] == "Sky"
    found_unlabelled = False
    for i in range(4):
        image, mask = val[i]
        assert image.shape == (3, 360, 480) and image.dtype == torch.float32
        assert mask.shape == (360, 480) and mask.dtype == torch.int64
        assert set(mask.unique().tolist()) <= set(range(11)) | {IGNORE_INDEX}
        raw = np.asarray(Image.open(val.pairs[i][1]))
        assert torch.equal(mask == IGNORE_INDEX, torch.from_numpy(raw == 11))
        found_unlabelled |= bool((raw == 11).any())
    assert found_unlabelled


def test_camvid_train_crop_and_missing_test_split(camvid_root):
    ds = build_dataset(
        "camvid", "train", data_root=str(camvid_root), train=True, crop_size=64, max_samples=3
    )
    assert len(ds) == 3
    image, mask = ds[0]
    assert image.shape == (3, 64, 64) and mask.shape == (64, 64)
    with pytest.raises(UserError, match="test"):  # the shared copy holds no test split on purpose
        build_dataset("camvid", "test", data_root=str(camvid_root), train=False, crop_size=0)


# ---------------------------------------------------------------- camvid (fake data, errors)


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8), mode).save(path)
    return path


def make_camvid(root: Path, split="train", n=2, size=(12, 16), list_file=False):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(n):
        write_png(root / split / f"f{i}.png", rng.integers(0, 256, (*size, 3)))
        write_png(root / f"{split}annot" / f"f{i}.png", rng.integers(0, 12, size))
        lines.append(f"{split}/f{i}.png {split}annot/f{i}.png")
    if list_file:
        (root / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def camvid(root, split="train", **kwargs):
    return build_dataset("camvid", split, data_root=str(root), train=False, crop_size=0, **kwargs)


@pytest.mark.parametrize("list_file", [False, True])
def test_fake_camvid_pairs_maps_unlabelled_and_converts_modes(tmp_path, list_file):
    make_camvid(tmp_path, list_file=list_file)
    write_png(tmp_path / "train" / "f1.png", np.full((12, 16), 77), "L")  # grayscale image
    ds = camvid(tmp_path)
    assert len(ds) == 2
    raw = np.asarray(Image.open(tmp_path / "trainannot" / "f0.png"))
    image, mask = ds[0]
    assert image.shape == (3, 12, 16)
    assert torch.equal(mask == IGNORE_INDEX, torch.from_numpy(raw == 11))
    info = ds.info
    rgb = ds[1][0] * torch.tensor(info.std).view(3, 1, 1) + torch.tensor(info.mean).view(3, 1, 1)
    assert torch.allclose(rgb, torch.full_like(rgb, 77 / 255), atol=1e-5)  # gray became RGB


def test_missing_root_names_it(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        camvid(tmp_path / "nowhere")
    with pytest.raises(UserError, match="--data-root"):
        build_dataset("camvid", "train", train=False, crop_size=0)


def test_missing_split_names_the_folder(tmp_path):
    make_camvid(tmp_path, "train")
    with pytest.raises(UserError, match="val"):
        camvid(tmp_path, "val")


def test_empty_split_names_the_folder_or_list(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "trainannot").mkdir()
    with pytest.raises(UserError, match="empty"):
        camvid(tmp_path)
    (tmp_path / "train.txt").write_text("\n")
    with pytest.raises(UserError, match="train.txt"):
        camvid(tmp_path)


def test_list_entry_missing_and_image_without_annotation(tmp_path):
    make_camvid(tmp_path, list_file=True)
    (tmp_path / "trainannot" / "f1.png").unlink()
    with pytest.raises(UserError, match="f1.png"):
        camvid(tmp_path)
    (tmp_path / "train.txt").unlink()
    with pytest.raises(UserError, match="f1.png"):
        camvid(tmp_path)


def test_truncated_png_names_the_file(tmp_path):
    make_camvid(tmp_path, size=(64, 64))
    path = tmp_path / "train" / "f0.png"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    ds = camvid(tmp_path)  # the header is intact, so the damage shows when decoding
    with pytest.raises(UserError, match="f0.png"):
        ds[0]


def test_garbage_image_names_the_file(tmp_path):
    make_camvid(tmp_path)
    (tmp_path / "train" / "f1.png").write_bytes(b"not a png")
    with pytest.raises(UserError, match="f1.png"):
        camvid(tmp_path)


def test_mask_of_wrong_size_names_the_file(tmp_path):
    make_camvid(tmp_path)
    write_png(tmp_path / "trainannot" / "f1.png", np.zeros((5, 5)))
    with pytest.raises(UserError, match="trainannot/f1.png"):
        camvid(tmp_path)


def test_out_of_range_label_names_the_file(tmp_path):
    make_camvid(tmp_path)
    write_png(tmp_path / "trainannot" / "f1.png", np.full((12, 16), 20))
    ds = camvid(tmp_path)
    ds[0]
    with pytest.raises(UserError, match="trainannot/f1.png"):
        ds[1]


def test_colour_annotation_is_rejected(tmp_path):
    make_camvid(tmp_path)
    write_png(
        tmp_path / "trainannot" / "f0.png", np.random.default_rng(0).integers(0, 11, (12, 16, 3))
    )
    with pytest.raises(UserError, match="colour"):
        camvid(tmp_path)[0]


# ---------------------------------------------------------------- loaders


def first_batch(loader):
    return next(iter(loader))


def test_loader_with_workers_is_seeded():
    ds = syn("train", train=True, crop_size=32, num_samples=12)
    kwargs = dict(
        batch_size=4, shuffle=True, workers=2, device=torch.device("cpu"), drop_last=True
    )
    a = build_loader(ds, seed=7, **kwargs)
    assert a.persistent_workers and not a.pin_memory
    images, masks = first_batch(a)
    assert (
        images.shape == (4, 3, 32, 32)
        and masks.shape == (4, 32, 32)
        and masks.dtype == torch.int64
    )
    again = first_batch(build_loader(ds, seed=7, **kwargs))
    assert torch.equal(images, again[0]) and torch.equal(masks, again[1])
    other = first_batch(build_loader(ds, seed=8, **kwargs))
    assert not torch.equal(images, other[0])


def test_set_epoch_makes_an_epoch_independent_of_history_and_workers():
    # A resumed run starts at epoch 2 with fresh workers; it must see what a long run saw.
    ds = syn("train", train=True, crop_size=32, num_samples=8)
    kwargs = dict(batch_size=4, shuffle=True, device=torch.device("cpu"), drop_last=False, seed=3)
    long_run = build_loader(ds, workers=2, **kwargs)
    for epoch in range(2):
        long_run.set_epoch(epoch)
        epoch_batches = list(long_run)
    long_run.set_epoch(2)
    expected = first_batch(long_run)
    assert not torch.equal(expected[0], epoch_batches[0][0])
    resumed = build_loader(
        syn("train", train=True, crop_size=32, num_samples=8), workers=0, **kwargs
    )
    resumed.set_epoch(2)
    got = first_batch(resumed)
    assert torch.equal(expected[0], got[0]) and torch.equal(expected[1], got[1])


def test_loader_rejects_a_batch_that_cannot_fill():
    with pytest.raises(UserError, match="batch"):
        build_loader(
            syn(num_samples=2),
            batch_size=4,
            shuffle=False,
            workers=0,
            device=torch.device("cpu"),
            drop_last=True,
            seed=0,
        )


@pytest.mark.parametrize("ending, code", [("raise RuntimeError('boom')", 1),
                                          ("raise SystemExit(2)", 2)])
def test_a_run_ending_with_a_worker_iterator_open_exits(tmp_path, ending, code):
    # Workers ignore SIGTERM (a stop signal is the main process's to handle), so
    # multiprocessing's exit handler, which terminates and joins them, used to wait forever
    # after an exception left an iterator open; the process hung instead of exiting.
    script = tmp_path / "crash.py"
    script.write_text(
        "import torch\n"
        "from dataloaders import build_loader\n"
        "data = torch.utils.data.TensorDataset(torch.arange(16.0))\n"
        "loader = build_loader(data, batch_size=2, shuffle=True, workers=1, device='cpu',\n"
        "                      seed=0, drop_last=True)\n"
        "batches = iter(loader)\n"
        "next(batches)\n"
        f"{ending}\n")
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(script)], cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == code, done.stderr[-2000:]
