"""A killed run resumes with nothing lost, checkpoints are never corrupted, bad input
gets one clear line. Both entry scripts, mostly on tiny settings; the kill tests use real
subprocesses."""
import csv
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import train
import train_autodeeplab
from config_utils import search_args, train_args
from engine.genotype_io import read_genotype, save_genotype
from modeling.genotypes import GENOTYPES, Genotype
from utils.interrupt import Interrupted, exit_after_stop

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, OMP_NUM_THREADS="1")
SEARCH_TINY = ["--dataset", "synthetic", "--filter-multiplier", "2", "--num-layers", "3",
               "--steps", "2", "--block-multiplier", "2", "--crop-size", "32",
               "--batch-size", "2", "--workers", "0", "--no-val"]
# 8 A batches per epoch; the architecture steps start in the second epoch.
SEARCH_RUN = [*SEARCH_TINY, "--epochs", "2", "--alpha-epoch", "1", "--max-samples", "32"]
RETRAIN_TINY = ["--dataset", "synthetic", "--filter-multiplier", "2", "--crop-size", "32",
                "--batch-size", "2", "--workers", "0", "--warmup-iters", "1"]
# 6 batches per epoch; drop path makes the run draw random numbers every step.
RETRAIN_RUN = [*RETRAIN_TINY, "--max-samples", "12", "--iters", "14", "--eval-interval", "7",
               "--no-val", "--drop-path-keep-prob", "0.8"]


@pytest.fixture(autouse=True)
def one_thread():
    """In-process runs compute with one thread, like the OMP_NUM_THREADS=1 subprocesses, so
    that their results can be compared bit for bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def search(*argv):
    return train_autodeeplab.main(search_args.get_args_parser().parse_args(list(map(str, argv))))


def retrain(*argv):
    return train.main(train_args.get_args_parser().parse_args(list(map(str, argv))))


def spawn(script, *argv, session=False, signal_at=None):
    """A training subprocess; `session=True` gives it its own process group (a terminal's
    Ctrl-C reaches the whole group, DataLoader workers included). `signal_at=(count, signum)`
    makes it send itself `signum` (to its whole group with `session`) after `count`
    optimizer steps."""
    command = [sys.executable, script]
    if signal_at is not None:  # tests/signal_at_step.py
        count, signum = signal_at
        command = [sys.executable, "tests/signal_at_step.py", str(count), str(int(signum)),
                   "group" if session else "self", script]
    return subprocess.Popen([*command, *map(str, argv)], cwd=REPO, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=session)


def cli(script, *argv, timeout=180):
    return subprocess.run([sys.executable, script, *map(str, argv)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def metrics_rows(run, drop):
    with open(run / "metrics.csv") as f:
        return [{k: v for k, v in row.items() if k != drop} for row in csv.DictReader(f)]


def assert_same_model(a, b):
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.equal(value, b[name]), name


@pytest.fixture(scope="module")
def search_reference(tmp_path_factory):
    """An uninterrupted search, the one every interrupted search must reproduce."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = search(*SEARCH_RUN, "--out-dir", tmp_path_factory.mktemp("ref") / "search")
    torch.set_num_threads(threads)
    return dict(load(out / "checkpoint.pth.tar"), out=out)


# ---------------------------------------------------------------- interruption and resume


