"""Golden test: a whole gptjax training trajectory against an independent PyTorch nanoGPT.

The torch side is `build_nanogpt` from benchmarks/train_throughput.py (nanoGPT's model.py as
publicly described) trained the nanoGPT way: AdamW with its two parameter groups (weight decay
on every tensor of rank >= 2, none on the rest), clip_grad_norm_(1.0), cross-entropy over the
real vocabulary, and the learning rate set by hand before every step. The gptjax side is the real
`pretrain.build(...).train_step` (clip -> AdamW under warmup + cosine, padded vocabulary, tied
output embedding) for the shakespeare_char config, shrunk so 30 steps take a few seconds.

Both start from the same weights (torch's init copied into the gptjax layout), see the same
random token batches, and must agree on the initial logits, the learning rate, the gradient norm
and the loss at every step, and on every parameter at the end.
"""

from __future__ import annotations

import importlib.util
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT, load_config

torch = pytest.importorskip("torch")

STEPS = 30
BATCH = 8
SEQ = 32
MODEL = dict(vocab_size=65, block_size=SEQ, n_layer=2, n_head=4, n_embd=64, bias=False,
             dropout=0.0)
SCHEDULE = dict(warmup_steps=5, decay_steps=30, min_lr=1e-4)
# Float32 round-off between the two gives ~3e-7 relative on the loss and ~1e-7 on parameters
# after 30 steps. A wrong choice of which tensors decay, eps, b2 or one step of schedule offset
# moves the loss by >= 2e-4 or a parameter by >= 1e-4 (checked by mutating the optimizer).
LOSS_RTOL = 1e-4
PARAM_ATOL = 2e-5


