"""Reading a search checkpoint for decoding: its raw architecture parameters and the
supernet's shape, every problem a one-line error naming the file."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from modeling.genotypes import ARRAY_OPERATIONS
from modeling.operations import PRIMITIVES
from modeling.search_space import DIRECTIONS, NUM_LEVELS, num_edges
from modeling.supernet import AutoDeepLabSearch, SupernetConfig
from utils.checkpoint import SEARCH_KIND, SEARCH_VERSION, load_checkpoint
from utils.errors import UserError


@dataclass(frozen=True)
class SearchArchitecture:
    """What decode needs from a search checkpoint: raw parameters and the supernet's shape."""

    path: Path
    alphas: np.ndarray  # (E, len(PRIMITIVES)) raw logits, columns in the table's order
    betas: np.ndarray  # (L, 4, 3) raw logits
    model_args: dict
    epoch: int | None = None
    global_step: int | None = None
    edge_logits: np.ndarray | None = None  # (E,) raw, from a partial-channel search only

    @property
    def num_layers(self) -> int:
        return int(self.model_args["num_layers"])

    @property
    def steps(self) -> int:
        return int(self.model_args["steps"])


# Version 1's supernet had another stem, but its alphas and betas mean what version 2's do.
DECODABLE_VERSIONS = (1, SEARCH_VERSION)
_NOT_SEARCH_FIX = "decode needs the checkpoint.pth.tar of train_autodeeplab.py"


def _param_array(path: Path, model: dict, name: str) -> np.ndarray:
    value = model[name]
    if not isinstance(value, torch.Tensor) or not value.is_floating_point():
        raise UserError(f"checkpoint {path} has {name} of type {type(value).__name__}, not a "
                        f"float tensor; {_NOT_SEARCH_FIX}")
    value = value.detach().cpu()
    if value.dtype not in (torch.float32, torch.float64):
        value = value.float()  # numpy has no bfloat16
    array = value.numpy()
    if not np.isfinite(array).all():
        raise UserError(f"checkpoint {path} has non-finite {name} (the search diverged); "
                        f"decode the checkpoint of an earlier epoch")
    return array


def searched_over(state: dict, path, resume: bool = False) -> list[str]:
    """The operations of a search checkpoint's alpha columns, in their order (checkpoints
    written before they recorded it hold `ARRAY_OPERATIONS`, the order of that time). A
    resume needs the table's own order; decoding needs the table's operations, in any order.
    Otherwise a one-line error naming the file."""
    names = list(state.get("primitives", ARRAY_OPERATIONS))
    if names == list(PRIMITIVES) or (not resume and sorted(names) == sorted(PRIMITIVES)):
        return names
    raise UserError(f"checkpoint {path} was searched over the operations {', '.join(names)}; "
                    f"the operation table (modeling/operations.py OPS) now has "
                    f"{', '.join(PRIMITIVES)}: {'resume' if resume else 'decode'} it with the "
                    f"code that searched it")


def _read_search_checkpoint(path: Path, trust: bool) -> dict:
    """A search checkpoint's contents, on the CPU; a UserError naming the file when it is
    missing, unreadable, of another kind or of a version decode cannot read."""
    try:
        state = load_checkpoint(path, trust=trust)
    except (IndexError, KeyError, TypeError, AttributeError, UnicodeDecodeError,
            OverflowError) as err:
        # Unpickling arbitrary bytes (a text file, say) fails with these too, and
        # load_checkpoint lets them through; they still mean "not a checkpoint".
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise UserError(f"checkpoint {path} cannot be read (not a PyTorch checkpoint: "
                        f"{type(err).__name__}: {first})") from err
    if state["kind"] != SEARCH_KIND:
        raise UserError(f"checkpoint {path} is a {state['kind']!r} checkpoint, not a search "
                        f"checkpoint; {_NOT_SEARCH_FIX}")
    if state.get("version") not in DECODABLE_VERSIONS:
        raise UserError(f"checkpoint {path} has version {state.get('version')!r}; this decode "
                        f"reads versions {', '.join(map(str, DECODABLE_VERSIONS))}")
    return state