@pytest.mark.slow
def test_search_killed_mid_epoch_resumes_bit_identical(tmp_path, search_reference):
    out = tmp_path / "killed"
    # Killed in the fourth batch of the second epoch: 8 weight steps, then 3 batches of a
    # weight and an architecture step, then one more step.
    proc = spawn("train_autodeeplab.py", *SEARCH_RUN, "--checkpoint-interval", "1",
                 "--out-dir", out, signal_at=(8 + 2 * 3 + 1, signal.SIGKILL))
    assert proc.wait(timeout=120) == -signal.SIGKILL
    killed = load(out / "checkpoint.pth.tar")
    assert killed["epoch"] == 1 and killed["position"]["batch"] == 3  # killed mid-epoch
    assert killed["b_consumed"] == killed["position"]["batch"]
    search("--resume", out / "checkpoint.pth.tar")
    resumed = load(out / "checkpoint.pth.tar")
    assert resumed["epoch"] == 2 and resumed["position"] is None
    assert resumed["global_step"] == search_reference["global_step"] == 16
    assert_same_model(search_reference["model"], resumed["model"])  # alphas, betas, BN too
    assert torch.equal(resumed["model"]["alphas"], search_reference["model"]["alphas"])
    # Epoch means are carried through the checkpoint: the report matches as well.
    assert metrics_rows(out, drop="seconds") == metrics_rows(search_reference["out"],
                                                             drop="seconds")
    log = (out / "search.log").read_text()
    assert log.count("search done") == 1 and "resumed from" in log


@pytest.mark.slow
@pytest.mark.parametrize("signum, code, workers", [(signal.SIGTERM, 143, 0),
                                                   (signal.SIGINT, 130, 2)])
def test_search_signal_writes_checkpoint_and_exits(tmp_path, search_reference, signum, code,
                                                   workers):
    out = tmp_path / "signalled"
    # No periodic checkpoints: the only mid-epoch one is the signal's. SIGINT goes to the
    # whole process group, as Ctrl-C does, workers included.
    # whole process group, as Ctrl-C does, workers included. The signal lands inside the
    # third batch of the second epoch, which finishes before the run stops.
    proc = spawn("train_autodeeplab.py", *SEARCH_RUN, "--checkpoint-interval", "0",
                 "--workers", workers, "--out-dir", out, session=True,
                 signal_at=(8 + 2 * 2 + 1, signum))
    assert proc.wait(timeout=120) == code, proc.stderr.read()[-2000:]
    stopped = load(out / "checkpoint.pth.tar")
    assert stopped["epoch"] == 1 and stopped["position"]["batch"] == 3
    assert "--resume" in proc.stderr.read()
    search("--resume", out / "checkpoint.pth.tar", "--workers", "0")
    assert_same_model(search_reference["model"], load(out / "checkpoint.pth.tar")["model"])


@pytest.fixture
def genotype_file(tmp_path):
    path = tmp_path / "genotype.json"
    save_genotype(Genotype((0, 1, 1), GENOTYPES["autodeeplab"].cell), path)
    return path


@pytest.fixture(scope="module")
def retrain_reference(tmp_path_factory):
    """An uninterrupted retraining, with the genotype file it used."""
    folder = tmp_path_factory.mktemp("retrain_ref")
    genotype = folder / "genotype.json"
    save_genotype(Genotype((0, 1, 1), GENOTYPES["autodeeplab"].cell), genotype)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = retrain(*RETRAIN_RUN, "--genotype", genotype, "--out-dir", folder / "full")
    torch.set_num_threads(threads)
    return dict(load(out / "checkpoint.pth.tar"), out=out, genotype=genotype)


@pytest.mark.slow
def test_retrain_killed_mid_interval_resumes_bit_identical(tmp_path, retrain_reference):
    reference, full = retrain_reference, retrain_reference["out"]
    genotype_file = retrain_reference["genotype"]
    out = tmp_path / "killed"
    # Killed in step 10: inside the second interval and the second epoch (steps 7..13,
    # epochs of 6 steps); the last checkpoint is step 9's.
    proc = spawn("train.py", *RETRAIN_RUN, "--genotype", genotype_file,
                 "--checkpoint-interval", "1", "--out-dir", out,
                 signal_at=(10, signal.SIGKILL))
    assert proc.wait(timeout=120) == -signal.SIGKILL
    killed = load(out / "checkpoint.pth.tar")
    assert killed["position"] is not None and killed["step"] == 9
    retrain("--resume", out / "checkpoint.pth.tar")
    resumed = load(out / "checkpoint.pth.tar")
    assert resumed["step"] == reference["step"] == 14
    assert_same_model(reference["model"], resumed["model"])
    assert resumed["optimizer"]["state"][0]["momentum_buffer"].equal(
        reference["optimizer"]["state"][0]["momentum_buffer"])
    # The interval's mean loss survives the kill too (all columns but the wall time).
    assert metrics_rows(out, drop="seconds") == metrics_rows(full, drop="seconds")


