"""The decoded architecture as a small immutable record, and the paper's own (its Fig. 3).

A `Genotype` is the contract between search and retraining: the level of every layer of the
network path and, per cell block, the two `(input_index, operation)` pairs it keeps. Input
indices follow paper section 3: 0 = H(l-2), 1 = H(l-1), k + 1 = block k (1-based).

On disk it lives in two forms, both written by `decode_autodeeplab.py` (the files are read and
written by engine/genotype_io.py; this module only converts):
- `genotype.json` (`to_json` / `from_json`), the one retraining reads;
- the seed's arrays (`to_arrays` / `from_arrays`):
  `network_path.npy` (L,) levels, `network_path_space.npy` (L, 4, 3) one-hot transitions in
  the `probs` convention of `modeling/decoding.py`, and `genotype.npy` (2 * steps, 2) rows of
  `[global edge index, operation index]`, rows 2k and 2k + 1 being block k's two inputs in the
  record's order.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from modeling.operations import NONE_OP, PRIMITIVES
from modeling.search_space import (DIRECTIONS, NUM_LEVELS, cell_edges, edge_offset, level_stride,
                                   num_edges)

GENOTYPE_FORMAT = "autodeeplab-genotype"
GENOTYPE_VERSION = 1

GENOTYPE_JSON = "genotype.json"
NETWORK_PATH_NPY = "network_path.npy"
NETWORK_PATH_SPACE_NPY = "network_path_space.npy"
GENOTYPE_NPY = "genotype.npy"

INPUTS_PER_BLOCK = 2  # each block sums two operations (paper section 3.3)
# The stem sits at stride 4 and the first layer one level at most away from it (paper section 3).
MAX_FIRST_LEVEL = 1
# Operation indices of the array form (genotype.npy), fixed whatever the order of the operation
# table: the order of the best-known public implementation, whose .npy files these are. An
# operation added to the table gets the next index, in the table's order.
ARRAY_OPERATIONS = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                    "sep_conv_5x5", "atrous_conv_3x3", "atrous_conv_5x5")


def array_operations() -> tuple[str, ...]:
    """The operation of each index of genotype.npy: `ARRAY_OPERATIONS`, then the table's
    other operations in its order."""
    return (ARRAY_OPERATIONS
            + tuple(name for name in PRIMITIVES if name not in ARRAY_OPERATIONS))


class GenotypeError(ValueError):
    """A genotype that is not a network of the search space, or cannot be read as one. The
    message is one line naming what is wrong; the entry scripts print it as a user error."""


def input_name(index: int) -> str:
    """Readable name of a cell input index: H(l-2), H(l-1) or block k."""
    return {0: "H(l-2)", 1: "H(l-1)"}.get(index, f"block {index - 1}")


def _as_int(value, what: str) -> int:
    # JSON gives int, numpy gives np.integer; bool is an int subclass but never a level or index.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise GenotypeError(f"{what} must be an integer, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Genotype:
    """Network path and cell of one decoded architecture; validated when constructed.

    network_path: level (0..3, stride 4 * 2^level) of every layer, layer 0 first.
    cell: one pair per block of `(input_index, operation_name)`.
    Lists are accepted and stored as tuples, so records are hashable and compare by value.
    Invalid contents raise `GenotypeError` with a one-line message.
    """

    network_path: tuple[int, ...]
    cell: tuple[tuple[tuple[int, str], tuple[int, str]], ...]

    def __post_init__(self):
        try:
            path = tuple(_as_int(v, "genotype network path level") for v in self.network_path)
            cell = tuple(tuple((_as_int(inp, "genotype cell input index"), op)
                               for inp, op in block) for block in self.cell)
        except (TypeError, ValueError) as err:
            raise GenotypeError(f"genotype is malformed: network_path must be a list of levels "
                                f"and cell a list of [[input, operation], [input, operation]] "
                                f"pairs ({err})") from err
        object.__setattr__(self, "network_path", path)
        object.__setattr__(self, "cell", cell)
        self.validate()

    @property
    def num_layers(self) -> int:
        """L, the number of layers on the network path."""
        return len(self.network_path)

    @property
    def steps(self) -> int:
        """Number of blocks in the cell."""
        return len(self.cell)

    @property
    def strides(self) -> tuple[int, ...]:
        """Output stride of every layer on the path."""
        return tuple(level_stride(level) for level in self.network_path)

    def validate(self) -> None:
        """Raise GenotypeError (one line) unless path and cell describe a network of the space."""
        path = self.network_path
        if not path:
            raise GenotypeError("genotype network path is empty; it needs one level per layer")
        for layer, level in enumerate(path):
            if not 0 <= level < NUM_LEVELS:
                raise GenotypeError(f"genotype network path has level {level} at layer {layer}; "
                                    f"levels are 0..{NUM_LEVELS - 1} (stride 4..32)")
        if path[0] > MAX_FIRST_LEVEL:
            raise GenotypeError(f"genotype network path starts at level {path[0]}; the first layer "
                                f"must be at level 0 or {MAX_FIRST_LEVEL} (stride 4 or 8)")
        for layer in range(1, len(path)):
            if abs(path[layer] - path[layer - 1]) > 1:
                raise GenotypeError(f"genotype network path jumps from level {path[layer - 1]} to "
                                    f"{path[layer]} between layers {layer - 1} and {layer}; a path "
                                    f"moves at most one level per layer")
        if not self.cell:
            raise GenotypeError("genotype cell has no blocks; it needs at least one")
        for block, pairs in enumerate(self.cell):
            name = f"genotype cell block {block + 1}"
            if len(pairs) != INPUTS_PER_BLOCK:
                raise GenotypeError(f"{name} has {len(pairs)} inputs; every block has exactly "
                                    f"{INPUTS_PER_BLOCK}")
            available = 2 + block  # H(l-2), H(l-1) and the blocks before this one
            for inp, op in pairs:
                if not 0 <= inp < available:
                    readable = ", ".join(f"{i} = {input_name(i)}" for i in range(available))
                    raise GenotypeError(f"{name} reads input {inp}, which does not exist yet; "
                                        f"block {block + 1} can read {readable}")
                if op == NONE_OP:
                    raise GenotypeError(f"{name} uses '{NONE_OP}' on input {inp}; a cell keeps "
                                        f"only real operations")
                if op not in PRIMITIVES:
                    raise GenotypeError(f"{name} uses unknown operation {op!r}; known: "
                                        f"{', '.join(p for p in PRIMITIVES if p != NONE_OP)}")
            if pairs[0][0] == pairs[1][0]:
                raise GenotypeError(f"{name} reads input {pairs[0][0]} twice; its two inputs must "
                                    f"be different states")

    # --- JSON form ------------------------------------------------------------------------

    def to_json(self) -> dict:
        """The `genotype.json` dict: format, version, primitives, sizes,
        network_path and cell as `[[input, op], [input, op]]` per block."""
        return {
            "format": GENOTYPE_FORMAT,
            "version": GENOTYPE_VERSION,
            "primitives": list(PRIMITIVES),
            "num_layers": self.num_layers,
            "steps": self.steps,
            "network_path": list(self.network_path),
            "cell": [[[inp, op] for inp, op in pairs] for pairs in self.cell],
        }

    @classmethod
    def from_json(cls, obj) -> "Genotype":
        """Rebuild from a `to_json` dict; extra keys are ignored. Raises GenotypeError."""
        if not isinstance(obj, dict):
            raise GenotypeError(f"genotype must be a JSON object, got {type(obj).__name__}")
        if obj.get("format") != GENOTYPE_FORMAT:
            raise GenotypeError(f"genotype has format {obj.get('format')!r}, expected "
                                f"{GENOTYPE_FORMAT!r}; write it with decode_autodeeplab.py")
        if obj.get("version") != GENOTYPE_VERSION:
            raise GenotypeError(f"genotype has version {obj.get('version')!r}; this code reads "
                                f"version {GENOTYPE_VERSION}")
        missing = [key for key in ("network_path", "cell") if key not in obj]
        if missing:
            raise GenotypeError(f"genotype has no {' or '.join(missing)} entry")
        # Operations are stored by name: "primitives" (the operations searched over) is a
        # record only, and a file searched over another list reads as long as its operations
        # are in the table (checked below).
        if not isinstance(obj["network_path"], list) or not isinstance(obj["cell"], list):
            raise GenotypeError("genotype network_path and cell must be JSON lists")
        genotype = cls(network_path=obj["network_path"], cell=obj["cell"])
        for key, actual, field in (("num_layers", genotype.num_layers, "network_path"),
                                   ("steps", genotype.steps, "cell")):
            if key in obj and obj[key] != actual:
                raise GenotypeError(f"genotype says {key}={obj[key]!r} but len({field}) = {actual}")
        return genotype

    # --- array form (the seed's .npy files) -----------------------------------------------

    def to_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(network_path (L,) int64, network_path_space (L, 4, 3) float32 one-hot,
        genotype (2 * steps, 2) int64 rows of [global edge index, operation index])."""
        network_path = np.asarray(self.network_path, dtype=np.int64)
        space = path_space(self.network_path)
        rows = [[edge_offset(block) + inp, array_operations().index(op)]
                for block, pairs in enumerate(self.cell) for inp, op in pairs]
        return network_path, space, np.asarray(rows, dtype=np.int64)

    @classmethod
    def from_arrays(cls, network_path, network_path_space, genotype_array) -> "Genotype":
        """Rebuild from the arrays of `to_arrays`; `network_path_space` may be None.

        Raises GenotypeError if the arrays have the wrong shape or disagree with each other.
        """
        network_path = np.asarray(network_path)
        genotype_array = np.asarray(genotype_array)
        if network_path.ndim != 1 or not np.issubdtype(network_path.dtype, np.integer):
            raise GenotypeError(f"network_path array must be 1-D integer levels, got shape "
                                f"{network_path.shape} of {network_path.dtype}")
        if (genotype_array.ndim != 2 or genotype_array.shape[1] != 2
                or genotype_array.shape[0] % INPUTS_PER_BLOCK
                or not np.issubdtype(genotype_array.dtype, np.integer)):
            raise GenotypeError(f"genotype array must be integer (2 * steps, 2), got shape "
                                f"{genotype_array.shape} of {genotype_array.dtype}")
        steps = genotype_array.shape[0] // INPUTS_PER_BLOCK
        edges = cell_edges(steps)
        cell = []
        for block in range(steps):
            pairs = []
            for edge, op in genotype_array[INPUTS_PER_BLOCK * block:INPUTS_PER_BLOCK * (block + 1)]:
                if not 0 <= edge < num_edges(steps) or edges[edge][0] != block:
                    raise GenotypeError(f"genotype array row for block {block + 1} names edge "
                                        f"{edge}, which does not enter block {block + 1} (edges "
                                        f"{edge_offset(block)}..{edge_offset(block + 1) - 1})")
                names = array_operations()
                if not 0 <= op < len(names):
                    raise GenotypeError(f"genotype array names operation index {op}; indices are "
                                        f"0..{len(names) - 1}")
                pairs.append((int(edges[edge][1]), names[op]))
            cell.append(tuple(pairs))
        genotype = cls(network_path=tuple(int(v) for v in network_path), cell=tuple(cell))
        if network_path_space is not None:
            space = np.asarray(network_path_space)
            expected = path_space(genotype.network_path)
            if space.shape != expected.shape or not np.array_equal(space != 0, expected != 0):
                raise GenotypeError(f"network_path_space array (shape {space.shape}) is not the "
                                    f"one-hot of network_path {list(genotype.network_path)}")
        return genotype


