"""gptjax.sampling: KV-cache decoding vs full recompute and vs transformers; sampling laws; EOS.

Tiny models, few compiles: every distinct (shape, top_k, eos_id) costs one jit of the decoder.
Random parameters at O(0.1..1) scale make the distributions sharp enough that a wrong cache slot,
position or padding mask changes the greedy tokens.
"""

from __future__ import annotations

import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_hf_gpt2, random_params
from scipy import stats

from gptjax.model import GPT, GPTConfig, cache_axes, init_cache
from gptjax.sampling import generate, generate_uncached

N_NEW = 8
TINY = dict(vocab_size=50, vocab_multiple=64, block_size=16, n_layer=2, n_head=2, n_embd=16)
HF_SHAPE = dict(n_layer=2, n_head=4, n_embd=64, n_positions=64, vocab_size=1000)
# Left-padded prompts of lengths 3, 5, 1 (the pad token 0 must not matter).
PROMPTS = np.array([[0, 0, 5, 6, 7], [1, 2, 3, 4, 5], [0, 0, 0, 0, 9]], np.int32)
LENGTHS = np.array([3, 5, 1], np.int32)


def _keys(n: int, seed: int = 0):
    return jax.random.split(jax.random.key(seed), n)


@pytest.fixture(scope="module")
def tiny():
    cfg = GPTConfig(**TINY, local_window=4)  # layer 1 banded: the cache honours windows too
    return cfg, random_params(GPT(cfg), seed=0, scale=0.5)


# --- (a) cached == uncached ------------------------------------------------------------------

def test_cached_greedy_equals_full_recompute(tiny):
    cfg, params = tiny
    keys = _keys(3)
    tok, lp, n = generate(params, cfg, PROMPTS, LENGTHS, keys, N_NEW, temperature=0.0)
    ref_tok, ref_lp, ref_n = generate_uncached(params, cfg, PROMPTS, LENGTHS, keys, N_NEW,
                                               temperature=0.0)
    assert tok.shape == (3, N_NEW) and lp.shape == (3, N_NEW)
    np.testing.assert_array_equal(tok, ref_tok)
    np.testing.assert_allclose(lp, ref_lp, atol=1e-5)
    assert np.all(n == N_NEW) and np.all(ref_n == N_NEW)
    assert len({tuple(r) for r in np.asarray(tok)}) == 3  # rows really differ
    # A row's result does not depend on the rows beside it or on its padding.
    alone, alone_lp, _ = generate(params, cfg, PROMPTS[:1, 2:], LENGTHS[:1], keys[:1], N_NEW,
                                  temperature=0.0)
    np.testing.assert_array_equal(alone[0], tok[0])
    np.testing.assert_allclose(alone_lp[0], lp[0], atol=1e-5)


def test_cache_tree_and_axes(tiny):
    cfg, _ = tiny
    cache = init_cache(cfg, 2, 7)
    names = cache_axes(cfg)
    assert jax.tree.structure(cache) == jax.tree.structure(
        names, is_leaf=lambda x: isinstance(x, tuple))
    assert cache["h_0"]["attn"]["cached_key"].shape == (2, 2, 8, 7)  # (B, H, D, S)
    assert cache["h_0"]["attn"]["cached_value"].shape == (2, 2, 7, 8)  # (B, H, S, D)
    assert names["h_0"]["attn"]["cached_key"][0] == "batch"


# --- (b) greedy == transformers' generate ----------------------------------------------------

@pytest.fixture(scope="module")
def hf_model():
    return random_hf_gpt2(**HF_SHAPE)


