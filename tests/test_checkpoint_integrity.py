"""Checkpoint digests: written by every save, checked at every restore; the resume switch.

In-process on a small pytree (Checkpointer alone), then end to end through the CLI on a copy of
the `trained` workdir with bytes flipped inside a tensor file of its newest checkpoint.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TRAINED_ARGS, checkpoint_params, run_cli
from jax.sharding import SingleDeviceSharding

from gptjax import checkpoint_digest as digest
from gptjax.checkpoint import Checkpointer
from gptjax.errors import CorruptCheckpoint

TIMING = {"tokens_per_sec", "mfu"}


def _state(x: float):
    return {"w": jnp.full((256,), x, jnp.float32), "n": jnp.asarray(int(x), jnp.int32)}


ABSTRACT = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
    a.shape, a.dtype, sharding=SingleDeviceSharding(jax.devices()[0])), _state(0.0))


def flip_bytes(path) -> None:
    data = bytearray(open(path, "rb").read())
    for i in range(len(data) // 2, len(data) // 2 + 4):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def tensor_file(step_dir) -> str:
    """The largest array-data file of a checkpoint's train state."""
    files = [os.path.join(r, n) for r, _, ns in os.walk(os.path.join(step_dir, "state"))
             for n in ns if os.path.basename(r) == "d"]
    return max(files, key=os.path.getsize)


@pytest.fixture
def saved(tmp_path):
    """A workdir with checkpoints 1 and 2 of a small state (w = 1.0, 2.0)."""
    ckpt = Checkpointer(str(tmp_path), async_save=False)
    try:
        for s in (1, 2):
            ckpt.save(s, _state(float(s)))
    finally:
        ckpt.close()
    return tmp_path


def test_every_save_writes_a_digest_of_its_files(saved, tmp_path_factory):
    for s in (1, 2):
        step_dir = str(saved / "checkpoints" / str(s))
        listed = digest.read(step_dir)
        items = {f for f in digest.files_of(step_dir) if f.startswith(("state/", "data/"))}
        assert items and items <= set(listed)
        assert digest.check(step_dir, listed) is None
        if shutil.which("sha256sum"):  # the file is sha256sum's own format
            r = os.system(f"cd {step_dir} && sha256sum --quiet -c {digest.DIGEST_FILE}")
            assert r == 0
    # The async path (the default) writes it through the same orbax hook.
    wd = tmp_path_factory.mktemp("async")
    ckpt = Checkpointer(str(wd))
    ckpt.save(7, _state(7.0))
    ckpt.close()
    assert digest.check(str(wd / "checkpoints" / "7"), digest.read(str(wd / "checkpoints" / "7"))) \
        is None


def test_flipped_bytes_are_refused_and_previous_moves_them_aside(saved):
    bad = tensor_file(saved / "checkpoints" / "2")
    flip_bytes(bad)
    rel = os.path.relpath(bad, saved / "checkpoints" / "2")
    ckpt = Checkpointer(str(saved))
    try:
        with pytest.raises(CorruptCheckpoint, match=f"step 2 .*fails its digest: {rel} changed"):
            ckpt.restore_latest(ABSTRACT)
        assert sorted(os.listdir(saved / "checkpoints")) == ["1", "2"]  # nothing touched
        step, state = ckpt.restore_latest(ABSTRACT, resume="previous")
        assert step == 1 and float(state["w"][0]) == 1.0
        assert not (saved / "checkpoints" / "2").exists()
        assert (saved / "corrupt_checkpoints" / "2" / rel).exists()  # moved, never deleted
        assert "matched its digest" in ckpt.describe(1)
        ckpt.save(2, _state(5.0))  # the step list was reread: step 2 is free again
        ckpt.wait()
    finally:
        ckpt.close()
    ckpt = Checkpointer(str(saved))
    try:
        step, state = ckpt.restore_latest(ABSTRACT)
    finally:
        ckpt.close()
    assert step == 2 and float(state["w"][0]) == 5.0


def test_no_checkpoint_verifies(saved):
    for s in (1, 2):
        flip_bytes(tensor_file(saved / "checkpoints" / str(s)))
    ckpt = Checkpointer(str(saved))
    try:
        with pytest.raises(CorruptCheckpoint, match="none of the 2 checkpoints .* verifies"):
            ckpt.restore_latest(ABSTRACT, resume="previous")
    finally:
        ckpt.close()
    assert sorted(os.listdir(saved / "checkpoints")) == ["1", "2"]
    assert not (saved / "corrupt_checkpoints").exists()


def test_without_digest_restored_unverified_and_damaged_digest_refused(saved, capfd):
    os.remove(saved / "checkpoints" / "2" / digest.DIGEST_FILE)
    ckpt = Checkpointer(str(saved))
    try:
        step, state = ckpt.restore_latest(ABSTRACT)
        assert step == 2 and float(state["w"][0]) == 2.0
        assert "restored unverified" in capfd.readouterr().err
        assert "unverified" in ckpt.describe(2)
        (saved / "checkpoints" / "1" / digest.DIGEST_FILE).write_text("not a digest\n")
        with pytest.raises(CorruptCheckpoint, match="step 1 .*damaged digest"):
            ckpt.restore(1, ABSTRACT)
    finally:
        ckpt.close()


def _metrics(workdir):
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            out[rec["step"]] = {k: v for k, v in rec.items() if k not in TIMING}
    return out


def test_cli_refuses_a_flipped_tensor_then_resumes_from_previous_exactly(trained, tmp_path):
    wd = tmp_path / "run"
    shutil.copytree(trained, wd)
    bad = tensor_file(wd / "checkpoints" / "30")
    flip_bytes(bad)
    rel = os.path.relpath(bad, wd / "checkpoints" / "30")
    before = (wd / "metrics.jsonl").read_text()

    r = run_cli(*TRAINED_ARGS, "--workdir", str(wd))
    assert r.returncode == 2, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "step 30" in lines[0] and rel in lines[0] and "train.resume=previous" in lines[0]
    assert (wd / "metrics.jsonl").read_text() == before  # not one step ran on it: no NaN later

    v = run_cli("gptjax.verify", "--workdir", str(wd))
    assert v.returncode == 1, v.stderr
    assert "step 20: ok" in v.stdout and f"step 30: FAILED: {rel} changed" in v.stdout

    r = run_cli(*TRAINED_ARGS, "--config.train.resume=previous", "--workdir", str(wd))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resumed at step 20" in r.stderr and "moved step 30" in r.stderr
    assert (wd / "corrupt_checkpoints" / "30" / rel).exists()
    ref, got = _metrics(trained), _metrics(wd)
    assert got[25] == ref[25] and got[30] == ref[30]  # = the uninterrupted run, from step 20
    for a, b in zip(jax.tree.leaves(checkpoint_params(trained, 30)),
                    jax.tree.leaves(checkpoint_params(wd, 30))):
        np.testing.assert_array_equal(a, b)
