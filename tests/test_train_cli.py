"""`python -m gptjax.train` on the tiny config: outputs, exact resume, signals, bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, checkpoint_params, run_cli

TINY = ("gptjax.train", "--config", "configs/tiny.py")
QUIET = ("--config.train.progress=False",)


def _metrics(workdir):
    """{step: record}, the last record per step (a resumed run logs some steps twice)."""
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            out[rec["step"]] = rec
    return out


def test_tiny_run_writes_everything(tmp_path):
    wd = tmp_path / "run"
    r = run_cli(*TINY, "--workdir", str(wd))
    assert r.returncode == 0, r.stderr
    assert "tok_s=" in r.stderr  # the progress bar
    assert "val_loss" in r.stdout
    metrics = _metrics(wd)
    assert sorted(metrics) == [5, 10, 15, 20]
    for key in ("loss", "lr", "grad_norm", "tokens_per_sec", "mfu"):
        assert key in metrics[20]
    assert "val_loss" in metrics[10] and "val_loss" in metrics[20]
    assert metrics[20]["loss"] < metrics[5]["loss"]
    assert os.listdir(wd / "tb")  # TensorBoard events
    assert json.loads((wd / "config.json").read_text())["model"]["n_layer"] == 2
    assert sorted(os.listdir(wd / "checkpoints")) >= ["10", "20"]
    assert (wd / "tokenizer.json").exists()


def test_killed_run_resumes_bit_for_bit(tmp_path):
    args = (*TINY, *QUIET, "--config.train.steps=150", "--config.train.checkpoint_every=20",
            "--config.train.eval_every=50", "--config.train.log_every=1")
    ref = tmp_path / "ref"
    assert run_cli(*args, "--workdir", str(ref)).returncode == 0

    wd = tmp_path / "killed"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.Popen([sys.executable, "-m", *args, "--workdir", str(wd)], cwd=ROOT,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (wd / "checkpoints" / "40").exists():
        assert proc.poll() is None and time.time() < deadline, "no checkpoint before exit"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (wd / "checkpoints" / "150").exists()  # really killed mid-run
    r = run_cli(*args, "--workdir", str(wd))
    assert r.returncode == 0, r.stderr
    assert "resumed at step" in r.stderr

    a, b = _metrics(ref), _metrics(wd)
    assert sorted(a) == sorted(b) == list(range(1, 151))
    for s in a:
        assert a[s]["loss"] == b[s]["loss"], s  # bit for bit, every step
        assert a[s].get("val_loss") == b[s].get("val_loss"), s
    pa, pb = checkpoint_params(ref, 150), checkpoint_params(wd, 150)
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_array_equal(x, y)


def test_sigterm_saves_and_exits(tmp_path):
    wd = tmp_path / "term"
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.Popen(
        [sys.executable, "-m", *TINY, *QUIET, "--config.train.steps=100000",
         "--config.train.checkpoint_every=100000", "--config.train.eval_every=100000",
         "--workdir", str(wd)], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (wd / "metrics.jsonl").exists() or os.path.getsize(wd / "metrics.jsonl") < 500:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    saved = [int(s) for s in os.listdir(wd / "checkpoints") if s.isdigit()]
    assert len(saved) == 1 and saved[0] > 0
    assert f"saving step {saved[0]}" in err


@pytest.mark.parametrize("args, message", [
    (("--config.model.n_layr=3",), "unknown config key"),
    (("--config.mesh.data=3",), "needs 3 devices but 1 are available"),
    (("--config.data.text_path=/nonexistent/input.txt",), "does not exist"),
    (("--config.data.seq_len=64",), "longer than model.block_size=32"),
    (("--config.stage=pretrian",), "stage='pretrian' is unknown"),
    (("--config.model.n_layer=two",), "invalid literal for int"),
])
def test_bad_input_one_clear_message(tmp_path, args, message):
    r = run_cli(*TINY, *args, "--workdir", str(tmp_path / "w"))
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") <= 2  # one message, not a wall of text


def test_batch_must_divide_over_data_axes(tmp_path):
    r = run_cli(*TINY, "--config.train.batch_size=6", "--workdir", str(tmp_path / "w"),
                env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert r.returncode == 2 and "multiple of 4" in r.stderr, r.stderr


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"), (b"  \n\n ", "is empty"), (b"caf\xe9 au lait\n" * 10, "is not UTF-8"),
])
def test_bad_data_file(tmp_path, content, message):
    path = tmp_path / "input.txt"
    path.write_bytes(content)
    r = run_cli(*TINY, f"--config.data.text_path={path}", "--workdir", str(tmp_path / "w"))
    assert r.returncode == 2 and message in r.stderr and str(path) in r.stderr, r.stderr


def test_workdir_of_another_model_shape_is_refused_and_kept(tmp_path):
    wd = tmp_path / "w"
    assert run_cli(*TINY, *QUIET, "--config.train.steps=10", "--workdir", str(wd)).returncode == 0
    before = sorted(os.listdir(wd / "checkpoints"))
    r = run_cli(*TINY, *QUIET, "--config.model.n_embd=32", "--workdir", str(wd))
    assert r.returncode == 2 and "different model shape" in r.stderr, r.stderr
    assert sorted(os.listdir(wd / "checkpoints")) == before


def test_nan_loss_stops_with_step_and_keeps_last_good_checkpoint(tmp_path):
    wd = tmp_path / "w"
    ok = run_cli(*TINY, *QUIET, "--config.train.steps=10", "--workdir", str(wd))
    assert ok.returncode == 0
    # Resume with an absurd learning rate: Adam steps are lr-sized, so the parameters overflow.
    r = run_cli(*TINY, *QUIET, "--config.train.steps=20", "--config.optim.lr=1e30",
                "--config.optim.min_lr=1e30", "--config.optim.warmup_steps=0",
                "--workdir", str(wd))
    assert r.returncode == 2, r.stderr
    assert "the loss became nan at step 1" in r.stderr.lower() or "at step 1" in r.stderr
    assert "newest checkpoint (step 10, which matched its digest when this run restored it)" \
        in r.stderr
    assert sorted(os.listdir(wd / "checkpoints")) == ["10"]
    params = checkpoint_params(wd, 10)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(params))


def test_corrupt_checkpoint_is_reported_and_not_deleted(tmp_path):
    wd = tmp_path / "w"
    assert run_cli(*TINY, *QUIET, "--config.train.steps=10", "--workdir", str(wd)).returncode == 0
    state_dir = wd / "checkpoints" / "10" / "state"
    files = [p for p in state_dir.rglob("*") if p.is_file()]
    assert files
    for p in files:
        p.write_bytes(b"not a checkpoint")
    r = run_cli(*TINY, *QUIET, "--config.train.steps=20", "--workdir", str(wd))
    assert r.returncode == 2, r.stderr
    assert "checkpoint at step 10" in r.stderr and "fails its digest" in r.stderr, r.stderr
    assert "--config.train.resume=previous" in r.stderr
    assert "Traceback" not in r.stderr
    assert all(p.exists() for p in files)  # saved work is never deleted
