"""gptjax.model: attention paths vs the explicit-mask reference, banding, padding, counts, init.

Everything runs eagerly on one CPU device with tiny shapes (eager dispatch of a 2-layer, 16-wide
model costs milliseconds; jit-compiling each variant would cost seconds). Parameters for the
comparisons are drawn with numpy at O(0.1..1) scale so attention is sharp and a masking mistake
moves the logits far beyond the tolerance (GPT-2's 0.02 init makes attention nearly uniform).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gptjax import axes, losses
from gptjax.model import GPT, CausalSelfAttention, GPTConfig

T = 16
TINY = dict(vocab_size=50, vocab_multiple=64, block_size=T, n_layer=2, n_head=2, n_embd=16)
F32_MIN = float(jnp.finfo(jnp.float32).min)
PARAM_AXES = {axes.VOCAB, axes.EMBED, axes.POS, axes.HEADS, axes.HEAD_DIM, axes.QKV, axes.MLP}


def _random_like(tree, seed: int, scale: float = 0.3):
    """A tree of the same shapes with N(0, scale^2) entries (LayerNorm gains around 1)."""
    rng = np.random.default_rng(seed)

    def draw(path, x):
        names = [getattr(k, "key", None) for k in path]
        v = rng.normal(0.0, scale, size=x.shape).astype(np.float32)
        return jnp.asarray(1.0 + v if "scale" in names else v)
    return jax.tree_util.tree_map_with_path(draw, tree)


@pytest.fixture(scope="module")
def params():
    """Random parameters shared by every tiny variant (same tree for any attention/window/remat)."""
    shapes = jax.eval_shape(GPT(GPTConfig(**TINY)).init, jax.random.key(0),
                            jnp.zeros((1, T), jnp.int32))
    return _random_like(nn.unbox(shapes), seed=0)


@pytest.fixture(scope="module")
def tokens():
    return jnp.asarray(np.random.default_rng(1).integers(0, TINY["vocab_size"], (2, T)), jnp.int32)


def _packed():
    """Two rows of packed sequences: segment ids and positions that restart in each segment."""
    lengths = [[5, 7, 4], [9, 7]]
    seg = np.concatenate([np.concatenate([np.full(n, i) for i, n in enumerate(row)])[None]
                          for row in lengths])
    pos = np.concatenate([np.concatenate([np.arange(n) for n in row])[None] for row in lengths])
    return lengths, jnp.asarray(seg, jnp.int32), jnp.asarray(pos, jnp.int32)


def _logits(params, tokens, attention, window=0, **kw):
    return GPT(GPTConfig(**TINY, attention=attention, local_window=window)).apply(
        params, tokens, **kw)


# --- (a) jax.nn.dot_product_attention == explicit mask ---------------------------------------

@pytest.mark.parametrize("window", [0, 4], ids=["dense", "banded"])
@pytest.mark.parametrize("packed", [False, True], ids=["plain", "segments"])
def test_xla_attention_matches_reference(params, tokens, window, packed):
    kw = {}
    if packed:
        _, seg, pos = _packed()
        kw = dict(positions=pos, segment_ids=seg)
    ref = _logits(params, tokens, "reference", window, **kw)
    xla = _logits(params, tokens, "xla", window, **kw)
    v = TINY["vocab_size"]
    np.testing.assert_allclose(xla[..., :v], ref[..., :v], atol=1e-5, rtol=1e-5)
    # The variants really differ from plain dense attention, so the comparison above has teeth.
    if window or packed:
        dense = _logits(params, tokens, "reference")
        assert float(jnp.abs(ref[..., :v] - dense[..., :v]).max()) > 1e-2


@pytest.mark.parametrize("attention", ["xla", "reference"])
def test_packed_segments_equal_each_sequence_run_alone(params, tokens, attention):
    """Golden check of packing: a segment's logits are those of the segment as its own sequence."""
    lengths, seg, pos = _packed()
    packed = _logits(params, tokens, attention, positions=pos, segment_ids=seg)
    v = TINY["vocab_size"]
    for b, row in enumerate(lengths):
        # The segment at the start of its own row (filler after it: causality ignores it).
        alone_rows, start = [], 0
        for n in row:
            alone_rows.append(jnp.roll(tokens[b], -start))
            start += n
        alone = _logits(params, jnp.stack(alone_rows), attention)
        start = 0
        for i, n in enumerate(row):
            np.testing.assert_allclose(packed[b, start:start + n, :v], alone[i, :n, :v],
                                       atol=1e-5, rtol=1e-5)
            start += n


