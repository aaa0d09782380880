"""train.py and predict.py end to end on tiny settings: training, resume, eval, errors, DDP."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import predict
import train
from config_utils.train_args import get_args_parser
from engine.genotype_io import save_genotype
from engine.retrain import load_model
from modeling.genotypes import GENOTYPES, Genotype
from modeling.retrain_net import AutoDeepLab

REPO = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--filter-multiplier", "2", "--crop-size", "32",
        "--batch-size", "2", "--workers", "0", "--max-samples", "4", "--warmup-iters", "1"]
SHORT_PATH = (0, 1, 1)
ENV = dict(os.environ, OMP_NUM_THREADS="1")


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def genotype_file(tmp_path):
    path = tmp_path / "genotype.json"
    save_genotype(Genotype(SHORT_PATH, GENOTYPES["autodeeplab"].cell), path)
    return path


def run_train(*argv):
    return train.main(get_args_parser().parse_args([*TINY, *map(str, argv)]))


def cli(script, *argv, timeout=120):
    return subprocess.run([sys.executable, script, *map(str, argv)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def test_train_writes_a_self_describing_run(tmp_path, genotype_file):
    out = run_train("--genotype", genotype_file, "--iters", "4", "--eval-interval", "2",
                    "--out-dir", tmp_path / "run")
    for name in ("args.json", "metrics.csv", "train.log", "checkpoint.pth.tar", "best.pth.tar"):
        assert (out / name).is_file(), name
    assert any(p.name.startswith("events.out.tfevents") for p in out.iterdir())
    state = torch.load(out / "checkpoint.pth.tar", weights_only=True)
    assert state["kind"] == "autodeeplab-retrain" and state["step"] == 4
    assert {"optimizer", "scheduler", "scaler", "epoch", "args", "genotype"} <= set(state)
    assert state["genotype"]["network_path"] == list(SHORT_PATH)
    # The file alone rebuilds the model.
    model = AutoDeepLab.from_model_args(state["model_args"])
    model.load_state_dict(state["model"])
    assert len((out / "metrics.csv").read_text().splitlines()) == 3


def test_resume_equals_uninterrupted(tmp_path, genotype_file):
    common = ["--genotype", genotype_file, "--iters", "6", "--eval-interval", "2", "--no-val",
              "--drop-path-keep-prob", "0.8"]
    full = run_train(*common, "--out-dir", tmp_path / "full")
    run_train(*common, "--out-dir", tmp_path / "part", "--stop-after-iters", "3")
    part = train.main(get_args_parser().parse_args(
        ["--resume", str(tmp_path / "part/checkpoint.pth.tar")]))
    a = torch.load(full / "checkpoint.pth.tar", weights_only=True)
    b = torch.load(part / "checkpoint.pth.tar", weights_only=True)
    assert b["step"] == 6
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-6), key


def test_eval_only_and_predict(tmp_path, genotype_file, capsys):
    out = run_train("--genotype", genotype_file, "--iters", "2", "--eval-interval", "2",
                    "--out-dir", tmp_path / "run")
    metrics = train.main(get_args_parser().parse_args(
        ["--resume", str(out / "checkpoint.pth.tar"), "--eval-only", "--eval-scales", "0.5",
         "1.0", "--flip"]))
    assert 0 <= metrics["miou"] <= 1 and len(metrics["per_class_iou"]) == 6
    assert json.loads((out / "eval_val.json").read_text())["flip"] is True

    # Evaluation flags are this invocation's: --split test evaluates the test split.
    train.main(get_args_parser().parse_args(
        ["--resume", str(out / "best.pth.tar"), "--eval-only", "--split", "test"]))
    assert json.loads((out / "eval_test.json").read_text())["split"] == "test"

    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.zeros((45, 71, 3), np.uint8)).save(images / "a.png")
    Image.fromarray(np.full((20, 30, 3), 200, np.uint8)).save(images / "b.jpg")
    predict.main(predict.get_args_parser().parse_args(
        ["--checkpoint", str(out / "best.pth.tar"), "--input", str(images),
         "--out-dir", str(tmp_path / "pred")]))
    mask = Image.open(tmp_path / "pred/a_mask.png")
    assert mask.size == (71, 45) and mask.mode == "P"
    assert Image.open(tmp_path / "pred/a_overlay.png").size == (71, 45)
    assert Image.open(tmp_path / "pred/b_mask.png").size == (30, 20)
    speed = [line.split(" INFO ", 1)[1] for line in capsys.readouterr().err.splitlines()
             if " INFO speed on " in line]
    assert len(speed) == 1 and speed[0].startswith(
        "speed on CPU, 1 threads, input 2 sizes, 20 x 30 to 45 x 71: ")
    assert speed[0].endswith("ms (p90), 2 image(s) after 2 warm-up pass(es)")


def test_speed_report_summarises_the_timed_passes():
    seconds = [0.010, 0.020, 0.030, 0.040, 0.100]
    line = predict.speed_report(seconds, [(360, 480)] * 5, torch.device("cpu"), 1)
    # 5 images in 0.2 s; mean 40 ms; p90 between the two slowest (numpy's linear rule).
    assert ": 25.00 images/s, 40.0 ms per image (mean), 76.0 ms (p90), 5 image(s) after 1 " \
           "warm-up pass(es)" in line and "input 360 x 480" in line


def test_summary_prints_one_json_line():
    res = cli("train.py", "--arch", "autodeeplab-s", "--dataset", "cityscapes", "--summary",
              "--summary-size", "64", "128")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["params"] == 10147427 and summary["input"] == [64, 128]
    assert summary["multi_adds_g"] > 0


@pytest.mark.parametrize("make, flags, message", [
    (lambda d: (d / "g.json").write_text("{not json"), ["--genotype", "{d}/g.json"],
     "not valid JSON"),
    (lambda d: (d / "g.json").write_text('{"format": "autodeeplab-genotype", "version": 1, '
                                         '"network_path": [0, 3], "cell": []}'),
     ["--genotype", "{d}/g.json"], "jumps from level 0 to 3"),
    (lambda d: None, ["--genotype", "{d}/missing.json"], "does not exist"),
    (lambda d: np.save(d / "p.npy", np.zeros((2, 2), np.int64)),
     ["--network-path", "{d}/p.npy"], "network_path array must be 1-D"),
    (lambda d: np.save(d / "s.npy", np.zeros((3, 4), np.float32)),
     ["--net-arch", "{d}/s.npy", "--cell-arch", "{d}/s.npy"], "must have shape (L, 4, 3)"),
    (lambda d: None, [], "no architecture given"),
    (lambda d: None, ["--arch", "autodeeplab-s", "--genotype", "x"], "pass only one"),
])
def test_user_errors_are_one_line(tmp_path, make, flags, message):
    make(tmp_path)
    res = cli("train.py", "--summary", *[f.format(d=tmp_path) for f in flags])
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines


def test_network_path_array_takes_the_papers_cell(tmp_path):
    np.save(tmp_path / "network_path.npy", np.array(SHORT_PATH, np.int64))
    res = cli("train.py", "--summary", "--summary-size", "32", "32", "--network-path",
              tmp_path / "network_path.npy")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["network_path"] == list(SHORT_PATH)


def test_torchrun_two_processes_stay_in_sync(tmp_path, genotype_file):
    # One image per process: the synchronised batch norm pools the two (one alone cannot be
    # batch-normalised in the ASPP image pooling).
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
         "--standalone", "train.py", *TINY, "--batch-size", "1", "--genotype",
         str(genotype_file), "--iters", "3", "--eval-interval", "3", "--out-dir",
         str(tmp_path / "ddp"), "--device", "cpu"],
        cwd=REPO, env=ENV,
        capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    state = torch.load(tmp_path / "ddp/checkpoint.pth.tar", weights_only=True)
    assert state["step"] == 3 and state["args"]["batch_size"] == 1
    # Every rank all-gathers a checksum of its weights and buffers and fails on a mismatch.
    log = (tmp_path / "ddp/train.log").read_text()
    assert "weights identical on all 2 processes" in log
    assert len(list((tmp_path / "ddp").glob("events.out.tfevents*"))) == 1  # rank 0 only


def test_one_image_needs_several_processes(tmp_path, genotype_file):
    res = cli("train.py", *TINY, "--batch-size", "1", "--genotype", genotype_file,
              "--out-dir", tmp_path / "run")
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert lines == ["error: --batch-size must be at least 2 (or 1 per process under torchrun "
                     "with 2 or more processes, whose batch norm is synchronised): batch norm "
                     "in the ASPP image pooling needs two values per channel"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("size", [(32, 32), (40, 56)])
def test_export_onnx_runs_in_onnxruntime_like_pytorch(tmp_path, genotype_file, size):
    ort = pytest.importorskip("onnxruntime")
    run_train("--genotype", genotype_file, "--iters", "2", "--eval-interval", "2",
              "--out-dir", tmp_path / "run")
    checkpoint = tmp_path / "run/checkpoint.pth.tar"
    res = cli("train.py", "--resume", checkpoint, "--export-onnx", tmp_path / "model.onnx",
              "--export-size", *size)
    assert res.returncode == 0, res.stderr
    assert f"opset 17, images of {size[0]} x {size[1]}" in res.stderr
    model, _ = load_model(checkpoint, torch.device("cpu"))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    for batch in (1, 3):  # the batch axis is dynamic
        images = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(batch))
        (logits,) = session.run(None, {"images": images.numpy()})
        with torch.no_grad():
            expected = model(images)
        assert logits.shape == tuple(expected.shape) == (batch, 6, *size)
        np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("flags, message", [
    (["--warmup", "-1"], "--warmup must be >= 0, got -1"),
    (["--scales", "1.0", "0"], "--scales must be positive, got [1.0, 0.0]"),
    (["--crop-size", "0"], "--crop-size must be positive, got 0"),
])
def test_predict_user_errors_are_one_line(tmp_path, flags, message):
    res = cli("predict.py", "--checkpoint", tmp_path / "none.pth.tar", "--input", tmp_path,
              "--out-dir", tmp_path / "pred", *flags)
    assert res.returncode == 2, res.stderr
    assert res.stderr.strip().splitlines() == [f"error: {message}"]
    assert not (tmp_path / "pred").exists()
