"""Real multi-process runs on localhost (launch/local.py, gloo collectives): the same losses and
checkpoint as one process, restore on another process count, a dead peer, and bad input.

Tolerance: 2 processes x 2 devices and 1 process x 4 devices run the same program on the same
global batches, but their all-reduces differ (gloo across processes vs in-process), so sums may
round differently. Losses must agree to rel 1e-5 (float32; measured: 9 of 10 steps bitwise
equal, the other 6e-8 apart), parameters to rtol 1e-5 + atol 5e-6 (measured: 57% of the values
bitwise equal, the largest absolute difference 8e-7).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from conftest import ROOT, checkpoint_params, run_cli
from gptjax.checkpoint import Checkpointer

RTOL = 1e-5
TINY = ("--config", "configs/tiny.py", "--config.train.progress=False",
        "--config.train.log_every=1")


def _env(devices: int | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env.update(PYTHONUNBUFFERED="1", JAX_PLATFORMS="cpu")
    if devices:
        env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    return env


def _launch(processes: int, devices: int, *train_args, timeout=240):
    return subprocess.run(
        [sys.executable, "launch/local.py", "--num_processes", str(processes),
         "--devices_per_process", str(devices), "--", *train_args],
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(n: int, pid: int, port: int, log, *train_args, devices: int = 1):
    """One bare `python -m gptjax.train` process of an n-process run (no launcher)."""
    return subprocess.Popen(
        [sys.executable, "-m", "gptjax.train", *train_args,
         "--coordinator_address", f"127.0.0.1:{port}", "--num_processes", str(n),
         "--process_id", str(pid)],
        cwd=ROOT, env=_env(devices), stdout=log, stderr=subprocess.STDOUT)


def _metrics(workdir) -> list[dict]:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _losses(workdir) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _metrics(workdir)}


def test_two_processes_match_one_process_and_continue_on_one_device(tmp_path):
    """10 steps as 2 processes x 2 devices and as 1 process x 4 devices, then the 2-process
    checkpoint continued by 1 process on 1 device (one test: the runs are shared)."""
    two, one = tmp_path / "two_procs", tmp_path / "one_proc"
    r = _launch(2, 2, *TINY, "--config.train.steps=10", "--workdir", str(two))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "logs in" in r.stdout
    r = run_cli("gptjax.train", *TINY, "--config.train.steps=15", "--workdir", str(one),
                env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert r.returncode == 0, r.stderr

    recs = _metrics(two)
    assert [r["step"] for r in recs] == list(range(1, 11))  # one writer: process 0
    a, b = _losses(two), _losses(one)
    rel = max(abs(a[s] - b[s]) / abs(b[s]) for s in a)
    assert rel <= RTOL, (a, b)
    assert recs[-1]["val_loss"] == pytest.approx(_metrics(one)[9]["val_loss"], rel=RTOL)
    pa, pb = checkpoint_params(two, 10), checkpoint_params(one, 10)
    for x, y in zip(jax.tree.leaves(pa), jax.tree.leaves(pb)):
        np.testing.assert_allclose(x, y, rtol=RTOL, atol=5e-6)
    # Each process logged to its own file; only process 0 reports.
    logs = two / "logs"
    p0, p1 = (logs / "process_0.log").read_text(), (logs / "process_1.log").read_text()
    assert "in 2 processes" in p0 and "stopped at step 10" in p0
    assert "gptjax pretrain" not in p1 and "stopped at step" not in p1
    data = sorted(os.listdir(two / "checkpoints" / "10" / "data"))
    assert [f for f in data if f.endswith(".json")] == ["process_0-of-2.json",
                                                        "process_1-of-2.json"]

    # The 2-process checkpoint, resharded onto 1 device: sampling, and training on.
    r = run_cli("gptjax.sample", "--workdir", str(two), "--prompt", "ROMEO:",
                "--max_new_tokens", "8")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ROMEO:")
    r = run_cli("gptjax.train", *TINY, "--config.train.steps=15",
                "--config.runtime.cpu_devices=1", "--workdir", str(two))
    assert r.returncode == 0, r.stderr
    assert "mesh {'data': 1, 'fsdp': 1, 'tensor': 1}" in r.stderr
    assert "resumed at step 10" in r.stderr
    assert "written by 2 processes and this run has 1" in r.stderr
    a = _losses(two)
    assert sorted(a) == list(range(1, 16)) and all(np.isfinite(list(a.values())))
    # The same steps 11..15 as the uninterrupted run: the data position carried over.
    rel = max(abs(a[s] - b[s]) / abs(b[s]) for s in range(11, 16))
    assert rel <= RTOL, (a, b)


def test_dead_process_stops_the_other_and_the_run_resumes(tmp_path):
    wd = tmp_path / "run"
    args = (*TINY, "--config.train.checkpoint_every=10", "--config.train.eval_every=100",
            "--workdir", str(wd))
    port = _free_port()
    with open(tmp_path / "p0.log", "w") as log0, open(tmp_path / "p1.log", "w") as log1:
        p0 = _start(2, 0, port, log0, *args, "--config.train.steps=300",
                    "--distributed_timeout", "3")
        p1 = _start(2, 1, port, log1, *args, "--config.train.steps=300",
                    "--distributed_timeout", "3")
        try:
            deadline = time.time() + 120
            while not (wd / "checkpoints" / "10").exists():
                assert p0.poll() is None and p1.poll() is None, "a process exited early"
                assert time.time() < deadline, "no checkpoint in 120 s"
                time.sleep(0.02)
            p1.send_signal(signal.SIGKILL)
            killed = time.time()
            code = p0.wait(timeout=60)
            waited = time.time() - killed
        finally:
            for p in (p0, p1):
                if p.poll() is None:
                    p.kill()
                    p.wait()
    log = (tmp_path / "p0.log").read_text()
    assert code != 0
    assert waited < 3 + 15, waited  # the heartbeat timeout plus slack
    assert "another task died" in log, log[-2000:]
    assert not (wd / "checkpoints" / "300").exists()
    last = Checkpointer(str(wd)).latest_step()
    assert last is not None and last >= 10
    # Relaunched, both processes resume from the last checkpoint. Then Ctrl-C to the launcher:
    # every process must stop after the same step and save it together.

    def logged_lines():  # complete lines only: process 0 may be writing one
        return (wd / "metrics.jsonl").read_text().count("\n")

    logged = logged_lines()  # the killed run logged some steps past its last checkpoint
    with open(tmp_path / "launcher.log", "w") as log:
        launcher = subprocess.Popen(
            [sys.executable, "launch/local.py", "--num_processes", "2", "--", *args,
             "--config.train.steps=300"], cwd=ROOT, env=_env(), stdout=log,
            stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 120
            while logged_lines() < logged + 3:  # the resumed run is past its first steps
                assert launcher.poll() is None, "the relaunched run stopped early"
                assert time.time() < deadline, "the relaunched run made no progress in 120 s"
                time.sleep(0.05)
            launcher.send_signal(signal.SIGINT)
            launcher.wait(timeout=60)
        finally:
            if launcher.poll() is None:
                launcher.kill()
                launcher.wait()
    out = (tmp_path / "launcher.log").read_text()
    assert launcher.returncode == 128 + signal.SIGINT, out
    assert f"resumed at step {last}" in out
    saved = Checkpointer(str(wd)).latest_step()
    assert saved > last + 2 and f"saving step {saved} before exiting" in out
    assert not (wd / "checkpoints" / "300").exists()


def test_unreachable_coordinator_fails_within_the_timeout():
    t0 = time.time()
    r = run_cli("gptjax.train", *TINY, "--coordinator_address", f"127.0.0.1:{_free_port()}",
                "--num_processes", "2", "--process_id", "1", "--distributed_timeout", "2")
    assert r.returncode == 2
    assert "could not join the distributed run as process 1 of 2" in r.stderr
    assert time.time() - t0 < 2 + 20


def test_process_id_out_of_range_is_refused():
    r = run_cli("gptjax.train", *TINY, "--coordinator_address", "127.0.0.1:1",
                "--num_processes", "2", "--process_id", "2")
    assert r.returncode == 2
    assert "--process_id=2 is outside 0..1" in r.stderr


def test_fewer_processes_than_announced_fail_within_the_timeout(tmp_path):
    port = _free_port()
    args = (*TINY, "--workdir", str(tmp_path / "run"), "--distributed_timeout", "2")
    t0 = time.time()
    with open(tmp_path / "p0.log", "w") as l0, open(tmp_path / "p1.log", "w") as l1:
        procs = [_start(3, 0, port, l0, *args), _start(3, 1, port, l1, *args)]
        codes = [p.wait(timeout=60) for p in procs]
    assert codes == [2, 2]
    assert time.time() - t0 < 2 + 30
    for i in range(2):
        assert f"process {i} of 3" in (tmp_path / f"p{i}.log").read_text()


def test_mesh_larger_than_the_global_device_count(tmp_path):
    wd = tmp_path / "run"
    r = _launch(2, 1, *TINY, "--config.mesh.data=4", "--workdir", str(wd))
    assert r.returncode == 2
    assert "exited with status 2" in r.stderr
    log = (wd / "logs" / "process_0.log").read_text()
    assert "needs 4 devices but 2 are available" in log
    assert "2 processes with 1 device(s) each" in log