def _build_nanogpt():
    path = ROOT / "benchmarks" / "train_throughput.py"
    spec = importlib.util.spec_from_file_location("golden_train_throughput", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_nanogpt


def _config():
    config = load_config("shakespeare_char")
    # The optimizer settings stay the config's (lr 1e-3, b1 0.9, b2 0.99, eps 1e-8, wd 0.1 on
    # matrices + embeddings, clip 1.0); only the schedule is shortened to fit 30 steps.
    assert (config.optim.lr, config.optim.b1, config.optim.b2, config.optim.eps,
            config.optim.weight_decay, config.optim.weight_decay_mask, config.optim.grad_clip) == (
        1e-3, 0.9, 0.99, 1e-8, 0.1, "matrices", 1.0)
    for k, v in MODEL.items():
        config.model[k] = v
    for k, v in SCHEDULE.items():
        config.optim[k] = v
    config.model.attention = "auto"
    config.model.activation = "gelu"  # as nanoGPT's nn.GELU(); build_nanogpt follows the spec
    config.data.seq_len = SEQ
    config.train.batch_size = BATCH
    config.train.grad_accum = 1
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = 1, 1, 1
    return config


def _lr(step: int, peak: float = 1e-3, warmup: int = 5, decay: int = 30,
        end: float = 1e-4) -> float:
    """optax.warmup_cosine_decay_schedule(0, peak, warmup, decay, end) written out by hand."""
    if step < warmup:
        return peak * step / warmup
    t = min(step - warmup, decay - warmup) / (decay - warmup)
    return end + (peak - end) * 0.5 * (1 + math.cos(math.pi * t))


def _batches(seed: int = 1234) -> list[np.ndarray]:
    """STEPS random (B, T+1) token windows from a sparse Markov chain: each token is followed by
    one of 3 fixed successors, so there is something to learn in 30 steps (the loss falls well
    below log 65), and the early gradients are large enough that clipping at 1.0 acts."""
    rng = np.random.default_rng(seed)
    v = MODEL["vocab_size"]
    successors = rng.integers(0, v, (v, 3))
    out = []
    for _ in range(STEPS):
        x = np.empty((BATCH, SEQ + 1), np.int32)
        x[:, 0] = rng.integers(0, v, BATCH)
        for j in range(1, SEQ + 1):
            x[:, j] = successors[x[:, j - 1], rng.integers(0, 3, BATCH)]
        out.append(x)
    return out


def _torch_spec():
    return dict(MODEL, padded_vocab_size=128, ln_eps=1e-5, activation="gelu")


def _to_gptjax(model, padded_vocab: int):
    """torch nanoGPT state -> the gptjax parameter tree (float32 numpy)."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    c, h = MODEL["n_embd"], MODEL["n_head"]
    d = c // h
    wte = np.zeros((padded_vocab, c), np.float32)
    wte[:MODEL["vocab_size"]] = sd["wte.weight"]
    params = {"wte": {"embedding": wte}, "wpe": {"embedding": sd["wpe.weight"]},
              "ln_f": {"scale": sd["ln_f.weight"]}}
    for i in range(MODEL["n_layer"]):
        p = f"h.{i}."
        params[f"h_{i}"] = {
            "ln_1": {"scale": sd[p + "ln_1.weight"]},
            "ln_2": {"scale": sd[p + "ln_2.weight"]},
            "attn": {
                "c_attn": {"kernel": sd[p + "attn.c_attn.weight"].T.reshape(c, 3, h, d)},
                "c_proj": {"kernel": sd[p + "attn.c_proj.weight"].T.reshape(h, d, c)},
            },
            "mlp": {
                "c_fc": {"kernel": sd[p + "mlp.c_fc.weight"].T},
                "c_proj": {"kernel": sd[p + "mlp.c_proj.weight"].T},
            },
        }
    return params


@pytest.fixture(scope="module")
def trajectories():
    from gptjax import sharding
    from gptjax.loops import pretrain

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = _build_nanogpt()(_torch_spec())
        model.train()

        config = _config()
        pieces = pretrain.build(config, jax.devices()[:1])
        padded = pieces.model.cfg.padded_vocab_size
        init_np = _to_gptjax(model, padded)

        # The state from make_state with the torch weights in it, every leaf on its sharding.
        state = pieces.make_state(jax.random.key(0))
        assert (jax.tree.structure(jax.tree.map(np.shape, state.params))
                == jax.tree.structure(jax.tree.map(np.shape, init_np)))
        for got, want in zip(jax.tree.leaves(state.params), jax.tree.leaves(init_np)):
            assert got.shape == want.shape
        params = jax.tree.map(jnp.asarray, init_np)
        state = state.replace(params=params, opt_state=pieces.tx.init(params))
        state = jax.tree.map(lambda x, a: jax.device_put(x, a.sharding), state, pieces.abstract)

        batches = _batches()

        # Forward agreement at init (the model alone, before any optimizer step).
        with sharding.activated(pieces.mesh, pieces.rules):
            jax_logits = np.asarray(jax.jit(pieces.model.apply)(
                {"params": state.params}, jnp.asarray(batches[0][:, :-1])))
        with torch.no_grad():
            torch_logits = model(torch.from_numpy(batches[0][:, :-1]).long()).numpy()

        # --- gptjax trajectory ---
        jax_metrics = []
        with sharding.activated(pieces.mesh, pieces.rules):
            for b in batches:
                state, m = pieces.train_step(state, jax.device_put(b, pieces.batch_sharding))
                jax_metrics.append({k: float(v) for k, v in jax.device_get(m).items()})
        jax_final = jax.tree.map(np.asarray, jax.device_get(state.params))

        # --- torch trajectory (nanoGPT's configure_optimizers + training loop) ---
        params_t = list(model.parameters())  # the tied wte/lm_head weight appears once
        groups = [{"params": [p for p in params_t if p.dim() >= 2], "weight_decay": 0.1},
                  {"params": [p for p in params_t if p.dim() < 2], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=1e-3, betas=(0.9, 0.99), eps=1e-8)
        v = MODEL["vocab_size"]
        torch_metrics = []
        for i, b in enumerate(batches):
            lr = _lr(i)
            for g in opt.param_groups:
                g["lr"] = lr
            tokens = torch.from_numpy(b).long()
            logits = model(tokens[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, v),
                                                     tokens[:, 1:].reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params_t, 1.0)
            opt.step()
            torch_metrics.append({"loss": loss.item(), "grad_norm": float(norm), "lr": lr})
        torch_final = _to_gptjax(model, padded)
    finally:
        torch.set_num_threads(threads)
    return dict(jax_logits=jax_logits, torch_logits=torch_logits, jax=jax_metrics,
                torch=torch_metrics, init=init_np, jax_final=jax_final, torch_final=torch_final)


def test_schedule_is_optax():
    """The hand-written torch schedule is optax's (and so what gptjax.optim builds)."""
    from gptjax.optim import lr_schedule
    ref = optax.warmup_cosine_decay_schedule(0.0, 1e-3, 5, 30, 1e-4)
    ours = lr_schedule(_config().optim)
    for s in range(STEPS + 5):
        np.testing.assert_allclose(_lr(s), float(ref(s)), rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(_lr(s), float(ours(s)), rtol=1e-6, atol=1e-12)


def test_initial_logits_match(trajectories):
    t = trajectories
    assert t["jax_logits"].shape == (BATCH, SEQ, 128)
    real = t["jax_logits"][..., :MODEL["vocab_size"]]
    np.testing.assert_allclose(real, t["torch_logits"], atol=1e-5, rtol=1e-5)
    # The padding columns are masked out of the softmax.
    assert (t["jax_logits"][..., MODEL["vocab_size"]:] < -1e30).all()


def test_trajectory_matches_torch(trajectories):
    t = trajectories
    rel_loss = np.array([abs(j["loss"] - p["loss"]) / abs(p["loss"])
                         for j, p in zip(t["jax"], t["torch"])])
    rel_norm = np.array([abs(j["grad_norm"] - p["grad_norm"]) / p["grad_norm"]
                         for j, p in zip(t["jax"], t["torch"])])
    lr_err = np.array([abs(j["lr"] - p["lr"]) for j, p in zip(t["jax"], t["torch"])])
    print(f"\nmax rel loss diff {rel_loss.max():.3e} (step {rel_loss.argmax()}), "
          f"max rel grad-norm diff {rel_norm.max():.3e}, max lr diff {lr_err.max():.3e}")
    print("losses gptjax:", [round(m["loss"], 5) for m in t["jax"]])
    print("losses torch: ", [round(m["loss"], 5) for m in t["torch"]])
    # The run is real training: the loss falls well below log(65) = 4.17.
    assert t["torch"][-1]["loss"] < 3.6
    assert lr_err.max() < 1e-9, lr_err
    # The data makes clipping act (global norm > 1.0) on most steps, so it is compared too.
    assert sum(m["grad_norm"] > 1.0 for m in t["torch"]) >= STEPS // 2
    assert rel_norm.max() < 1e-3, rel_norm
    assert rel_loss.max() <= LOSS_RTOL, rel_loss


def test_final_params_match(trajectories):
    t = trajectories
    jf, tf = t["jax_final"], t["torch_final"]
    # The padding rows of the embedding get no gradient (masked logits) and start at zero, so
    # Adam and weight decay leave them at zero.
    assert not jf["wte"]["embedding"][MODEL["vocab_size"]:].any()
    worst = {}
    for path, a in jax.tree_util.tree_leaves_with_path(jf):
        b = tf
        for k in path:
            b = b[k.key]
        worst[jax.tree_util.keystr(path)] = float(np.abs(a - b).max())
    print("\nmax |param diff|:", max(worst.values()), worst)
    bad = {k: v for k, v in worst.items() if v > PARAM_ATOL}
    assert not bad, bad
    # The parameters did move, by far more than the tolerance, over the 30 steps.
    moved = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), jf, t["init"])
    assert min(jax.tree.leaves(moved)) > 10 * PARAM_ATOL, moved
