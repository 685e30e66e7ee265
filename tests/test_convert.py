"""gptjax.convert: HF GPT-2 <-> gptjax workdir, checked against transformers' own forward pass.

torch and transformers are test-only: a randomly initialised GPT2LMHeadModel (no downloads) is
the independent implementation the gptjax logits are compared with.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from conftest import random_hf_gpt2

from gptjax.checkpoint import restore_params
from gptjax.convert import main, read_workdir_model
from gptjax.model import GPT

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HF_SHAPE = dict(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=1000)


@pytest.fixture(scope="module")
def hf_model():
    return random_hf_gpt2(**HF_SHAPE)


@pytest.fixture(scope="module")
def converted(hf_model, tmp_path_factory):
    """(HF dir, gptjax workdir) after `--from-hf`, run in-process through main()."""
    root = tmp_path_factory.mktemp("convert")
    hf_dir, workdir = str(root / "hf"), str(root / "workdir")
    hf_model.save_pretrained(hf_dir)
    assert main(["--from-hf", hf_dir, "--workdir", workdir]) == 0
    return hf_dir, workdir


def _gptjax_logits(workdir: str, tokens: np.ndarray) -> np.ndarray:
    m = read_workdir_model(workdir)
    model = GPT(m)
    abstract = nn.unbox(jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))))["params"]
    step, params = restore_params(workdir, abstract)
    assert step == 0
    return np.asarray(model.apply({"params": params}, jnp.asarray(tokens)))


def test_workdir_is_a_gptjax_run(converted):
    _, workdir = converted
    with open(os.path.join(workdir, "config.json")) as f:
        config = json.load(f)
    m = config["model"]
    assert (m["n_layer"], m["n_head"], m["n_embd"], m["block_size"], m["vocab_size"]) == (
        2, 4, 64, 64, 1000)
    assert m["bias"] is True and m["dtype"] == "float32" and config["stage"] == "pretrain"
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "0"))


def test_workdir_restores_as_the_pretrain_stage_restores(hf_model, converted):
    """The step-0 checkpoint is what `python -m gptjax.train --workdir DIR` resumes: the full
    train state of pretrain.build (HF weights, zero Adam moments) and data position 0."""
    from gptjax import checkpoint, config as config_lib
    from gptjax.data import lm as lm_data
    from gptjax.loops import pretrain
    hf_dir, workdir = converted
    config = config_lib.base_config()
    config_lib.overrides_from_dict(config, {
        "model.n_layer": 2, "model.n_head": 4, "model.n_embd": 64, "model.block_size": 64,
        "model.vocab_size": 1000, "mesh.data": 1, "mesh.fsdp": 1, "mesh.tensor": 1,
        "train.batch_size": 1})
    pieces = pretrain.build(config, jax.devices()[:1])
    data_iter = lm_data.train_iterator(np.arange(200, dtype=np.uint16), 64, 1, 0)
    ckpt = checkpoint.Checkpointer(workdir, async_save=False)
    try:
        assert ckpt.latest_step() == 0
        state = ckpt.restore(0, pieces.abstract, data_iter)  # includes the shape check
        assert int(state.step) == 0 and data_iter.get_state() == {"next_index": 0}
        hf = {k.removeprefix("transformer."): v.numpy() for k, v in hf_model.state_dict().items()}
        np.testing.assert_array_equal(state.params["h_1"]["mlp"]["c_fc"]["kernel"],
                                      hf["h.1.mlp.c_fc.weight"])
        np.testing.assert_array_equal(state.params["wte"]["embedding"][:1000], hf["wte.weight"])
        assert all(not np.any(x) for x in jax.tree.leaves(state.opt_state))
    finally:
        ckpt.close()


def test_logits_match_transformers(hf_model, converted):
    """gptjax(converted weights) == torch GPT-2 to 1e-4 (fp32); padded vocab columns masked."""
    import torch
    _, workdir = converted
    tokens = np.random.default_rng(0).integers(0, HF_SHAPE["vocab_size"], (3, 64))
    with torch.no_grad():
        want = hf_model(torch.from_numpy(tokens)).logits.numpy()  # (B, T, V)
    got = _gptjax_logits(workdir, tokens)  # (B, T, V') with V' = 1024
    assert got.shape == (3, 64, 1024)
    err = float(np.abs(got[..., :1000] - want).max())
    print(f"max |logit diff| gptjax vs transformers: {err:.3g} (logit scale "
          f"{np.abs(want).max():.3g})")
    assert err < 1e-4
    assert np.all(got[..., 1000:] == np.finfo(np.float32).min)


def test_round_trip_is_bit_exact(hf_model, converted, tmp_path):
    """HF -> gptjax -> HF through the real entry point (a subprocess): every tensor identical,
    and transformers loads the export."""
    import torch
    import transformers
    hf_dir, workdir = converted
    out = str(tmp_path / "export")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-m", "gptjax.convert", "--workdir", workdir, "--to-hf", out],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    before = load_file(os.path.join(hf_dir, "model.safetensors"))
    after = load_file(os.path.join(out, "model.safetensors"))
    assert sorted(before) == sorted(after)
    for key, x in before.items():
        assert after[key].dtype == x.dtype and after[key].shape == x.shape, key
        assert np.array_equal(after[key], x), key
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    tokens = torch.from_numpy(np.random.default_rng(1).integers(0, 1000, (2, 16)))
    with torch.no_grad():
        assert torch.equal(reloaded(tokens).logits, hf_model(tokens).logits)


def test_refuses_a_workdir_with_checkpoints(converted, capsys):
    hf_dir, workdir = converted
    assert main(["--from-hf", hf_dir, "--workdir", workdir]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err


@pytest.mark.parametrize("case, message", [
    ("no_dir", "no such directory"),
    ("no_config", "config.json not found"),
    ("no_weights", "model.safetensors not found"),
    ("activation", "activation_function='relu' is not supported"),
    ("unknown_key", "unknown keys ['h.0.attn.extra.weight']"),
    ("shape", "has shape (64, 63) but config.json implies (64, 64)"),
])
def test_bad_hf_dir_gets_one_clear_message(converted, tmp_path, capsys, case, message):
    hf_dir, _ = converted
    bad = tmp_path / "bad"
    if case != "no_dir":
        bad.mkdir()
        config = json.loads((open(os.path.join(hf_dir, "config.json"))).read())
        tensors = load_file(os.path.join(hf_dir, "model.safetensors"))
        if case == "activation":
            config["activation_function"] = "relu"
        elif case == "unknown_key":
            tensors["transformer.h.0.attn.extra.weight"] = np.zeros(3, np.float32)
        elif case == "shape":
            tensors["transformer.h.1.attn.c_proj.weight"] = np.zeros((64, 63), np.float32)
        if case != "no_config":
            (bad / "config.json").write_text(json.dumps(config))
        if case != "no_weights":
            save_file(tensors, str(bad / "model.safetensors"))
    workdir = tmp_path / "workdir"
    assert main(["--from-hf", str(bad), "--workdir", str(workdir)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("gptjax: error:") and message in err, err
    assert not os.path.exists(workdir / "checkpoints")  # nothing half-written


def test_bad_export_gets_one_clear_message(converted, tmp_path, capsys):
    hf_dir, workdir = converted
    assert main(["--workdir", str(tmp_path / "missing"), "--to-hf", str(tmp_path / "o")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["--workdir", workdir, "--to-hf", hf_dir]) == 2  # would overwrite the original
    assert "refusing to overwrite" in capsys.readouterr().err
    fresh = tmp_path / "fresh"  # a config.json but no checkpoint yet
    fresh.mkdir()
    (fresh / "config.json").write_text(open(os.path.join(workdir, "config.json")).read())
    assert main(["--workdir", str(fresh), "--to-hf", str(tmp_path / "o")]) == 2
    assert "has no checkpoints folder" in capsys.readouterr().err
