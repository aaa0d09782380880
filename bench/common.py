"""What the multi-run benchmarks (planted.py, camvid.py) share: result rows kept in a CSV that a
series appends to as each run finishes (so an interrupted series continues, on another machine
too), the machine a row was measured on, and the summary of a search checkpoint."""
from __future__ import annotations

import csv
import json
import platform
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from engine.search_checkpoint import load_search_architecture
from modeling.decoding import (arch_probabilities, decode_margins, genotype_from_probabilities,
                               level_distribution, mean_entropies)
from modeling.genotypes import Genotype
from modeling.search_space import NUM_LEVELS
from utils.latency import describe_device


def read_rows(path: Path) -> list[dict]:
    """The rows of a results CSV, as strings; none when it does not exist yet."""
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def append_row(path: Path, row: dict, fields) -> None:
    """Append one row, writing the header first when the file is new. A file written with other
    columns is an error: the series would mix two formats."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    if not new:
        with path.open(newline="") as f:
            header = next(csv.reader(f), [])
        if header != list(fields):
            raise SystemExit(f"error: {path} has other columns ({', '.join(header)}); move it "
                             f"away to start a new series")
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        if new:
            writer.writeheader()
        writer.writerow(row)


def resume_or_start(run_dir: Path, argv: list[str]) -> list[str]:
    """The arguments of an entry script's run in `run_dir`: an interrupted run continues from
    its checkpoint (with its own flags); a new one starts there with `argv`."""
    checkpoint = run_dir / "checkpoint.pth.tar"
    if checkpoint.exists():
        return ["--resume", str(checkpoint)]
    return [*argv, "--out-dir", str(run_dir)]


def machine() -> str:
    """The machine a figure was taken on, as far as the row needs it."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return f"{platform.machine()}, {describe_device(device)}"


def cell_text(genotype: Genotype) -> str:
    return json.dumps([list(map(list, block)) for block in genotype.cell])


def search_summary(checkpoint: Path) -> tuple[Genotype, dict]:
    """The decoded architecture of a search checkpoint, and how far its architecture moved:
    mean entropies against uniform, decode margins, the expected level per layer of a path
    drawn from the betas (`mean_levels`) and the cell's most frequent operation(s)."""
    arch = load_search_architecture(checkpoint)
    weights, probs = arch_probabilities(arch.alphas, arch.betas, arch.edge_logits)
    genotype = genotype_from_probabilities(weights, probs)
    alpha_h, alpha_u, beta_h, beta_u = mean_entropies(weights, probs)
    margins = decode_margins(weights, probs)
    levels = level_distribution(probs) @ np.arange(NUM_LEVELS)
    ops = Counter(op for block in genotype.cell for _, op in block).most_common()
    top = [op for op, n in ops if n == ops[0][1]]  # several when tied
    return genotype, {
        "network_path": " ".join(map(str, genotype.network_path)),
        "cell": cell_text(genotype),
        "mean_levels": " ".join(f"{v:.2f}" for v in levels), "top_operation": "+".join(top),
        "alpha_entropy": round(alpha_h, 5), "alpha_uniform": round(alpha_u, 5),
        "beta_entropy": round(beta_h, 5), "beta_uniform": round(beta_u, 5),
        "path_margin": round(margins["path_margin"], 4),
        "op_gap_mean": round(margins["op_gap_mean"], 5),
        "op_gap_min": round(margins["op_gap_min"], 5)}
