"""Decode a search checkpoint into the architecture retraining reads (paper section 3.3).

    python decode_autodeeplab.py --resume RUN/checkpoint.pth.tar [--out-dir DIR]

Writes genotype.json, network_path.npy, network_path_space.npy, genotype.npy and
architecture.png into DIR (default: the checkpoint's folder) and prints a summary.
"""
from __future__ import annotations

import json
from pathlib import Path

from config_utils.decode_args import get_args_parser
from engine.genotype_io import save_genotype_arrays
from engine.search_checkpoint import load_search_architecture
from modeling.decoding import (arch_probabilities, format_summary, genotype_from_probabilities,
                               path_probability, top_k_paths)
from modeling.genotypes import GENOTYPE_JSON
from utils.checkpoint import write_json
from utils.errors import exit_on_user_error

PICTURE = "architecture.png"


@exit_on_user_error
def main(args) -> None:
    arch = load_search_architecture(args.resume, trust=args.trust_checkpoint)
    out_dir = Path(args.out_dir) if args.out_dir else arch.path.parent
    weights, probs = arch_probabilities(arch.alphas, arch.betas, arch.edge_logits)
    genotype = genotype_from_probabilities(weights, probs)
    path_prob = path_probability(probs, genotype.network_path)

    # genotype.json is the contract; the extra "source" entry records where it came from.
    record = genotype.to_json()
    record["path_probability"] = path_prob
    source = {"checkpoint": str(arch.path), "epoch": arch.epoch,
              "global_step": arch.global_step, "model_args": arch.model_args}
    record["source"] = json.loads(json.dumps(source, default=str))  # any odd value as text
    written = [out_dir / GENOTYPE_JSON]
    write_json(record, written[0])
    written += save_genotype_arrays(genotype, out_dir)
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
    print("wrote " + ", ".join(str(path) for path in written))


if __name__ == "__main__":
    main(get_args_parser().parse_args())