def test_greedy_matches_transformers_generate(hf_model, tmp_path):
    import torch
    from gptjax.checkpoint import restore_params
    from gptjax.convert import main, read_workdir_model
    hf_dir, workdir = str(tmp_path / "hf"), str(tmp_path / "workdir")
    hf_model.save_pretrained(hf_dir)
    assert main(["--from-hf", hf_dir, "--workdir", workdir]) == 0
    cfg = read_workdir_model(workdir)
    abstract = nn.unbox(jax.eval_shape(
        lambda: GPT(cfg).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32))))["params"]
    _, params = restore_params(workdir, abstract)

    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 1000, n) for n in (5, 9)]
    padded = np.zeros((2, 9), np.int32)
    for row, p in zip(padded, prompts):
        row[9 - len(p):] = p
    n_new = 10
    tok, lp, _ = generate(params, cfg, padded, np.array([5, 9]), _keys(2), n_new,
                          temperature=0.0)
    for row, p in enumerate(prompts):
        ids = torch.from_numpy(p[None])
        with torch.no_grad():
            out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                    max_new_tokens=n_new, pad_token_id=0,
                                    return_dict_in_generate=True, output_logits=True)
        want = out.sequences[0, len(p):].numpy()
        np.testing.assert_array_equal(np.asarray(tok[row]), want)
        want_lp = [torch.log_softmax(step[0], -1)[t].item() for step, t in zip(out.logits, want)]
        np.testing.assert_allclose(lp[row], want_lp, atol=1e-4)


# --- (c) sampling laws -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def first_token(tiny):
    """One prompt's next-token logits (V,) and a vmapped sampler of n first tokens."""
    cfg, params = tiny
    prompt = PROMPTS[1:2]
    logits = np.asarray(GPT(cfg).apply({"params": params}, prompt))[0, -1, :cfg.vocab_size]

    def draw(n, **kw):
        sample = jax.vmap(lambda k: generate(params, cfg, prompt, LENGTHS[1:2], k[None], 1,
                                             **kw)[:2])
        tok, lp = sample(_keys(n, seed=1))  # (n, 1, 1) each
        return np.asarray(tok).ravel(), np.asarray(lp).ravel()
    return logits.astype(np.float64), draw


def _log_softmax(z):
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def test_temperature_one_matches_softmax(first_token):
    logits, draw = first_token
    n = 4000
    tok, lp = draw(n, temperature=1.0)
    probs = np.exp(_log_softmax(logits))
    assert probs.max() < 0.9, "distribution too peaked for the test to mean anything"
    counts = np.bincount(tok, minlength=len(probs))
    assert counts.size == len(probs)  # no padded column ever sampled
    big = probs * n >= 5  # chi-square needs >= 5 expected per bin: pool the tail
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(probs[big] * n, probs[~big].sum() * n)
    pval = stats.chisquare(obs, exp).pvalue
    assert pval > 1e-3, (pval, obs, exp)
    np.testing.assert_allclose(lp, _log_softmax(logits)[tok], atol=1e-5)


def test_top_k_stays_in_the_k_best(first_token):
    logits, draw = first_token
    tok, lp = draw(1000, temperature=3.0, top_k=4)
    best = set(np.argsort(logits)[-4:].tolist())
    assert set(tok.tolist()) <= best and len(set(tok.tolist())) > 1
    # log-probs are of the unmodified distribution, not the tempered, truncated one.
    np.testing.assert_allclose(lp, _log_softmax(logits)[tok], atol=1e-5)


def test_top_p_stays_in_the_nucleus(first_token):
    logits, draw = first_token
    top_p = 0.7
    tok, _ = draw(1000, temperature=1.0, top_p=top_p)
    order = np.argsort(logits)[::-1]
    p = np.exp(_log_softmax(logits))[order]
    nucleus = set(order[:np.searchsorted(np.cumsum(p), top_p) + 1].tolist())
    assert set(tok.tolist()) <= nucleus and len(set(tok.tolist())) > 1
    assert len(nucleus) < len(logits)


# --- (d) EOS ---------------------------------------------------------------------------------

def test_eos_stops_each_row(tiny):
    cfg, params = tiny
    keys = _keys(3)
    free, free_lp, _ = (np.asarray(x) for x in generate(params, cfg, PROMPTS, LENGTHS, keys,
                                                        N_NEW, temperature=0.0))
    eos = int(free[1, 3])  # a token row 1 emits mid-way
    tok, lp, n = (np.asarray(x) for x in generate(params, cfg, PROMPTS, LENGTHS, keys, N_NEW,
                                                  temperature=0.0, eos_id=eos))
    for row in range(3):
        hits = np.flatnonzero(free[row] == eos)
        want = hits[0] + 1 if hits.size else N_NEW
        assert n[row] == want
        np.testing.assert_array_equal(tok[row, :want], free[row, :want])
        np.testing.assert_allclose(lp[row, :want], free_lp[row, :want], atol=1e-6)
        assert np.all(tok[row, want:] == eos) and np.all(lp[row, want:] == 0)
    assert n.min() < N_NEW