# --- (b) banded attention ignores keys beyond the window -------------------------------------

@pytest.mark.parametrize("attention", ["xla", "reference"])
@pytest.mark.parametrize("window", [0, 4])
def test_banded_layer_ignores_keys_beyond_window(attention, window):
    cfg = GPTConfig(**TINY, attention=attention)
    layer = CausalSelfAttention(cfg, window)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(2, T, cfg.n_embd)), jnp.float32)
    p = _random_like(nn.unbox(jax.eval_shape(layer.init, jax.random.key(0), x, None, True)), 3)
    y0 = layer.apply(p, x, None, True)
    y1 = layer.apply(p, x.at[:, 0].add(1.0), None, True)  # perturb the first token only
    changed = np.asarray(jnp.abs(y1 - y0).max(axis=(0, 2)) > 1e-6)  # (T,)
    # Query i sees keys j with i - window < j <= i: token 0 reaches outputs 0..window-1 only.
    expected = np.arange(T) < (window if window else T)
    np.testing.assert_array_equal(changed, expected)


def test_odd_layers_are_banded():
    cfg = GPTConfig(**{**TINY, "n_layer": 4}, local_window=4)
    assert [cfg.window(i) for i in range(4)] == [0, 4, 0, 4]
    assert [GPTConfig(**TINY).window(i) for i in range(2)] == [0, 0]


# --- (c) padded vocabulary ---------------------------------------------------------------------

def test_padded_vocab_logits(params, tokens):
    cfg = GPTConfig(**TINY)
    assert cfg.padded_vocab_size == 64
    logits = _logits(params, tokens, "reference")
    assert logits.shape == (2, T, cfg.padded_vocab_size)
    np.testing.assert_array_equal(logits[..., cfg.vocab_size:], F32_MIN)
    assert bool(jnp.all(logits[..., :cfg.vocab_size] > -1e3))


@pytest.mark.parametrize("vocab,multiple,padded", [(50257, 128, 50304), (65, 64, 128),
                                                   (128, 128, 128), (1, 8, 8)])
def test_padded_vocab_size(vocab, multiple, padded):
    cfg = GPTConfig(vocab_size=vocab, vocab_multiple=multiple)
    assert cfg.padded_vocab_size == padded
    assert cfg.padded_vocab_size % multiple == 0


# --- (d) parameter counts ----------------------------------------------------------------------

def _count(cfg: GPTConfig) -> int:
    shapes = jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    return sum(math.prod(x.shape) for x in jax.tree.leaves(nn.unbox(shapes)))


@pytest.mark.parametrize("bias", [True, False])
def test_num_params_matches_the_parameter_tree(bias):
    cfg = GPTConfig(**{**TINY, "vocab_size": 45}, bias=bias)
    padding = (cfg.padded_vocab_size - cfg.vocab_size) * cfg.n_embd
    assert cfg.num_params(non_embedding=False) == _count(cfg) - padding
    assert cfg.num_params() == cfg.num_params(non_embedding=False) - cfg.block_size * cfg.n_embd


def test_gpt2_small_has_124m_params():
    cfg = GPTConfig()  # GPT-2 small: HF's GPT2LMHeadModel has 124,439,808 parameters
    assert cfg.num_params(non_embedding=False) == 124_439_808
    assert cfg.num_params() == 124_439_808 - 1024 * 768  # nanoGPT's "123.65M"
    assert _count(cfg) == 124_439_808 + (50304 - 50257) * 768


def test_flops_per_token():
    cfg = GPTConfig()
    # 6 * 123,653,376 + 6 * 12 layers * 1024 tokens * 768 wide
    assert cfg.flops_per_token(1024) == 741_920_256 + 56_623_104


# --- (e) initialisation ------------------------------------------------------------------------

