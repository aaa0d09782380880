"""One operation table: a candidate operation added in one place (modeling/operations.py OPS)
is searched, decoded and retrained. The operation is added to a scratch copy of the project,
in the middle of the table, so the fast paths' columns are no longer consecutive either."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modeling.operations import OPS, PRIMITIVES
from modeling.search_cell import FALLBACK_OPS, FAST_OPS

REPO = Path(__file__).resolve().parents[1]
NEW_OP = '    "sep_conv_7x7": lambda c, stride, affine: SepConv(c, 7, stride, affine),\n'
ANCHOR = '    "sep_conv_3x3": lambda c, stride, affine: SepConv(c, 3, stride, affine),\n'

# Run in the scratch copy: the fast supernet against the plain one with the new operation, a
# short search, a decode that picks the operation, and a retraining that builds it.
CHECK = r'''
import json, sys
from pathlib import Path
import torch
import train, train_autodeeplab, decode_autodeeplab
from config_utils import decode_args, search_args, train_args
from modeling.operations import PRIMITIVES
from modeling.plain_supernet import copy_fast_to_plain, corresponding_parameters
from modeling.search_cell import FALLBACK_OPS
from modeling.supernet import AutoDeepLabSearch, SupernetConfig

out = Path(sys.argv[1])
op = PRIMITIVES.index("sep_conv_7x7")
assert FALLBACK_OPS == ("sep_conv_7x7",), FALLBACK_OPS

# 1. Fast (with its fallback) and plain supernets compute the same loss and gradients.
config = dict(num_classes=3, num_layers=2, filter_multiplier=2, block_multiplier=2, steps=2,
              stem_widths=(4, 8), aspp_channels=4)
torch.manual_seed(0)
fast = AutoDeepLabSearch(SupernetConfig(**config)).double()
with torch.no_grad():
    fast.alphas.normal_(0, 1)
plain = AutoDeepLabSearch(SupernetConfig(**config, implementation="plain")).double()
copy_fast_to_plain(fast, plain)
x, target = torch.randn(2, 3, 24, 20, dtype=torch.float64), torch.randint(0, 3, (2, 24, 20))
losses = [torch.nn.functional.cross_entropy(m(x), target) for m in (fast, plain)]
torch.testing.assert_close(losses[0], losses[1], rtol=1e-9, atol=1e-10)
for loss in losses:
    loss.backward()
f, p = dict(fast.named_parameters()), dict(plain.named_parameters())
for fast_name, rows, plain_name in corresponding_parameters(fast, plain):
    torch.testing.assert_close(f[fast_name].grad[rows], p[plain_name].grad, rtol=1e-7, atol=1e-9)
assert any(".fallback.sep_conv_7x7." in name for name in f)
print("equal")

# 2. A search trains it: its alpha column and its weights get gradients (optimizer state).
tiny = ["--dataset", "synthetic", "--filter-multiplier", "2", "--num-layers", "3", "--steps",
        "2", "--block-multiplier", "2", "--crop-size", "32", "--batch-size", "2", "--workers",
        "0", "--no-val", "--epochs", "2", "--alpha-epoch", "1", "--max-samples", "16"]
search_dir = out / "search"
train_autodeeplab.main(search_args.get_args_parser().parse_args(
    tiny + ["--out-dir", str(search_dir)]))
state = torch.load(search_dir / "checkpoint.pth.tar", weights_only=True)
assert state["primitives"] == list(PRIMITIVES)
alphas_adam = state["arch_optimizer"]["state"][0]  # alphas come first
assert alphas_adam["exp_avg"][:, op].abs().min() > 0, "its alpha got no gradient"
model = AutoDeepLabSearch(SupernetConfig(**state["model_args"]))
names = [n for n, q in model.named_parameters() if id(q) in {id(w) for w in model.weight_parameters()}]
momentum = state["weight_optimizer"]["state"]
trained = [n for i, n in enumerate(names) if ".fallback.sep_conv_7x7." in n
           and momentum[i]["momentum_buffer"].abs().sum() > 0]
total = [n for n in names if ".fallback.sep_conv_7x7." in n]
assert total and trained == total, (len(trained), len(total))
print("searched")

# 3. Decoding picks it where its alpha leads.
state["model"]["alphas"][:, op] += 5.0
torch.save(state, search_dir / "favoured.pth.tar")
decode_autodeeplab.main(decode_args.get_args_parser().parse_args(
    ["--resume", str(search_dir / "favoured.pth.tar"), "--out-dir", str(out / "decoded")]))
genotype = json.loads((out / "decoded" / "genotype.json").read_text())
assert {name for block in genotype["cell"] for _, name in block} == {"sep_conv_7x7"}
print("decoded")

# 4. Retraining builds it: 7x7 depthwise filters in the trained network.
retrain_dir = out / "retrain"
train.main(train_args.get_args_parser().parse_args(
    ["--dataset", "synthetic", "--filter-multiplier", "2", "--crop-size", "32",
     "--batch-size", "2", "--workers", "0", "--warmup-iters", "1", "--max-samples", "4",
     "--iters", "2", "--no-val", "--genotype", str(out / "decoded" / "genotype.json"),
     "--out-dir", str(retrain_dir)]))
weights = torch.load(retrain_dir / "checkpoint.pth.tar", weights_only=True)["model"]
assert any(w.shape[1:] == (1, 7, 7) for w in weights.values())
print("retrained")
'''


def test_fast_paths_and_fallback_cover_the_table_exactly():
    assert set(FAST_OPS) | set(FALLBACK_OPS) == set(OPS) == set(PRIMITIVES)
    assert not set(FAST_OPS) & set(FALLBACK_OPS)
    assert FALLBACK_OPS == ()  # every operation of the paper has its fast path


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A copy of the project's code with one more operation in the table."""
    root = tmp_path_factory.mktemp("scratch") / "project"
    shutil.copytree(REPO, root, ignore=shutil.ignore_patterns(
        ".*", "run", "docs", "tests", "bench", "genotypes", "__pycache__", "*.egg-info"))
    table = root / "modeling" / "operations.py"
    source = table.read_text()
    assert source.count(ANCHOR) == 1
    table.write_text(source.replace(ANCHOR, ANCHOR + NEW_OP))
    return root


