"""Genotype files: `genotype.json`, the seed's three .npy arrays, and the architectures shipped
in genotypes/ by name. modeling/genotypes.py converts; this module reads and writes, and turns
a bad file into one line naming it."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np

from modeling.genotypes import (GENOTYPE_NPY, NETWORK_PATH_NPY, NETWORK_PATH_SPACE_NPY,
                                Genotype, GenotypeError)
from utils.checkpoint import atomic_write, write_json
from utils.errors import UserError

log = logging.getLogger(__name__)

# Architectures shipped with the project, each with a "found" line saying how it was found:
# --genotype takes their names (the file names without .json) as well as paths.
SHIPPED_GENOTYPES = Path(__file__).resolve().parents[1] / "genotypes"


def save_genotype(genotype: Genotype, path: str | os.PathLike) -> None:
    """Write `genotype.json` atomically."""
    write_json(genotype.to_json(), path)


def read_genotype(path: str | os.PathLike) -> Genotype:
    """Read a `genotype.json`; any problem is a UserError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"genotype file {path} does not exist; write one with "
                        f"decode_autodeeplab.py --resume RUN/checkpoint.pth.tar")
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"genotype file {path} is not valid JSON ({err})") from err
    try:
        return Genotype.from_json(obj)
    except GenotypeError as err:
        raise UserError(f"genotype file {path} is invalid: {err}") from err


def shipped_genotypes() -> dict[str, Path]:
    """Name -> file of the genotypes in genotypes/."""
    return {path.stem: path for path in sorted(SHIPPED_GENOTYPES.glob("*.json"))}


def load_genotype(spec: str | os.PathLike) -> Genotype:
    """The genotype in file `spec`, or the shipped genotype of that name (a file wins)."""
    path = Path(spec)
    shipped = shipped_genotypes()
    if not path.exists() and str(spec) in shipped:
        path = shipped[str(spec)]
        found = json.loads(path.read_text()).get("found", "")
        log.info("genotype %s (%s): %s", spec, path, found)
    elif not path.exists():
        raise UserError(f"genotype file {spec} does not exist; pass a genotype.json (from "
                        f"decode_autodeeplab.py) or a shipped name: {', '.join(shipped)}")
    return read_genotype(path)


def save_genotype_arrays(genotype: Genotype, directory: str | os.PathLike) -> list[Path]:
    """Write the three .npy files of `Genotype.to_arrays` into `directory` atomically; return
    their paths."""
    directory = Path(directory)
    written = []
    for name, array in zip((NETWORK_PATH_NPY, NETWORK_PATH_SPACE_NPY, GENOTYPE_NPY),
                           genotype.to_arrays()):
        written.append(directory / name)
        atomic_write(written[-1], lambda tmp, a=array: _save_npy(tmp, a))
    return written


def load_genotype_arrays(directory: str | os.PathLike) -> Genotype:
    """Read the three .npy files of `save_genotype_arrays`; problems are UserErrors naming a
    file."""
    directory = Path(directory)
    arrays = []
    for name in (NETWORK_PATH_NPY, NETWORK_PATH_SPACE_NPY, GENOTYPE_NPY):
        file = directory / name
        try:
            arrays.append(np.load(file, allow_pickle=False))
        except (OSError, ValueError, EOFError) as err:
            raise UserError(f"cannot read {file} ({err}); write it with "
                            f"decode_autodeeplab.py") from err
    try:
        return Genotype.from_arrays(*arrays)
    except GenotypeError as err:
        raise UserError(f"arrays in {directory} are invalid: {err}") from err


def _save_npy(path: Path, array: np.ndarray) -> None:
    # np.save(path) would append ".npy" to the temporary name; a file handle keeps it.
    with open(path, "wb") as f:
        np.save(f, array)