def path_space(network_path) -> np.ndarray:
    """(L, 4, 3) float32 one-hot: [l, s, d] = 1 where the path leaves level s of layer l - 1
    (the stem at level 0 for l = 0) in direction d into layer l."""
    space = np.zeros((len(network_path), NUM_LEVELS, len(DIRECTIONS)), dtype=np.float32)
    previous = 0  # the stem
    for layer, level in enumerate(network_path):
        space[layer, previous, DIRECTIONS.index(level - previous)] = 1.0
        previous = level
    return space


# Paper Fig. 3: the architecture Auto-DeepLab found on Cityscapes.
GENOTYPES: dict[str, Genotype] = {
    "autodeeplab": Genotype(
        network_path=(0, 0, 0, 1, 2, 1, 2, 2, 3, 3, 2, 1),
        cell=(
            ((0, "atrous_conv_5x5"), (1, "sep_conv_3x3")),
            ((0, "sep_conv_3x3"), (1, "atrous_conv_3x3")),
            ((3, "sep_conv_3x3"), (0, "sep_conv_3x3")),
            ((4, "sep_conv_5x5"), (2, "sep_conv_5x5")),
            ((3, "sep_conv_5x5"), (5, "atrous_conv_5x5")),
        ),
    ),
}


def count_paths(num_layers: int) -> np.ndarray:
    """(L, 4) number of valid network paths ending at each (layer, level) (paper section 3)."""
    counts = np.zeros((num_layers, NUM_LEVELS), dtype=object)  # exact, however long the path
    counts[0, :MAX_FIRST_LEVEL + 1] = 1
    for layer in range(1, num_layers):
        for level in range(NUM_LEVELS):
            counts[layer, level] = sum(counts[layer - 1, s] for s in (level - 1, level, level + 1)
                                       if 0 <= s < NUM_LEVELS)
    return counts


