"""train_autodeeplab.py end to end on tiny settings: learning, resume, errors."""
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_autodeeplab
from config_utils.search_args import get_args_parser
from engine.search import clip_gradients, split_train_set

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--filter-multiplier", "2", "--num-layers", "3", "--steps",
        "2", "--block-multiplier", "2", "--crop-size", "32", "--batch-size", "2",
        "--workers", "0"]


def run_search(tmp_path, *extra, name="run"):
    args = get_args_parser().parse_args(TINY + ["--out-dir", str(tmp_path / name), *extra])
    return train_autodeeplab.main(args)


def cli(*argv, cwd=REPO):
    return subprocess.run([sys.executable, "train_autodeeplab.py", *argv], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_split_is_disjoint_complete_and_seeded():
    a, b = split_train_set(11, seed=3)
    assert set(a).isdisjoint(b) and sorted([*a, *b]) == list(range(11))
    a2, _ = split_train_set(11, seed=3)
    a3, _ = split_train_set(11, seed=4)
    assert (a == a2).all() and not (a == a3).all()


@pytest.mark.parametrize("max_norm", [0.5, 1e6])  # clipped, and left as they are
def test_clip_gradients_equals_torch_clip_grad_norm_bit_for_bit(max_norm):
    def parameters():
        generator = torch.Generator().manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(shape, generator=generator))
                  for shape in [(3, 4), (5,), (2, 3, 3, 3), (7, 1)]]
        for p in params:
            p.grad = 10 * torch.randn(p.shape, generator=generator)
        return params + [torch.nn.Parameter(torch.zeros(2))]  # one without a gradient

    ours, theirs = parameters(), parameters()
    clip_gradients(ours, max_norm)
    norm = torch.nn.utils.clip_grad_norm_(theirs, max_norm)
    assert (norm > max_norm) == (max_norm == 0.5)
    assert ours[-1].grad is None
    for a, b in zip(ours[:-1], theirs[:-1]):
        assert torch.equal(a.grad, b.grad)