@pytest.mark.slow
def test_an_operation_added_in_one_place_is_searched_decoded_and_retrained(scratch, tmp_path):
    result = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path)], cwd=scratch,
                            capture_output=True, text=True, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    steps = ["equal", "searched", "decoded", "retrained"]
    assert [line for line in result.stdout.splitlines() if line in steps] == steps


def test_a_table_in_another_order_reads_old_checkpoints_by_name(tmp_path):
    from engine.search_checkpoint import load_search_architecture
    from modeling.search_space import num_edges
    from utils.checkpoint import SEARCH_KIND, SEARCH_VERSION, save_checkpoint
    from utils.errors import UserError

    # A checkpoint whose columns are in reverse order decodes to the same alphas.
    alphas = torch.randn(num_edges(2), len(PRIMITIVES))
    state = {"kind": SEARCH_KIND, "version": SEARCH_VERSION,
             "model": {"alphas": alphas.flip(1), "betas": torch.zeros(3, 4, 3)},
             "model_args": {"num_layers": 3, "steps": 2},
             "primitives": list(reversed(PRIMITIVES))}
    save_checkpoint(state, tmp_path / "reversed.pth.tar")
    arch = load_search_architecture(tmp_path / "reversed.pth.tar")
    assert torch.equal(torch.from_numpy(arch.alphas), alphas)
    # One searched over other operations is a one-line error naming the file.
    state["primitives"] = list(PRIMITIVES[:-1]) + ["conv_9x9"]
    save_checkpoint(state, tmp_path / "other.pth.tar")
    with pytest.raises(UserError) as info:
        load_search_architecture(tmp_path / "other.pth.tar")
    assert "other.pth.tar was searched over the operations" in str(info.value)
    assert "conv_9x9" in str(info.value) and "\n" not in str(info.value)
