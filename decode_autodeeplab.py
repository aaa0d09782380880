"""Decode a search checkpoint into the architecture retraining reads (paper section 3.3).

    python decode_autodeeplab.py --resume RUN/checkpoint.pth.tar [--out-dir DIR]
    python decode_autodeeplab.py --resume RUN/checkpoint.pth.tar --select perturbation
    python decode_autodeeplab.py --resume RUN/checkpoint.pth.tar --select pruning

Writes genotype.json, network_path.npy, network_path_space.npy, genotype.npy and
architecture.png into DIR (default: the checkpoint's folder) and prints a summary. With
`--select perturbation` the cell is chosen by DARTS-PT's perturbation on the search's
validation images (engine/perturbation.py), whose scores go to perturbation.json; with
`--select pruning` by pruning the supernet on them (engine/pruning.py), whose record goes to
pruning.json. DIR then defaults to the checkpoint's perturbation/ or pruning/ folder, so the
alphas' decode beside the checkpoint is kept.
"""
from __future__ import annotations

import json
from pathlib import Path

from config_utils.decode_args import DEFAULT_SCORE_BATCH, get_args_parser
from engine.genotype_io import save_genotype_arrays
from engine.search_checkpoint import load_search_architecture
from modeling.decoding import (arch_probabilities, format_summary, genotype_from_probabilities,
                               path_probability, top_k_paths)
from modeling.genotypes import GENOTYPE_JSON, Genotype
from utils.checkpoint import write_json
from utils.errors import UserError, exit_on_user_error
from utils.run import select_device

PICTURE = "architecture.png"
SCORING_FLAGS = ("data_root", "max_images", "batch_size", "batch_norm", "device")


@exit_on_user_error
def main(args) -> None:
    scores = pruning = None
    if args.select == "alphas":
        given = [name for name in SCORING_FLAGS if getattr(args, name) is not None]
        if given:
            raise UserError(f"--{given[0].replace('_', '-')} applies only with --select "
                            "perturbation or pruning; drop it, or add --select pruning or "
                            "--select perturbation")
        arch = load_search_architecture(args.resume, trust=args.trust_checkpoint)
    else:
        scoring = dict(device=select_device(args.device), data_root=args.data_root,
                       max_images=args.max_images,
                       batch_size=args.batch_size or DEFAULT_SCORE_BATCH,
                       batch_statistics=args.batch_norm != "running",
                       trust=args.trust_checkpoint)
        if args.select == "perturbation":
            from engine.perturbation import score_search_checkpoint  # loads the data stack

            arch, scores = score_search_checkpoint(args.resume, **scoring)
        else:
            from engine.pruning import prune_search_checkpoint

            arch, pruning, loss_of_cell = prune_search_checkpoint(args.resume, **scoring)
    out_dir = Path(args.out_dir) if args.out_dir else arch.path.parent
    if args.select != "alphas" and not args.out_dir:  # beside the alphas' decode, not over it
        out_dir = out_dir / args.select
    weights, probs = arch_probabilities(arch.alphas, arch.betas, arch.edge_logits)
    genotype = genotype_from_probabilities(weights, probs)
    alpha_cell = genotype.cell
    if scores is not None:
        from engine.perturbation import decode_cell_by_perturbation

        genotype = Genotype(genotype.network_path, decode_cell_by_perturbation(scores))
    if pruning is not None:
        alpha_loss = loss_of_cell(alpha_cell)
        genotype = Genotype(genotype.network_path, pruning.cell)
    path_prob = path_probability(probs, genotype.network_path)

    # genotype.json is the contract; the extra "source" entry records where it came from.
    record = genotype.to_json()
    record["path_probability"] = path_prob
    record["cell_selection"] = args.select
    source = {"checkpoint": str(arch.path), "epoch": arch.epoch,
              "global_step": arch.global_step, "model_args": arch.model_args}
    record["source"] = json.loads(json.dumps(source, default=str))  # any odd value as text
    written = [out_dir / GENOTYPE_JSON]
    write_json(record, written[0])
    written += save_genotype_arrays(genotype, out_dir)
    alpha_record = {"alpha_cell": [[list(pair) for pair in block] for block in alpha_cell],
                    "checkpoint": str(arch.path)}
    if scores is not None:
        written.append(out_dir / "perturbation.json")
        write_json({**scores.to_json(), "cell": genotype.to_json()["cell"], **alpha_record},
                   written[-1])
    if pruning is not None:
        written.append(out_dir / "pruning.json")
        write_json({**pruning.to_json(), "alpha_cell_loss": alpha_loss, **alpha_record},
                   written[-1])
    if args.plot:
        from engine.visualize import plot_architecture  # matplotlib only when drawing

        written.append(out_dir / PICTURE)
        plot_architecture(genotype, probs, written[-1], path_prob=path_prob,
                          title=f"{arch.path} (epoch {arch.epoch})")

    shape = ", ".join(f"{key}={arch.model_args.get(key, '?')}" for key in
                      ("num_layers", "steps", "filter_multiplier", "block_multiplier"))
    print(f"checkpoint {arch.path}: epoch {arch.epoch}, global step {arch.global_step}; "
          f"supernet {shape}")
    print(format_summary(genotype, weights, probs, top_k_paths(probs, args.top_k)))
    if scores is not None:
        from engine.perturbation import format_scores

        print(format_scores(scores, genotype.cell, alpha_cell))
    if pruning is not None:
        from engine.pruning import format_pruning

        print(format_pruning(pruning, alpha_cell, alpha_loss))
    print("wrote " + ", ".join(str(path) for path in written))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
