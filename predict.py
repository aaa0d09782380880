"""Segment images with a retrained model: colour-coded masks and overlays of the input's size.

    python predict.py --checkpoint RUN/best.pth.tar --input IMG|FOLDER|LIST.txt --out-dir DIR
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from config_utils.predict_args import check_args, get_args_parser
from dataloaders import DatasetInfo, dataset_info
from engine.retrain import image_files, load_model, predict_probs
from utils.amp import amp_context
from utils.checkpoint import atomic_write
from utils.errors import UserError, exit_on_user_error
from utils.latency import describe_device, summarise, timed
from utils.run import select_device, setup_logging

log = logging.getLogger("predict")
OVERLAY_ALPHA = 0.5  # weight of the mask colours over the image


def colourise(labels: np.ndarray, palette) -> Image.Image:
    """A palette ('P' mode) PNG image of class ids, coloured with the dataset's palette."""
    mask = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [c for colour in palette for c in colour]
    mask.putpalette(flat + [0] * (768 - len(flat)))
    return mask


def read_image(file: Path, info: DatasetInfo, device) -> tuple[Image.Image, torch.Tensor]:
    """The image, and its normalised (1, 3, H, W) tensor on `device`."""
    try:
        image = Image.open(file).convert("RGB")
    except OSError as err:
        raise UserError(f"cannot read image {file} ({err})") from err
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)
    return image, ((pixels.permute(2, 0, 1).unsqueeze(0) - mean) / std).to(device)


def speed_report(seconds: list[float], sizes: list[tuple[int, int]], device, warmup: int) -> str:
    """One line: images per second and milliseconds per image (mean, p90) of the timed
    passes, on which device and at which input size."""
    stats = summarise(seconds)
    shapes = sorted(set(sizes))
    size = (f"{shapes[0][0]} x {shapes[0][1]}" if len(shapes) == 1
            else f"{len(shapes)} sizes, {shapes[0][0]} x {shapes[0][1]} to "
                 f"{shapes[-1][0]} x {shapes[-1][1]}")
    return (f"speed on {describe_device(device)}, input {size}: {stats['images_per_s']:.2f} "
            f"images/s, {stats['ms_mean']:.1f} ms per image (mean), {stats['ms_p90']:.1f} ms "
            f"(p90), {len(seconds)} image(s) after {warmup} warm-up pass(es)")


@exit_on_user_error
def main(args):
    check_args(args)
    setup_logging()
    device = select_device(args.device)
    model, checkpoint = load_model(args.checkpoint, device, args.trust_checkpoint)
    # The classes the model was trained with (older checkpoints: those of its dataset's name).
    info = DatasetInfo.from_dict(checkpoint["dataset_info"]) if "dataset_info" in checkpoint \
        else dataset_info(checkpoint["dataset"])
    crop = args.crop_size or checkpoint["args"].get("crop_size")
    autocast, _ = amp_context(args.amp, args.amp_dtype, device)
    files = image_files(args.input)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    def infer(x):
        with torch.inference_mode():
            return predict_probs(model, x, info.num_classes, crop=crop,
                                 scales=tuple(args.scales), flip=args.flip, autocast=autocast)

    seconds, sizes = [], []
    for index, file in enumerate(files):
        image, x = read_image(file, info, device)
        if index == 0:
            for _ in range(args.warmup):
                infer(x)
        probs, elapsed = timed(lambda: infer(x), device)
        seconds.append(elapsed)
        sizes.append(tuple(x.shape[-2:]))
        labels = probs.argmax(1)[0].cpu().numpy()
        mask = colourise(labels, info.palette)
        overlay = Image.blend(image, mask.convert("RGB"), OVERLAY_ALPHA)
        for picture, name in ((mask, "mask"), (overlay, "overlay")):
            atomic_write(out_dir / f"{file.stem}_{name}.png",
                         lambda tmp, picture=picture: picture.save(tmp, format="PNG"))
        log.info("%s -> %s", file, out_dir / f"{file.stem}_mask.png")
    log.info("wrote %d masks and overlays to %s", len(files), out_dir)
    log.info(speed_report(seconds, sizes, device, args.warmup))
    return out_dir


if __name__ == "__main__":
    main(get_args_parser().parse_args())