@pytest.mark.slow
def test_retrain_sigterm_writes_checkpoint_and_exits_143(tmp_path, retrain_reference):
    out = tmp_path / "signalled"
    proc = spawn("train.py", *RETRAIN_RUN, "--genotype", retrain_reference["genotype"],
                 "--checkpoint-interval", "0", "--out-dir", out,
                 signal_at=(10, signal.SIGTERM))
    assert proc.wait(timeout=120) == 143, proc.stderr.read()[-2000:]
    checkpoint = out / "checkpoint.pth.tar"
    assert f"continue with: python train.py --resume {checkpoint}" in proc.stderr.read()
    stopped = load(checkpoint)
    assert stopped["step"] == 10 and stopped["position"] is not None
    retrain("--resume", out / "checkpoint.pth.tar")
    assert_same_model(retrain_reference["model"], load(out / "checkpoint.pth.tar")["model"])


@pytest.fixture(scope="module")
def finished_search(tmp_path_factory):
    """A finished one-epoch search: resuming it checks the flags and trains nothing."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = search(*SEARCH_TINY, "--epochs", "1", "--max-samples", "8",
                 "--out-dir", tmp_path_factory.mktemp("finished") / "search")
    torch.set_num_threads(threads)
    return out / "checkpoint.pth.tar"


def error_line(capsys, run, *argv):
    """Run `run(*argv)`, expect exit 2, return the last stderr line (the error)."""
    with pytest.raises(SystemExit) as info:
        run(*argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: "), err
    return last


def saved_args(checkpoint):
    import json

    return json.loads((Path(checkpoint).parent / "args.json").read_text())


@pytest.mark.parametrize("flag, value", [("--dataset", "camvid"), ("--num-layers", "4"),
                                         ("--block-multiplier", "1"), ("--steps", "3")])
def test_resume_with_other_shape_or_data_names_the_mismatch(capsys, finished_search, flag,
                                                            value):
    line = error_line(capsys, search, "--resume", finished_search, flag, value)
    assert flag in line and "differs from the checkpoint's" in line


def test_resume_with_other_class_count_names_it(tmp_path, capsys, finished_search):
    state = load(finished_search)
    state["model_args"]["num_classes"] = 3
    other = tmp_path / "classes" / "checkpoint.pth.tar"
    other.parent.mkdir()
    torch.save(state, other)
    line = error_line(capsys, search, "--resume", other)
    assert "3 classes" in line and "6" in line and str(other) in line


def test_other_flags_keep_the_checkpoint_value_unless_overridden(capsys, caplog,
                                                                 finished_search):
    search("--resume", finished_search, "--lr", "0.5", "--workers", "1")
    assert "ignoring --lr 0.5" in caplog.text and "--override lr" in caplog.text
    assert saved_args(finished_search)["lr"] != 0.5
    assert saved_args(finished_search)["workers"] == 1  # a flag that changes no result
    search("--resume", finished_search, "--lr", "0.5", "--override", "lr")
    assert saved_args(finished_search)["lr"] == 0.5
    line = error_line(capsys, search, "--resume", finished_search, "--filter-multiplier", "2",
                      "--override", "filter-multiplier")
    assert "cannot change on resume" in line
    line = error_line(capsys, search, "--resume", finished_search, "--override", "arch-lr")
    assert "--arch-lr is not given" in line
    line = error_line(capsys, search, *SEARCH_TINY, "--override", "lr")
    assert "only applies with --resume" in line


def test_retrain_override(tmp_path, capsys, genotype_file):
    out = retrain(*RETRAIN_TINY, "--max-samples", "4", "--iters", "2", "--no-val",
                  "--genotype", genotype_file, "--out-dir", tmp_path / "run")
    checkpoint = out / "checkpoint.pth.tar"
    retrain("--resume", checkpoint, "--momentum", "0.5")
    assert saved_args(checkpoint)["momentum"] == 0.9
    retrain("--resume", checkpoint, "--momentum", "0.5", "--override", "momentum")
    assert saved_args(checkpoint)["momentum"] == 0.5
    line = error_line(capsys, retrain, "--resume", checkpoint, "--override", "genotype",
                      "--genotype", genotype_file)
    assert "--genotype" in line


# ---------------------------------------------------------------- checkpoints and files


def test_failed_save_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    from utils.checkpoint import save_checkpoint
    from utils.errors import UserError

    path = tmp_path / "checkpoint.pth.tar"
    save_checkpoint({"kind": "x", "weights": torch.arange(10.0)}, path)
    before = path.read_bytes()

    def full_disk(obj, f, *args, **kwargs):
        with open(f, "wb") as handle:
            handle.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(UserError, match="No space left on device.*previous one is kept"):
        save_checkpoint({"kind": "x", "weights": torch.zeros(10)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pth.tar"]  # no temp file


def test_failed_save_mid_run_ends_in_one_line_and_keeps_the_checkpoint(tmp_path, capsys,
                                                                      monkeypatch):
    real_save = torch.save
    calls = []

    def fails_third(obj, f, *args, **kwargs):
        calls.append(obj.get("global_step"))
        if len(calls) == 3:
            with open(f, "wb") as handle:
                handle.write(b"half")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", fails_third)
    out = tmp_path / "run"
    line = error_line(capsys, search, *SEARCH_TINY, "--epochs", "1", "--max-samples", "16",
                      "--checkpoint-interval", "1", "--out-dir", out)
    assert str(out / "checkpoint.pth.tar") in line and "previous one is kept" in line
    assert load(out / "checkpoint.pth.tar")["global_step"] == calls[1] == 2
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("entry", ["search", "decode", "eval", "predict"])
@pytest.mark.parametrize("damage", ["truncated", "text"])
def test_unreadable_checkpoint_is_one_line_naming_the_file(tmp_path, capsys, finished_search,
                                                         entry, damage):
    import decode_autodeeplab
    import predict
    from config_utils.decode_args import get_args_parser as decode_parser

    bad = tmp_path / "bad.pth.tar"
    data = finished_search.read_bytes()
    bad.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"hello\n" * 50)
    runs = {
        "search": lambda: search("--resume", bad),
        "decode": lambda: decode_autodeeplab.main(decode_parser().parse_args(
            ["--resume", str(bad)])),
        "eval": lambda: retrain("--resume", bad, "--eval-only"),
        "predict": lambda: predict.main(predict.get_args_parser().parse_args(
            ["--checkpoint", str(bad), "--input", str(bad), "--out-dir", str(tmp_path)])),
    }
    line = error_line(capsys, runs[entry])
    assert str(bad) in line and "cannot be read" in line


def test_version_1_search_checkpoint_decodes_but_does_not_resume(tmp_path, capsys,
                                                                 finished_search):
    import decode_autodeeplab
    from config_utils.decode_args import get_args_parser as decode_parser

    old = tmp_path / "old" / "checkpoint.pth.tar"
    old.parent.mkdir()
    torch.save(dict(load(finished_search), version=1), old)
    line = error_line(capsys, search, "--resume", old)
    assert str(old) in line and "version 1" in line and "decode_autodeeplab.py" in line
    # Its alphas and betas mean what today's do: decoding it gives the same genotype.
    decode_autodeeplab.main(decode_parser().parse_args(["--resume", str(old)]))
    decode_autodeeplab.main(decode_parser().parse_args(["--resume", str(finished_search)]))
    assert (read_genotype(old.parent / "genotype.json")
            == read_genotype(finished_search.parent / "genotype.json"))


@pytest.mark.parametrize("entry", ["resume", "eval", "predict"])
def test_version_1_retrain_checkpoint_is_refused_saying_what_to_do(tmp_path, capsys,
                                                                   retrain_reference, entry):
    import predict

    old = tmp_path / "checkpoint.pth.tar"
    state = {k: v for k, v in retrain_reference.items() if k not in ("out", "genotype")}
    torch.save(dict(state, version=1), old)
    runs = {
        "resume": lambda: retrain("--resume", old),
        "eval": lambda: retrain("--resume", old, "--eval-only"),
        "predict": lambda: predict.main(predict.get_args_parser().parse_args(
            ["--checkpoint", str(old), "--input", str(old), "--out-dir", str(tmp_path)])),
    }
    line = error_line(capsys, runs[entry])
    assert str(old) in line and "version 1" in line and "train.py --genotype" in line


def test_pickled_objects_need_trust_checkpoint(tmp_path, capsys, finished_search):
    import decode_autodeeplab
    from config_utils.decode_args import get_args_parser as decode_parser

    state = load(finished_search)
    state["note"] = argparse_namespace = __import__("argparse").Namespace(x=1)
    assert argparse_namespace.x == 1
    pickled = tmp_path / "run" / "checkpoint.pth.tar"
    pickled.parent.mkdir()
    torch.save(state, pickled)
    line = error_line(capsys, search, "--resume", pickled)
    assert str(pickled) in line and "--trust-checkpoint" in line and "pickled" in line
    line = error_line(capsys, lambda: decode_autodeeplab.main(decode_parser().parse_args(
        ["--resume", str(pickled)])))
    assert "--trust-checkpoint" in line
    # Trusted on request: the (finished) search resumes, decode reads it.
    search("--resume", pickled, "--trust-checkpoint")
    decode_autodeeplab.main(decode_parser().parse_args(
        ["--resume", str(pickled), "--trust-checkpoint", "--no-plot"]))
    assert (pickled.parent / "genotype.json").is_file()


# ---------------------------------------------------------------- numerical faults


@pytest.mark.parametrize("entry", ["search", "retrain"])
def test_nan_loss_stops_naming_iteration_and_last_good_checkpoint(tmp_path, capsys, entry,
                                                                  genotype_file, monkeypatch):
    out = tmp_path / "run"
    anomaly = []
    real = torch.autograd.set_detect_anomaly
    monkeypatch.setattr(torch.autograd, "set_detect_anomaly",
                        lambda mode, *a, **k: anomaly.append(mode))
    if entry == "search":
        argv = [*SEARCH_TINY, "--epochs", "1", "--max-samples", "8"]
        run = search
    else:
        argv = [*RETRAIN_TINY, "--max-samples", "4", "--iters", "4", "--no-val",
                "--genotype", genotype_file]
        run = retrain
    # An absurd learning rate: the first step still gives finite weights, the second a NaN.
    line = error_line(capsys, run, *argv, "--lr", "1e30", "--checkpoint-interval", "1",
                      "--detect-anomaly", "--out-dir", out)
    real(False)
    assert anomaly == [True]
    assert "nan at iteration 1" in line
    assert f"last good checkpoint is {out / 'checkpoint.pth.tar'}" in line
    state = load(out / "checkpoint.pth.tar")
    assert all(torch.isfinite(v).all() for v in state["model"].values()
               if v.is_floating_point())


# ---------------------------------------------------------------- bad input


def make_camvid(root, size=(24, 32), n=4, splits=("train", "val")):
    """A tiny CamVid tree (class ids 0..10, 11 unlabelled)."""
    rng = np.random.default_rng(0)
    for split in splits:
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
                root / split / f"f{i}.png")
            Image.fromarray(rng.integers(0, 12, size, dtype=np.uint8)).save(
                root / f"{split}annot" / f"f{i}.png")
    return root


CAMVID_SEARCH = ["--dataset", "camvid", "--filter-multiplier", "2", "--num-layers", "3",
                 "--steps", "2", "--block-multiplier", "2", "--crop-size", "16",
                 "--batch-size", "2", "--epochs", "1", "--alpha-epoch", "0"]


def truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage, named", [
    (lambda root: truncate(root / "train/f2.png"), "train/f2.png"),
    (lambda root: Image.fromarray(np.full((24, 32), 40, np.uint8)).save(
        root / "trainannot/f3.png"), "trainannot/f3.png"),
])
def test_bad_file_found_inside_a_worker_is_one_line(tmp_path, capsys, damage, named):
    """A truncated image or labels outside the classes (not the ignore label), met by a
    DataLoader worker in the middle of an epoch: one line naming the file, exit 2."""
    root = make_camvid(tmp_path / "camvid")
    damage(root)
    line = error_line(capsys, search, *CAMVID_SEARCH, "--data-root", root, "--workers", "2",
                      "--no-val", "--out-dir", tmp_path / "run")
    assert named in line, line
    if "annot" in named:
        assert "[40]" in line


@pytest.mark.parametrize("damage, named", [
    (lambda root: Image.fromarray(np.zeros((5, 7), np.uint8)).save(root / "trainannot/f1.png"),
     "trainannot/f1.png"),
    (lambda root: [p.unlink() for p in (root / "val").iterdir()], "val"),
    (lambda root: __import__("shutil").rmtree(root / "valannot"), "valannot"),
    (lambda root: __import__("shutil").rmtree(root), "camvid"),
])
def test_bad_data_found_at_build_time_leaves_no_run_folder(tmp_path, capsys, damage, named):
    root = make_camvid(tmp_path / "camvid")
    damage(root)
    line = error_line(capsys, search, *CAMVID_SEARCH, "--data-root", root, "--workers", "0",
                      "--out-dir", tmp_path / "run")
    assert named in line
    assert not (tmp_path / "run").exists()


def test_gray_palette_rgba_images_are_converted_and_small_images_padded(tmp_path):
    root = make_camvid(tmp_path / "camvid", size=(12, 16))
    gray = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    Image.fromarray(gray, "L").save(root / "train/f0.png")
    palette = Image.fromarray(gray % 8, "P")
    palette.putpalette([v for i in range(256) for v in (i, 255 - i, 7 * i % 256)])
    palette.save(root / "train/f1.png")
    Image.fromarray(np.full((12, 16, 4), 99, np.uint8), "RGBA").save(root / "val/f0.png")
    # Crops of 32 from 12 x 16 images: padded (mean image, ignored labels), not an error.
    out = search(*CAMVID_SEARCH, "--crop-size", "32", "--data-root", root, "--workers", "0",
                 "--out-dir", tmp_path / "run")
    assert load(out / "checkpoint.pth.tar")["epoch"] == 1


GENOTYPE_PROBLEMS = {
    "unknown operation": (lambda r: r["cell"][0].__setitem__(0, [0, "conv_9x9"]),
                          "unknown operation 'conv_9x9'"),
    "wrong block count": (lambda r: r["cell"].pop(), "steps=5 but len(cell) = 4"),
    "three inputs in a block": (lambda r: r["cell"][0].append([1, "skip_connect"]),
                                "has 3 inputs"),
    "invalid input index": (lambda r: r["cell"][1].__setitem__(1, [7, "skip_connect"]),
                            "reads input 7"),
    "invalid path": (lambda r: r.__setitem__("network_path", [0, 2, 2]),
                     "jumps from level 0 to 2"),
    "wrong format": (lambda r: r.__setitem__("format", "darts"), "format 'darts'"),
    "wrong version": (lambda r: r.__setitem__("version", 99), "version 99"),
}


@pytest.mark.parametrize("problem", list(GENOTYPE_PROBLEMS))
def test_bad_genotype_json_is_one_line_at_the_train_cli(tmp_path, capsys, problem):
    import json

    record = Genotype((0, 1, 1), GENOTYPES["autodeeplab"].cell).to_json()
    change, message = GENOTYPE_PROBLEMS[problem]
    change(record)
    record.pop("num_layers", None) if problem == "invalid path" else None
    path = tmp_path / "genotype.json"
    path.write_text(json.dumps(record))
    line = error_line(capsys, retrain, *RETRAIN_TINY, "--iters", "1", "--genotype", path,
                      "--out-dir", tmp_path / "run")
    assert message in line and str(path) in line
    assert not (tmp_path / "run").exists()


def test_run_folder_of_another_run_is_refused(tmp_path, capsys, finished_search):
    other = tmp_path / "other"
    search(*SEARCH_TINY, "--epochs", "1", "--max-samples", "8", "--out-dir", other)
    before = (other / "checkpoint.pth.tar").read_bytes()
    line = error_line(capsys, search, *SEARCH_TINY, "--epochs", "1", "--max-samples", "8",
                      "--out-dir", other)
    assert "already holds a search run" in line
    # Resuming one run into the folder of another is refused as well.
    line = error_line(capsys, search, "--resume", finished_search, "--out-dir", other)
    assert str(other) in line and "already holds" in line
    assert (other / "checkpoint.pth.tar").read_bytes() == before


def test_run_folder_in_use_by_a_live_process_is_refused(tmp_path, capsys):
    import fcntl

    busy = tmp_path / "busy"
    busy.mkdir()
    with open(busy / ".lock", "a+") as held:  # what a running search holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("4242\n")
        held.flush()
        line = error_line(capsys, search, *SEARCH_TINY, "--epochs", "1", "--max-samples", "8",
                          "--out-dir", busy)
    assert "in use by another process (pid 4242)" in line
    assert not (busy / "checkpoint.pth.tar").exists()


def test_default_run_folders_of_one_second_are_distinct(tmp_path, monkeypatch):
    from utils.run import prepare_run_dir, release_run_dir

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("utils.run.time.strftime", lambda fmt: "20260101-000000")
    first = prepare_run_dir(None, None, "synthetic", "search")
    second = prepare_run_dir(None, None, "synthetic", "search")
    release_run_dir()
    assert first != second and first.is_dir() and second.is_dir()
    assert second.name == first.name + "-2"


# ---------------------------------------------------------------- load


@pytest.mark.slow
def test_concurrent_runs_finish_in_their_own_folders(tmp_path):
    runs = [tmp_path / f"run{i}" for i in range(4)]
    procs = [spawn("train_autodeeplab.py", *SEARCH_TINY, "--epochs", "1", "--max-samples", "8",
                   "--seed", str(i), "--checkpoint-interval", "1", "--out-dir", run)
             for i, run in enumerate(runs)]
    for proc in procs:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()[-2000:]
    for i, run in enumerate(runs):
        log = (run / "search.log").read_text()
        assert log.count("search done") == 1 and f"search done: {run} " in log
        assert not any(str(other) in log for other in runs if other != run)
        state = load(run / "checkpoint.pth.tar")
        assert state["epoch"] == 1 and state["args"]["seed"] == i
        assert Path(state["args"]["out_dir"]) == run


@pytest.mark.parametrize("distributed, launch", [(False, "python"), (True, "torchrun ...")])
def test_stop_names_the_launch_to_continue_with_and_the_signal_code(caplog, distributed,
                                                                     launch):
    stop = Interrupted(signal.SIGTERM, "RUN/checkpoint.pth.tar")
    with pytest.raises(SystemExit) as exit_, caplog.at_level("WARNING"):
        exit_after_stop(stop, "train.py", distributed)
    assert exit_.value.code == 143
    assert f"continue with: {launch} train.py --resume RUN/checkpoint.pth.tar" in caplog.text
