"""The README's first command: nanoGPT's baby GPT on Tiny Shakespeare, 2000 steps on this CPU."""

import json
import time

import pytest

from conftest import run_cli


@pytest.mark.slow
def test_shakespeare_char_reaches_nanogpt_validation_loss(tmp_path):
    t0 = time.perf_counter()
    r = run_cli("gptjax.train", "--config", "configs/shakespeare_char.py",
                "--config.train.progress=False", "--workdir", str(tmp_path / "run"), timeout=900)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    final = [rec for rec in records if rec["step"] == 2000 and "val_loss" in rec]
    assert final, "no validation loss at step 2000"
    print(f"val_loss {final[-1]['val_loss']:.4f} after 2000 steps, {wall:.0f}s wall")
    # nanoGPT reports about 1.88 for these settings (1.886 measured once on a 2-core machine).
    # Measured here (see README): seeds 0/1/2 give 1.8924/1.8809/1.8763, and nanoGPT's own loop
    # in PyTorch (benchmarks/nanogpt_train.py, same data and settings) gives 1.90-1.92, so a
    # single seed sits within about +-0.01 of 1.885. The bound allows that spread and no more.
    assert final[-1]["val_loss"] <= 1.90
