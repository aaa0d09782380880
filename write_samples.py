"""Write images of a generated dataset and their labels as PNG files, e.g. to try predict.py on.

    python write_samples.py --dataset planted_context --out-dir DIR [--count 4] [--split val]

Images go to DIR/<split>_NNN.png, their labels (class ids) to DIR/labels/.
"""
from __future__ import annotations

from config_utils.samples_args import get_args_parser
from dataloaders import export_generated
from utils.errors import exit_on_user_error


@exit_on_user_error
def main(args) -> None:
    for path in export_generated(args.dataset, args.out_dir, split=args.split,
                                 count=args.count, seed=args.seed, image_size=args.image_size):
        print(path)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