def load_search_architecture(path: str | os.PathLike, *,
                             trust: bool = False) -> SearchArchitecture:
    """Read alphas, betas and model_args from a search checkpoint on the CPU.

    Any checkpoint of train_autodeeplab.py works (any epoch's, or best.pth.tar). Every
    problem (missing, truncated, another kind, no alphas/betas, shapes that disagree with
    model_args) is a UserError naming the file. `trust` as in `load_checkpoint`.
    """
    path = Path(path)
    return _architecture(path, _read_search_checkpoint(path, trust))


def _architecture(path: Path, state: dict) -> SearchArchitecture:
    model = state.get("model")
    missing = [name for name in ("alphas", "betas")
               if not isinstance(model, dict) or name not in model]
    if missing:
        raise UserError(f"{path} is not a search checkpoint: no {'/'.join(missing)}; "
                        f"{_NOT_SEARCH_FIX}")
    model_args = state.get("model_args")
    required = ("num_layers", "steps")
    if not isinstance(model_args, dict) or any(key not in model_args for key in required):
        raise UserError(f"checkpoint {path} has no model_args with num_layers and steps; "
                        f"{_NOT_SEARCH_FIX}")
    columns = searched_over(state, path)
    alphas = _param_array(path, model, "alphas")
    if alphas.ndim == 2 and alphas.shape[1] == len(columns):  # to the table's order
        alphas = alphas[:, [columns.index(name) for name in PRIMITIVES]]
    betas = _param_array(path, model, "betas")
    num_layers, steps = int(model_args["num_layers"]), int(model_args["steps"])
    expected_alphas = (num_edges(steps), len(PRIMITIVES))
    expected_betas = (num_layers, NUM_LEVELS, len(DIRECTIONS))
    if alphas.shape != expected_alphas or betas.shape != expected_betas:
        raise UserError(f"checkpoint {path} has alphas {tuple(alphas.shape)} and betas "
                        f"{tuple(betas.shape)}, but its model_args (num_layers={num_layers}, "
                        f"steps={steps}) need {expected_alphas} and {expected_betas}")
    edge_logits = None
    if int(model_args.get("partial_channels", 1)) > 1:
        if "edge_logits" not in model:
            raise UserError(f"checkpoint {path} is a partial-channel search without "
                            f"edge_logits; {_NOT_SEARCH_FIX}")
        edge_logits = _param_array(path, model, "edge_logits")
        if edge_logits.shape != (expected_alphas[0],):
            raise UserError(f"checkpoint {path} has edge_logits {tuple(edge_logits.shape)}, "
                            f"but steps={steps} needs ({expected_alphas[0]},)")
    return SearchArchitecture(path=path, alphas=alphas, betas=betas, model_args=dict(model_args),
                              epoch=state.get("epoch"), global_step=state.get("global_step"),
                              edge_logits=edge_logits)


def load_search_supernet(path: str | os.PathLike, *, trust: bool = False
                         ) -> tuple[SearchArchitecture, AutoDeepLabSearch, dict]:
    """`load_search_architecture`'s architecture, the trained supernet (on the CPU) and the
    flags it was searched with, to score the supernet on data (engine/perturbation.py).
    Beyond that function's checks, the checkpoint must be of this version, with its alphas in
    the operation table's order and a supernet this code builds; otherwise a UserError
    naming the file."""
    path = Path(path)
    state = _read_search_checkpoint(path, trust)
    arch = _architecture(path, state)
    fix = "decode it without --select perturbation, or with the code that searched it"
    if state["version"] != SEARCH_VERSION:
        raise UserError(f"checkpoint {path} has version {state['version']}, whose supernet "
                        f"this code does not build; {fix}")
    if list(state.get("primitives", ARRAY_OPERATIONS)) != list(PRIMITIVES):
        raise UserError(f"checkpoint {path} orders its operations differently from the "
                        f"operation table (modeling/operations.py); {fix}")
    args = state.get("args")
    if not isinstance(args, dict) or "dataset" not in args:
        raise UserError(f"checkpoint {path} does not record the flags of its search; {fix}")
    try:
        model = AutoDeepLabSearch(SupernetConfig(**state["model_args"]))
        model.load_state_dict(state["model"])
    except (TypeError, ValueError, RuntimeError) as err:
        first = (str(err).strip().splitlines() or [""])[0][:200]
        raise UserError(f"checkpoint {path}: its supernet cannot be rebuilt ({first}); "
                        f"{fix}") from err
    return arch, model, args