def random_genotype(num_layers: int, steps: int, rng: np.random.Generator) -> Genotype:
    """An architecture drawn uniformly from the search space: each valid network path equally
    likely (drawn backwards through the path counts), and each block an unordered pair of
    distinct inputs with one real operation each, all choices equally likely."""
    counts = count_paths(num_layers)

    def pick(weights) -> int:
        weights = np.array([float(w) for w in weights])
        return int(rng.choice(len(weights), p=weights / weights.sum()))

    path = [pick(counts[-1])]
    for layer in range(num_layers - 2, -1, -1):
        nxt = path[-1]
        path.append(pick([counts[layer, s] if abs(s - nxt) <= 1 else 0
                          for s in range(NUM_LEVELS)]))
    operations = [p for p in PRIMITIVES if p != NONE_OP]
    cell = []
    for block in range(steps):
        inputs = sorted(rng.choice(2 + block, size=INPUTS_PER_BLOCK, replace=False).tolist())
        cell.append(tuple((int(i), operations[rng.integers(len(operations))]) for i in inputs))
    return Genotype(tuple(reversed(path)), tuple(cell))


def get_genotype(name: str) -> Genotype:
    """A named genotype from `GENOTYPES`; an unknown name is a GenotypeError listing the known."""
    if name not in GENOTYPES:
        raise GenotypeError(f"unknown genotype {name!r}; known: {', '.join(sorted(GENOTYPES))}")
    return GENOTYPES[name]
