"""A checkpoint that cannot be written: one line naming the step, the folder and the cause, exit 2,
the earlier checkpoints intact, the partial folder removed; a rerun with room continues exactly.

The failure is an OSError injected into orbax's write path (through the CLI, and in-process for
sync and async saves), and, where this machine lets the test mount one (root), a real full disk:
a tmpfs that holds the data and one checkpoint.
"""

import errno
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import ROOT, TRAINED_ARGS, checkpoint_params, run_cli
from jax.sharding import SingleDeviceSharding

from gptjax import checkpoint_digest as digest
from gptjax.checkpoint import Checkpointer
from gptjax.errors import CheckpointWriteError

TIMING = {"tokens_per_sec", "mfu"}
# Runs `python -m gptjax.train ARGS` with every epath write under a path containing TARGET
# failing as a full disk would (orbax writes its metadata and grain its iterator state that way).
INJECT = r"""
import errno, runpy, sys
from etils.epath import abstract_path
target = sys.argv.pop(1)
original = abstract_path.Path.write_text
def write_text(self, *args, **kwargs):
    if target in str(self):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))
    return original(self, *args, **kwargs)
abstract_path.Path.write_text = write_text
sys.argv[0] = "gptjax.train"
runpy.run_module("gptjax.train", run_name="__main__")
"""


def run_injected(target: str, *args):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    return subprocess.run([sys.executable, "-c", INJECT, target, *TRAINED_ARGS[1:], *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _metrics(workdir):
    out = {}
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            out[rec["step"]] = {k: v for k, v in rec.items() if k not in TIMING}
    return out


def assert_reported(r, wd, step: int, cause: str) -> None:
    """Exit 2, one error line naming the step, the folder and the cause, no traceback; the
    partial folder is gone."""
    assert r.returncode == 2, r.stderr[-3000:]
    assert "Traceback" not in r.stderr and "ERROR:absl" not in r.stderr, r.stderr[-3000:]
    errors = [x for x in r.stderr.splitlines() if x.startswith("gptjax: error:")]
    assert len(errors) == 1 and len(r.stderr.strip().splitlines()) <= 2, r.stderr[-3000:]
    assert f"step {step}" in errors[0] and str(wd / "checkpoints") in errors[0], errors[0]
    assert cause in errors[0] and "partial folder was removed" in errors[0], errors[0]
    assert not [n for n in os.listdir(wd / "checkpoints") if "tmp" in n]


def assert_continues_exactly(wd, trained, after: int) -> None:
    r = run_cli(*TRAINED_ARGS, "--workdir", str(wd))
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"resumed at step {after}" in r.stderr
    ref, got = _metrics(trained), _metrics(wd)
    assert [got[s] for s in range(after + 5, 31, 5)] == [ref[s] for s in range(after + 5, 31, 5)]
    for a, b in zip(jax.tree.leaves(checkpoint_params(trained, 30)),
                    jax.tree.leaves(checkpoint_params(wd, 30))):
        np.testing.assert_array_equal(a, b)


def test_async_save_failure_is_one_line_and_a_rerun_continues(trained, tmp_path):
    wd = tmp_path / "run"
    # The train state's metadata: orbax writes it in its background thread.
    r = run_injected("/checkpoints/20.orbax-checkpoint-tmp/state", "--workdir", str(wd))
    assert_reported(r, wd, 20, "No space left on device")
    assert "newest: step 10" in r.stderr and os.listdir(wd / "checkpoints") == ["10"]
    assert_continues_exactly(wd, trained, after=10)


@pytest.mark.parametrize("async_save", [False, True], ids=["sync", "async"])
def test_checkpointer_save_failure(async_save, tmp_path, monkeypatch, capfd):
    """In-process, on a small state: the error names the step, the folder and the cause, the
    partial folder is gone, the earlier checkpoint restores, and no traceback was printed."""
    from etils.epath import abstract_path
    original = abstract_path.Path.write_text

    def write_text(self, *args, **kwargs):
        if "/checkpoints/2.orbax-checkpoint-tmp/" in str(self):
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(abstract_path.Path, "write_text", write_text)
    state = {"w": jnp.arange(256, dtype=jnp.float32)}
    ckpt = Checkpointer(str(tmp_path), async_save=async_save)
    try:
        ckpt.save(1, state)
        with pytest.raises(CheckpointWriteError) as e:
            ckpt.save(2, state)
            ckpt.wait()
        message = str(e.value)
        assert f"step 2 in {tmp_path / 'checkpoints'}" in message
        assert "No space left on device" in message and "newest: step 1" in message
        assert os.listdir(tmp_path / "checkpoints") == ["1"]
        abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
            a.shape, a.dtype, sharding=SingleDeviceSharding(jax.devices()[0])), state)
        step, restored = ckpt.restore_latest(abstract)
        assert step == 1 and np.array_equal(restored["w"], state["w"])
    finally:
        ckpt.close()
    err = capfd.readouterr().err
    assert "Traceback" not in err and "ERROR:absl" not in err, err[-3000:]


def _size(path) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, n)) for r, _, ns in os.walk(path) for n in ns)


@pytest.fixture
def small_disk(tmp_path, trained):
    """A tmpfs with room for the tokenized data and about one and a half checkpoints."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    room = (_size(os.path.join(trained, "data")) + _size(os.path.join(trained, "tokenizer.json"))
            + int(1.6 * _size(os.path.join(trained, "checkpoints", "10"))) + (200 << 10))
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={room >> 10}k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_full_disk(small_disk):
    """A real ENOSPC from tensorstore's writes (the rerun with room is the test above)."""
    wd = small_disk / "run"
    r = run_cli(*TRAINED_ARGS, "--workdir", str(wd))
    kept = sorted(int(n) for n in os.listdir(wd / "checkpoints"))
    assert kept, r.stderr[-3000:]
    assert_reported(r, wd, kept[-1] + 10, "No space left on device")
    assert digest.check(str(wd / "checkpoints" / str(kept[-1])),
                        digest.read(str(wd / "checkpoints" / str(kept[-1])))) is None


def _unretrieved_gather(filename: str) -> None:
    """A gather whose failed future nobody retrieves, as orbax leaves a full disk's writes; its
    exception is raised from code compiled under FILENAME."""
    import asyncio
    import gc
    namespace: dict = {}
    exec(compile("async def write():\n    raise ValueError('RESOURCE_EXHAUSTED: Error writing')\n",
                 filename, "exec"), namespace)

    async def main():
        future = asyncio.gather(namespace["write"]())
        await asyncio.sleep(0.01)
        del future

    asyncio.run(main())
    gc.collect()


def test_unretrieved_write_errors_from_orbax_are_silenced_and_others_are_not(tmp_path, capfd,
                                                                             caplog):
    """asyncio logs the dropped gather of a full disk's failed writes when it is collected, at
    no fixed time (the test above saw it on one run of several): only those raised through
    orbax's code are dropped."""
    Checkpointer(str(tmp_path)).close()  # installs the filters
    _unretrieved_gather(os.path.join(str(tmp_path), "orbax", "checkpoint", "serialization.py"))
    assert "never retrieved" not in capfd.readouterr().err + caplog.text
    _unretrieved_gather(os.path.join(str(tmp_path), "elsewhere.py"))
    assert "exception was never retrieved" in capfd.readouterr().err + caplog.text