# --- (e) bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize("case, message", [
    ("empty", "empty prompt"),
    ("zero_length", "prompt_lengths must lie in [1, 5]"),
    ("too_long", "exceeds model.block_size=16"),
    ("temperature", "temperature must be >= 0"),
    ("top_p", "top_p must lie in (0, 1]"),
])
def test_bad_input_gets_a_clear_message(tiny, case, message):
    cfg, params = tiny
    prompts, lengths, kw = PROMPTS, LENGTHS, dict(max_new_tokens=N_NEW)
    if case == "empty":
        prompts = np.zeros((3, 0), np.int32)
    elif case == "zero_length":
        lengths = np.array([3, 0, 1])
    elif case == "too_long":
        kw["max_new_tokens"] = 12
    elif case == "temperature":
        kw["temperature"] = -1.0
    elif case == "top_p":
        kw["top_p"] = 0.0
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        generate(params, cfg, prompts, lengths, _keys(3), **kw)


# --- (f) a sharded model ----------------------------------------------------------------------

def test_sharded_decode_matches_one_device(tiny):
    """The training mesh and rules: params split over fsdp/tensor, the batch over data x fsdp,
    the KV cache by batch and heads. Tokens and log-probs equal the single-device decoder's."""
    from gptjax import axes, sharding
    cfg, params = tiny
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    rules = sharding.rules_from_config(axes.DEFAULT_RULES)
    boxed = jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    placed = jax.device_put(params, sharding.logical_shardings(boxed, mesh, rules)["params"])
    assert tuple(placed["h_0"]["mlp"]["c_fc"]["kernel"].sharding.spec) == ("fsdp", "tensor")
    prompts = np.concatenate([PROMPTS, PROMPTS[:1]])  # 4 rows: the batch splits 4 ways
    lengths = np.concatenate([LENGTHS, LENGTHS[:1]])
    keys = _keys(4)
    for temperature in (0.0, 1.0):
        want = generate(params, cfg, prompts, lengths, keys, N_NEW, temperature=temperature)
        got = generate(placed, cfg, prompts, lengths, keys, N_NEW, temperature=temperature,
                       mesh=mesh, rules=rules)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_allclose(got[1], want[1], atol=1e-5)
        np.testing.assert_array_equal(got[2], want[2])
    # The cache is constrained to (batch over data x fsdp, heads over tensor).
    from gptjax.sampling import _generate_cached
    from gptjax.sharding import activated
    with activated(mesh, rules):
        text = _generate_cached.lower(
            placed, cfg, jnp.asarray(prompts), jnp.asarray(lengths), keys, N_NEW,
            jnp.float32(0), 0, jnp.float32(1), None, rules=rules).as_text()
    key_cache = r'\[\{"data", "fsdp"\}, \{"tensor"\}, \{\}, \{\}\]> : tensor<4x2x8x13xf32>'
    assert re.search(key_cache, text), "the key cache is not split by batch and heads"
    with pytest.raises(ValueError, match="does not split over the 4 batch-parallel devices"):
        generate(placed, cfg, PROMPTS, LENGTHS, _keys(3), N_NEW, mesh=mesh, rules=rules)


# --- (g) streaming ----------------------------------------------------------------------------

def test_stream_sees_every_step_in_order(tiny):
    cfg, params = tiny
    seen = []
    tok, _, _ = generate(params, cfg, PROMPTS, LENGTHS, _keys(3), N_NEW, temperature=0.0,
                         stream=lambda i, t: seen.append((int(i), np.asarray(t).copy())))
    assert [i for i, _ in seen] == list(range(N_NEW))
    np.testing.assert_array_equal(np.stack([t for _, t in seen], axis=1), tok)
