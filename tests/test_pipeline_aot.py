"""Every training step of configs/chatgpt_gpt2_124m.py compiles ahead of time for a TPU slice
(v5e:2x2) on this CPU host: `python -m gptjax.aot --topology`, XLA:TPU from the libtpu package,
no TPU. The suite compiles the steps at a reduced shape (1 layer, 64 wide, 512 tokens, context
128) to keep its time small; the full shape is the same command without the overrides.

libtpu is looked up as an importable package, then in $GPTJAX_LIBTPU_PATH and .venv/libtpu; the
test skips without it. .ci/run installs it into .venv/libtpu, beside the environment and not
importable from it: with libtpu importable every JAX process of the suite probes for a TPU and
logs errors. By hand (the release jax[tpu] pins: 0.0.42.1 for jax 0.10.2):

    pip install --no-deps --target .venv/libtpu libtpu==0.0.42.1
    python -m pytest tests/test_pipeline_aot.py"""

from __future__ import annotations

import importlib.util
import os
import re

import pytest
from conftest import ROOT, run_cli

pytestmark = pytest.mark.slow
SMALL = dict(n_layer=1, n_embd=64, n_head=2, vocab_size=512, block_size=128)


def _libtpu_env() -> dict[str, str]:
    if importlib.util.find_spec("libtpu") is not None:
        return {}
    for folder in (os.environ.get("GPTJAX_LIBTPU_PATH", ""), str(ROOT / ".venv" / "libtpu")):
        if folder and os.path.isdir(os.path.join(folder, "libtpu")):
            return {"PYTHONPATH": os.pathsep.join(filter(None, [
                folder, os.environ.get("PYTHONPATH", "")]))}
    pytest.skip("libtpu is not installed (the TPU compile needs XLA:TPU): pip install "
                "--no-deps --target .venv/libtpu libtpu==<jax[tpu]'s pin>, or set "
                "GPTJAX_LIBTPU_PATH")


def test_every_stage_of_the_gpt2_pipeline_compiles_for_a_tpu_slice():
    env = {**_libtpu_env(), "JAX_PLATFORMS": "cpu", "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
    small = [f"--config.stages.{s}.model.{k}={v}" for s in ("sft", "reward", "judge", "ppo")
             for k, v in SMALL.items()]
    r = run_cli("gptjax.aot", "--config", "configs/chatgpt_gpt2_124m.py", "--topology",
                "v5e:2x2", *small, "--config.stages.ppo.ppo.max_new_tokens=16",
                "--config.stages.ppo.ppo.max_prompt_tokens=48", env_extra=env,
                timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "## 4 x TPU v5 lite" in r.stdout
    rows = re.findall(r"^\| (\w+) \((\w+)\) \| (\w+) \| ([\d.]+) \|", r.stdout, re.M)
    assert [(s, k, p) for s, k, p, _ in rows] == [
        ("sft", "sft", "step"), ("reward", "reward", "step"), ("ppo", "ppo", "rollout"),
        ("ppo", "ppo", "scoring"), ("ppo", "ppo", "update")]
    assert "judge: the same step as reward" in r.stderr
    # memory against the chip's HBM, then each phase's collectives and roofline on v5e
    assert "| of v5e HBM |" in r.stdout and "| all-reduce n / MiB |" in r.stdout
    update = r"^\| ppo \(ppo\) \| update \| \d+ / [\d,.]+ \|.*\| [\d.]+ \|$"
    assert re.search(update, r.stdout, re.M)
