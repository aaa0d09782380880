"""Segment images with a retrained model: colour-coded masks and overlays of the input's size.

    python predict.py --checkpoint RUN/best.pth.tar --input IMG|FOLDER|LIST.txt --out-dir DIR
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from dataloaders import DatasetInfo, dataset_info
from engine.retrain import image_files, predict_probs
from modeling.retrain_net import AutoDeepLab
from utils.checkpoint import RETRAIN_KIND, atomic_write, load_checkpoint
from utils.errors import UserError, exit_on_user_error
from utils.run import select_device, setup_logging

log = logging.getLogger("predict")
OVERLAY_ALPHA = 0.5  # weight of the mask colours over the image


def get_args_parser() -> argparse.ArgumentParser:
    """Parser for `predict.py`."""
    p = argparse.ArgumentParser(
        description="Predict segmentation masks with a checkpoint of train.py.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint.pth.tar or best.pth.tar")
    p.add_argument("--input", required=True,
                   help="an image, a folder of images, or a .txt file listing images")
    p.add_argument("--out-dir", required=True, help="folder for <name>_mask.png and "
                                                    "<name>_overlay.png")
    p.add_argument("--crop-size", type=int, default=None,
                   help="sliding-window size for large images (default: the training crop)")
    p.add_argument("--scales", type=float, nargs="+", default=(1.0,),
                   help="image scales whose predictions are averaged")
    p.add_argument("--flip", action="store_true", help="also average flipped predictions")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if "
                                                  "available)")
    p.add_argument("--trust-checkpoint", action="store_true",
                   help="load a checkpoint holding pickled Python objects (it can run code: "
                        "only for files from a source you trust)")
    return p


def load_model(path, device, trust: bool = False) -> tuple[AutoDeepLab, dict]:
    """The model of a retrain checkpoint, rebuilt from the file alone, and the checkpoint
    (`trust` as in `load_checkpoint`)."""
    checkpoint = load_checkpoint(path, kind=RETRAIN_KIND, trust=trust)
    model = AutoDeepLab.from_model_args(checkpoint["model_args"])
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), checkpoint


def colourise(labels: np.ndarray, palette) -> Image.Image:
    """A palette ('P' mode) PNG image of class ids, coloured with the dataset's palette."""
    mask = Image.fromarray(labels.astype(np.uint8), mode="P")
    flat = [c for colour in palette for c in colour]
    mask.putpalette(flat + [0] * (768 - len(flat)))
    return mask


@exit_on_user_error
def main(args):
    setup_logging()
    device = select_device(args.device)
    model, checkpoint = load_model(args.checkpoint, device, args.trust_checkpoint)
    # The classes the model was trained with (older checkpoints: those of its dataset's name).
    info = DatasetInfo.from_dict(checkpoint["dataset_info"]) if "dataset_info" in checkpoint \
        else dataset_info(checkpoint["dataset"])
    crop = args.crop_size or checkpoint["args"].get("crop_size")
    files = image_files(args.input)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mean = torch.tensor(info.mean).view(1, 3, 1, 1)
    std = torch.tensor(info.std).view(1, 3, 1, 1)
    written = []
    for file in files:
        try:
            image = Image.open(file).convert("RGB")
        except OSError as err:
            raise UserError(f"cannot read image {file} ({err})") from err
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
        x = ((pixels.permute(2, 0, 1).unsqueeze(0) - mean) / std).to(device)
        probs = predict_probs(model, x, info.num_classes, crop=crop, scales=tuple(args.scales),
                              flip=args.flip)
        labels = probs.argmax(1)[0].cpu().numpy()
        mask = colourise(labels, info.palette)
        overlay = Image.blend(image, mask.convert("RGB"), OVERLAY_ALPHA)
        for picture, name in ((mask, "mask"), (overlay, "overlay")):
            atomic_write(out_dir / f"{file.stem}_{name}.png",
                         lambda tmp, picture=picture: picture.save(tmp, format="PNG"))
        written.append(file.stem)
        log.info("%s -> %s", file, out_dir / f"{file.stem}_mask.png")
    log.info("wrote %d masks and overlays to %s", len(written), out_dir)
    return out_dir


if __name__ == "__main__":
    main(get_args_parser().parse_args())