def test_short_search_lowers_training_loss(tmp_path):
    out = run_search(tmp_path, "--epochs", "6", "--alpha-epoch", "3", "--max-samples", "16",
                     "--lr", "0.05", "--no-val")
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    losses = [float(r["train_loss"]) for r in rows]
    assert len(rows) == 6
    assert losses[-1] < losses[0] - 0.1, losses
    assert all(r["arch_loss"] == "nan" for r in rows[:3])
    assert all(float(r["arch_loss"]) > 0 for r in rows[3:])
    state = torch.load(out / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    assert state["kind"] == "autodeeplab-search" and state["epoch"] == 6
    assert set(state["split"]["a"].tolist()).isdisjoint(state["split"]["b"].tolist())
    assert state["genotype"]["format"] == "autodeeplab-genotype"
    args = json.loads((out / "args.json").read_text())
    assert args["epochs"] == 6 and args["filter_multiplier"] == 2
    assert any(p.name.startswith("events.out.tfevents") for p in out.iterdir())
    assert "epoch 6/6" in (out / "search.log").read_text()


def test_arch_step_moves_only_arch_parameters(tmp_path):
    out = run_search(tmp_path, "--epochs", "1", "--alpha-epoch", "0", "--max-samples", "8",
                     "--lr", "0", "--momentum", "0", "--weight-decay", "0", "--min-lr", "0",
                     "--no-val")
    state = torch.load(out / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
    torch.manual_seed(0)
    # Same seed, same init: with lr 0 only the architecture may have moved.
    from modeling.supernet import AutoDeepLabSearch, SupernetConfig
    fresh = AutoDeepLabSearch(SupernetConfig(**state["model_args"]))
    init = fresh.state_dict()
    for name, value in state["model"].items():
        if name in ("alphas", "betas"):
            assert not torch.equal(value, init[name]), name
        elif "running" not in name and "num_batches" not in name:
            assert torch.equal(value, init[name]), name


def test_arch_step_gradients_equal_a_full_backwards_and_leave_the_weights_as_they_were():
    from engine.search import Architect
    from modeling.supernet import AutoDeepLabSearch, SupernetConfig
    torch.manual_seed(0)
    model = AutoDeepLabSearch(SupernetConfig(num_classes=3, num_layers=3, filter_multiplier=2,
                                             block_multiplier=2, steps=2)).double()
    first = model.weight_parameters()[0]
    first.requires_grad_(False)  # a weight the user froze stays frozen
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    targets = torch.randint(0, 3, (2, 32, 32))
    criterion = torch.nn.CrossEntropyLoss()
    expected = torch.autograd.grad(criterion(model(images), targets), model.arch_parameters())
    architect = Architect(model, criterion, lr=0.0, weight_decay=0.0)
    architect.step(images, targets)
    for p, g in zip(model.arch_parameters(), expected):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12)
    assert not first.requires_grad and first.grad is None
    for p in model.weight_parameters()[1:]:
        assert p.requires_grad and p.grad is None


@pytest.mark.parametrize("epoch", [0, 3])
def test_beta_decay_adds_its_weight_times_the_alphas_softmax_over_the_edges(epoch):
    """beta-DARTS: the gradient of the mean log-sum-exp over E edges is softmax(alphas) / E,
    weighted final * epoch / epochs (0 in the first epoch); the betas' gradient is the
    cross-entropy's alone, and so is the loss the step reports."""
    from engine.search import Architect
    from modeling.search_space import normalize_alphas
    from modeling.supernet import AutoDeepLabSearch, SupernetConfig
    torch.manual_seed(0)
    model = AutoDeepLabSearch(SupernetConfig(num_classes=3, num_layers=3, filter_multiplier=2,
                                             block_multiplier=2, steps=2)).double()
    with torch.no_grad():
        model.alphas.normal_(0, 1)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    targets = torch.randint(0, 3, (2, 32, 32))
    criterion = torch.nn.CrossEntropyLoss()
    plain = criterion(model(images), targets)
    expected = torch.autograd.grad(plain, model.arch_parameters())
    architect = Architect(model, criterion, lr=0.0, weight_decay=0.0, beta_decay=8.0, epochs=4)
    assert architect.step(images, targets, epoch) == pytest.approx(plain.item(), rel=1e-12)
    weight = 8.0 * epoch / 4
    edges = model.alphas.shape[0]
    softmax = normalize_alphas(model.alphas.detach())
    torch.testing.assert_close(model.alphas.grad, expected[0] + weight * softmax / edges,
                               rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(model.betas.grad, expected[1], rtol=1e-9, atol=1e-12)


def test_resume_equals_uninterrupted(tmp_path):
    common = ["--epochs", "3", "--alpha-epoch", "1", "--max-samples", "8", "--eval-interval", "2"]
    full = run_search(tmp_path, *common, name="full")
    part = run_search(tmp_path, *common, "--stop-after-epochs", "2", name="part")
    assert torch.load(part / "checkpoint.pth.tar", weights_only=True)["epoch"] == 2
    args = get_args_parser().parse_args(["--resume", str(part / "checkpoint.pth.tar")])
    train_autodeeplab.main(args)
    a = torch.load(full / "checkpoint.pth.tar", weights_only=True)
    b = torch.load(part / "checkpoint.pth.tar", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3 and a["global_step"] == b["global_step"]
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    assert a["arch_optimizer"]["state"][0]["exp_avg"].equal(b["arch_optimizer"]["state"][0]["exp_avg"])
    rows = list(csv.DictReader(open(part / "metrics.csv")))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]


def test_resume_with_other_supernet_shape_is_refused(tmp_path):
    out = run_search(tmp_path, "--epochs", "1", "--max-samples", "8", "--no-val")
    res = cli("--resume", str(out / "checkpoint.pth.tar"), "--filter-multiplier", "4")
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --filter-multiplier 4 differs from the checkpoint's 2")


def test_plain_supernet_searches_and_its_checkpoint_keeps_it(tmp_path):
    out = run_search(tmp_path, "--supernet", "plain", "--epochs", "2", "--alpha-epoch", "1",
                     "--max-samples", "8", "--no-val")
    state = torch.load(out / "checkpoint.pth.tar", weights_only=True)
    assert state["model_args"]["implementation"] == "plain"
    assert any(".edges." in name for name in state["model"])  # one module per edge
    assert state["arch_optimizer"]["state"][0]["exp_avg"].abs().min() > 0
    assert "plain supernet F=2" in (out / "search.log").read_text()
    res = cli("--resume", str(out / "checkpoint.pth.tar"), "--supernet", "fast")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith(
        "error: --supernet fast differs from the checkpoint's plain")


@pytest.mark.parametrize("argv, message", [
    (["--dataset", "camvid", "--data-root", "/nonexistent/camvid"], "/nonexistent/camvid"),
    (["--dataset", "nosuchset"], "unknown dataset 'nosuchset'"),
    (["--batch-size", "1"], "--batch-size must be at least 2"),
    (["--partial-channels", "3"], "--partial-channels 3 must divide --filter-multiplier 4"),
    (["--partial-channels", "0"], "--partial-channels must be positive"),
    (["--skip-dropout", "1"], "--skip-dropout 1.0 must be in [0, 1)"),
    (["--skip-dropout", "-0.1"], "--skip-dropout -0.1 must be in [0, 1)"),
    (["--beta-decay", "-1"], "--beta-decay -1.0 must be 0 (off) or positive"),
    (["--beta-decay", "nan"], "--beta-decay nan must be 0 (off) or positive"),
    (["--resume", "/nonexistent/checkpoint.pth.tar"], "/nonexistent/checkpoint.pth.tar"),
])
def test_bad_input_ends_in_one_error_line(tmp_path, argv, message):
    res = cli(*argv, "--out-dir", str(tmp_path / "out"))
    assert res.returncode == 2, res.stderr
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: "), res.stderr
    assert message in res.stderr


def test_empty_split_ends_in_one_error_line(tmp_path):
    root = tmp_path / "camvid"
    for sub in ("train", "trainannot", "val", "valannot"):
        (root / sub).mkdir(parents=True)
    res = cli("--dataset", "camvid", "--data-root", str(root), "--out-dir", str(tmp_path / "o"))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and res.stderr.startswith("error: ")
    assert "train" in res.stderr


def test_existing_run_folder_is_not_overwritten(tmp_path):
    out = run_search(tmp_path, "--epochs", "1", "--max-samples", "8", "--no-val")
    before = (out / "checkpoint.pth.tar").read_bytes()
    res = cli(*TINY, "--epochs", "1", "--max-samples", "8", "--out-dir", str(out))
    assert res.returncode == 2 and "already holds a search" in res.stderr
    assert (out / "checkpoint.pth.tar").read_bytes() == before


def test_decode_of_a_real_search_checkpoint(tmp_path):
    """Search, then decode_autodeeplab.py on its checkpoint: files agree with the supernet."""
    import numpy as np

    from engine.genotype_io import read_genotype

    out = run_search(tmp_path, "--epochs", "2", "--alpha-epoch", "0", "--max-samples", "8",
                     "--no-val")
    res = subprocess.run([sys.executable, "decode_autodeeplab.py", "--resume",
                          str(out / "checkpoint.pth.tar")], cwd=REPO, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    state = torch.load(out / "checkpoint.pth.tar", weights_only=True)
    decoded = read_genotype(out / "genotype.json")
    assert decoded.to_json()["network_path"] == state["genotype"]["network_path"]
    assert decoded.to_json()["cell"] == state["genotype"]["cell"]
    assert decoded.num_layers == 3 and decoded.steps == 2
    path = np.load(out / "network_path.npy")
    assert path.tolist() == list(decoded.network_path)
    assert (out / "architecture.png").read_bytes()[:4] == b"\x89PNG"


def test_search_runs_on_real_camvid(tmp_path, camvid_root):
    out = run_search(tmp_path, "--dataset", "camvid", "--data-root", str(camvid_root),
                     "--resize", "48", "--epochs", "1", "--alpha-epoch", "0",
                     "--max-samples", "4")
    state = torch.load(out / "checkpoint.pth.tar", weights_only=True)
    assert state["model_args"]["num_classes"] == 11
    assert state["split"]["num_train"] == 4
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert 0.0 <= float(rows[0]["val_miou"]) <= 1.0


def test_amp_on_cpu_warns_and_searches_in_float32(tmp_path):
    flags = ["--epochs", "1", "--alpha-epoch", "0", "--max-samples", "4", "--no-val"]
    plain = run_search(tmp_path, *flags, name="plain")
    with pytest.warns(UserWarning, match="--amp needs CUDA; running in float32 on the CPU"):
        amp = run_search(tmp_path, *flags, "--amp", name="amp")
    states = [torch.load(out / "checkpoint.pth.tar", map_location="cpu", weights_only=True)
              for out in (plain, amp)]
    assert states[1]["args"]["amp"] is True
    for key, value in states[0]["model"].items():
        assert torch.equal(value, states[1]["model"][key]), key


def test_partial_channel_search_resumes_exactly_and_decodes(tmp_path):
    """--partial-channels: a third architecture parameter, trained, checkpointed, resumed
    bit-identically, and used by decode."""
    common = ["--partial-channels", "2", "--epochs", "2", "--alpha-epoch", "0",
              "--max-samples", "8", "--no-val"]
    full = run_search(tmp_path, *common, name="full")
    part = run_search(tmp_path, *common, "--stop-after-epochs", "1", name="part")
    train_autodeeplab.main(get_args_parser().parse_args(
        ["--resume", str(part / "checkpoint.pth.tar")]))
    a = torch.load(full / "checkpoint.pth.tar", weights_only=True)
    b = torch.load(part / "checkpoint.pth.tar", weights_only=True)
    assert a["model_args"]["partial_channels"] == 2
    for name, value in a["model"].items():
        assert torch.equal(value, b["model"][name]), name
    from modeling.supernet import AutoDeepLabSearch, SupernetConfig

    torch.manual_seed(0)  # the search's own seed: the same initial parameters
    init = AutoDeepLabSearch(SupernetConfig(**a["model_args"])).edge_logits.detach()
    assert not torch.allclose(a["model"]["edge_logits"], init, atol=1e-4)  # trained

    res = subprocess.run([sys.executable, "decode_autodeeplab.py", "--resume",
                          str(full / "checkpoint.pth.tar"), "--no-plot"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    from modeling.decoding import genotype_from_arch
    from engine.genotype_io import read_genotype

    expected = genotype_from_arch(a["model"]["alphas"], a["model"]["betas"],
                                  a["model"]["edge_logits"])
    assert read_genotype(full / "genotype.json").to_json() == expected.to_json()


def _tiny_supernet():
    from modeling.supernet import AutoDeepLabSearch, SupernetConfig
    torch.manual_seed(0)
    return AutoDeepLabSearch(SupernetConfig(num_classes=3, num_layers=3, filter_multiplier=2,
                                            block_multiplier=2, steps=2))


@pytest.mark.parametrize("grad_clip", [0.0, 0.01])
def test_loss_scaled_steps_equal_plain_ones(grad_clip):
    # fp16 search steps scale the loss and unscale the gradients (before clipping, and before
    # the architecture statistics). A CPU GradScaler stands in for the CUDA one: in float32
    # a power-of-two scale is exact, so both steps must equal the unscaled ones bit for bit.
    from engine.search import Architect, weight_step
    images, targets = torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32))
    criterion = torch.nn.CrossEntropyLoss()
    results = []
    for scaler in (None, torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)):
        model = _tiny_supernet()
        optimizer = torch.optim.SGD(model.weight_parameters(), lr=0.1, momentum=0.9)
        weight_step(model, criterion, optimizer, model.weight_parameters(), images, targets,
                    grad_clip, scaler=scaler)
        architect = Architect(model, criterion, 0.01, 1e-3, scaler=scaler)
        architect.step(images, targets)
        results.append(([p.detach().clone() for p in model.parameters()],
                         architect.stats.last))
    for plain, scaled in zip(results[0][0], results[1][0]):
        assert torch.equal(plain, scaled)
    assert results[0][1] == results[1][1]  # gradient norms and update sizes, unscaled


def test_loss_scaled_step_that_overflows_is_skipped_and_the_scale_lowered():
    from engine.search import weight_step
    model = _tiny_supernet()
    optimizer = torch.optim.SGD(model.weight_parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.weight_parameters()]
    model.weight_parameters()[0].register_hook(lambda grad: grad * float("inf"))  # overflow
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    weight_step(model, torch.nn.CrossEntropyLoss(), optimizer, model.weight_parameters(),
                torch.randn(2, 3, 32, 32), torch.randint(0, 3, (2, 32, 32)), 5.0, scaler=scaler)
    assert scaler.get_scale() == 2.0 ** 9
    for p, b in zip(model.weight_parameters(), before):
        assert torch.equal(p, b)