def test_init_statistics():
    cfg = GPTConfig(vocab_size=64, vocab_multiple=64, block_size=T, n_layer=3, n_head=4,
                    n_embd=256)
    # An 'rbg' key: the initialisers are what is under test, not the PRNG, and XLA compiles
    # threefry for ~10 distinct shapes three times slower on CPU.
    key = jax.random.key(0, impl="rbg")
    p = nn.unbox(jax.jit(GPT(cfg).init)(key, jnp.zeros((1, T), jnp.int32)))["params"]
    resid = 0.02 / math.sqrt(2 * 3)
    for i in range(cfg.n_layer):
        blk = p[f"h_{i}"]
        for w, std in [(blk["attn"]["c_attn"]["kernel"], 0.02),
                       (blk["mlp"]["c_fc"]["kernel"], 0.02),
                       (blk["attn"]["c_proj"]["kernel"], resid),
                       (blk["mlp"]["c_proj"]["kernel"], resid)]:
            w = np.asarray(w)
            # >= 65k samples: the sample std is within ~0.3% (1 s.e.) of the true one.
            assert abs(w.std() / std - 1) < 0.02, (i, w.shape, w.std(), std)
            assert abs(w.mean()) < 0.05 * std
        for name in ("ln_1", "ln_2"):
            np.testing.assert_array_equal(blk[name]["scale"], 1.0)
            np.testing.assert_array_equal(blk[name]["bias"], 0.0)
        for sub in (blk["attn"]["c_attn"], blk["attn"]["c_proj"], blk["mlp"]["c_fc"],
                    blk["mlp"]["c_proj"]):
            np.testing.assert_array_equal(sub["bias"], 0.0)
    np.testing.assert_array_equal(p["ln_f"]["scale"], 1.0)
    np.testing.assert_array_equal(p["ln_f"]["bias"], 0.0)
    for name in ("wte", "wpe"):  # 16k and 4k samples: s.e. 0.6% and 1.1%
        assert abs(np.asarray(p[name]["embedding"]).std() / 0.02 - 1) < 0.05


# --- (f) logical axis names --------------------------------------------------------------------

@pytest.mark.parametrize("bias", [True, False])
def test_every_param_has_logical_names(bias):
    cfg = GPTConfig(**TINY, bias=bias)
    boxed = jax.eval_shape(GPT(cfg).init, jax.random.key(0), jnp.zeros((1, T), jnp.int32))
    specs = nn.get_partition_spec(boxed)
    shapes = nn.unbox(boxed)
    flat_specs = jax.tree_util.tree_leaves_with_path(
        specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    flat_shapes = jax.tree_util.tree_leaves_with_path(shapes)
    assert len(flat_specs) == len(flat_shapes) > 0
    for (path, spec), (_, shape) in zip(flat_specs, flat_shapes):
        assert isinstance(spec, jax.sharding.PartitionSpec), path
        assert len(spec) == len(shape.shape), (jax.tree_util.keystr(path), spec, shape.shape)
        assert all(name in PARAM_AXES for name in spec), (jax.tree_util.keystr(path), spec)


# --- (g) remat and bfloat16 --------------------------------------------------------------------

def test_remat_gives_same_loss_and_grads(params, tokens):
    def loss_and_grads(remat):
        model = GPT(GPTConfig(**TINY, attention="reference", remat=remat))

        def loss(p):
            return losses.lm_loss(model.apply(p, tokens[:, :-1]), tokens[:, 1:])
        return jax.jit(jax.value_and_grad(loss))(params)

    (l0, g0), (l1, g1) = loss_and_grads(False), loss_and_grads(True)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    assert jax.tree.structure(g0) == jax.tree.structure(g1)
    for a, b in zip(jax.tree.leaves(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    assert float(jnp.abs(g0["params"]["h_0"]["attn"]["c_attn"]["kernel"]).max()) > 0


def test_bfloat16_compute_keeps_float32_params(params, tokens):
    cfg = GPTConfig(**TINY, dtype="bfloat16", attention="reference")
    shapes = jax.eval_shape(GPT(cfg).init, jax.random.key(0), tokens)
    assert {x.dtype for x in jax.tree.leaves(nn.unbox(shapes))} == {jnp.dtype(jnp.float32)}
    bf16 = GPT(cfg).apply(params, tokens)
    f32 = _logits(params, tokens, "reference")
    assert bf16.dtype == jnp.bfloat16
    v = cfg.vocab_size
    a, b = np.asarray(bf16[..., :v], np.float32), np.asarray(f32[..., :v])
    rel = np.linalg.norm(a - b) / np.linalg.norm(b)
    assert 0 < rel < 0.05, rel  # bf16 really is in use (rel > 0), and close to float32
