"""Decode speed of gptjax's sampler on GPT-2 124M (random weights, fp32), measured in one run.

    python benchmarks/decode.py [--new-tokens 256] [--uncached-new-tokens 256]
        [--batches 1,4,16,64] [--large-batch-new-tokens 32] [--hf-new-tokens 64]
        [--repeats 3] [--prompt-len 32] [--out decode.json]

Tables: (1) `sampling.generate` (KV cache) vs `sampling.generate_uncached`; (2) the one-jit
while_loop vs a Python loop over a jitted one-token decode step; (3) tokens/s per batch size;
(4) batch-1 tokens/s against the memory-bandwidth ceiling; (5) gptjax vs Hugging Face `generate`
(PyTorch CPU, the same weights), greedy, with and without HF's KV cache.

The parent builds a random transformers GPT2LMHeadModel in a worker, which saves it with
save_pretrained and times HF; a second worker converts that directory with gptjax.convert and
times gptjax, so the two frameworks decode the same model and never share a process. Every
measurement is the median of --repeats runs after one warm-up run; compile time (first call
minus that median) is reported separately. All decoding is greedy (temperature 0) with no EOS,
so every run emits exactly the asked number of tokens.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from a checkout without installing the package

CORES = len(os.sched_getaffinity(0))
GPT2_124M = {"n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50257,
             "n_positions": 1024}
BANDWIDTH_MIB = 1024  # size of the arrays the bandwidth probes stream


def timed(fn: Callable[[], Any], repeats: int, block: Callable[[Any], Any]) -> dict[str, Any]:
    """First call (compile + run), then `repeats` timed calls; median, min and the compile est."""
    t0 = time.perf_counter()
    out = block(fn())
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = block(fn())
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"median_s": med, "min_s": min(times), "times_s": times, "first_s": first,
            "compile_s": max(first - med, 0.0), "out": out}


def prompts(batch: int, prompt_len: int, vocab: int) -> np.ndarray:
    """(B, P) random int32 prompt tokens, the same for every framework (seed 0)."""
    return np.random.default_rng(0).integers(0, vocab, (batch, prompt_len), dtype=np.int32)


# --------------------------------------------------------------------------- Hugging Face worker

def worker_hf(args: argparse.Namespace) -> dict[str, Any]:
    """Build, save and time a random-init GPT2LMHeadModel's greedy `generate` (batch 1)."""
    import torch
    import transformers
    torch.set_num_threads(args.torch_threads or CORES)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(**GPT2_124M, bos_token_id=None, eos_token_id=None,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    model.save_pretrained(args.hf_dir)
    ids = torch.from_numpy(prompts(1, args.prompt_len, cfg.vocab_size).astype(np.int64))
    n = args.hf_new_tokens
    res = {}
    for use_cache in (True, False):
        def run(use_cache: bool = use_cache):
            with torch.inference_mode():
                return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=n, min_new_tokens=n, use_cache=use_cache,
                                      eos_token_id=None, pad_token_id=0)
        r = timed(run, args.repeats, lambda x: x)
        tokens = r.pop("out")[0, args.prompt_len:].tolist()
        assert len(tokens) == n, f"HF generated {len(tokens)} tokens, not {n}"
        res["cache" if use_cache else "no_cache"] = dict(r, tokens=tokens,
                                                         tokens_per_s=n / r["median_s"])
    res["torch"] = torch.__version__
    res["transformers"] = transformers.__version__
    return res


# --------------------------------------------------------------------------------- gptjax worker

def measure_bandwidth(repeats: int) -> dict[str, Any]:
    """Read bandwidth in GB/s (1e9 bytes) of three probes over a BANDWIDTH_MIB float32 array:
    numpy sum (one thread), jitted jnp.sum and a jitted matrix-vector product (XLA CPU, the
    access pattern of batch-1 decode). The best of them is the ceiling's bandwidth."""
    import jax
    import jax.numpy as jnp
    n = BANDWIDTH_MIB * 2 ** 20 // 4
    a = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
    nbytes = a.nbytes
    x = jnp.asarray(a)
    cols = 4096
    m = x.reshape(-1, cols)
    v = jnp.ones((cols,), jnp.float32)
    jsum, matvec = jax.jit(jnp.sum), jax.jit(lambda m, v: m @ v)
    probes = {"numpy sum": (lambda: a.sum(), lambda r: r),
              "jnp.sum (jit)": (lambda: jsum(x), jax.block_until_ready),
              "matvec (jit)": (lambda: matvec(m, v), jax.block_until_ready)}
    out = {}
    for name, (fn, block) in probes.items():
        r = timed(fn, max(repeats, 3), block)
        out[name] = nbytes / r["min_s"] / 1e9
    return {"probes_gb_s": out, "bytes": nbytes, "gb_s": max(out.values()),
            "best": max(out, key=out.get)}


def tree_bytes(tree) -> int:
    import jax
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))


def worker_gptjax(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp

    import flax.linen as nn

    from gptjax import convert, sampling
    from gptjax.model import GPT, GPTConfig, init_cache

    cfg = convert.read_hf_config(args.hf_dir)
    params = jax.device_put(convert.hf_to_params(convert.load_hf_tensors(args.hf_dir), cfg))
    p = args.prompt_len
    res: dict[str, Any] = {"jax": jax.__version__, "param_bytes": tree_bytes(params)}
    res["bandwidth"] = measure_bandwidth(args.repeats)
    greedy = {"temperature": 0.0, "top_k": 0, "top_p": 1.0, "eos_id": None}

    def gen(fn, batch: int, n: int, repeats: int = args.repeats):
        toks = jnp.asarray(prompts(batch, p, cfg.vocab_size))
        lengths = jnp.full((batch,), p, jnp.int32)
        keys = jax.random.split(jax.random.key(0), batch)
        r = timed(lambda: fn(params, cfg, toks, lengths, keys, n, **greedy), repeats,
                  jax.block_until_ready)
        out = r.pop("out")
        r.update(batch=batch, new_tokens=n, tokens_per_s=batch * n / r["median_s"],
                 ms_per_step=r["median_s"] / n * 1e3, tokens=np.asarray(out[0][0]).tolist())
        return r

    def log(what: str, r: dict[str, Any]) -> None:
        print(f"  {what}: {r['median_s']:.2f}s median, compile {r['compile_s']:.1f}s",
              file=sys.stderr, flush=True)

    # 1. cached vs uncached at the same N, and 3. the batch sweep (its batch-1 row is table 1's
    # cached row when N is the same).
    n, nu = args.new_tokens, args.uncached_new_tokens
    res["uncached"] = gen(sampling.generate_uncached, 1, nu, repeats=args.uncached_repeats)
    log(f"uncached b1 n{nu}", res["uncached"])
    res["batches"] = {}
    for b in args.batches:
        nb = n if b <= args.large_batch else args.large_batch_new_tokens
        res["batches"][b] = gen(sampling.generate, b, nb)
        log(f"cached b{b} n{nb}", res["batches"][b])
    b1 = res["batches"].get(1) if n == res["batches"].get(1, {}).get("new_tokens") else None
    res["cached"] = b1 or gen(sampling.generate, 1, n)
    res["cached_same_n"] = (res["cached"] if nu == n else gen(sampling.generate, 1, nu))
    # The KV cache the batch-1 loop allocates (P + N slots) and reads in full at every step.
    res["kv_cache_bytes"] = tree_bytes(jax.eval_shape(lambda: init_cache(cfg, 1, p + n)))

    # 2. The same per-token work driven from Python: one jitted call per token.
    res["python_loop"] = python_loops(cfg, params, p, n, args.repeats, res["cached"])
    for name, r in res["python_loop"].items():
        log(f"python loop ({name}) b1 n{n}", r)
    small = GPTConfig(vocab_size=65, block_size=1024, n_layer=4, n_head=4, n_embd=128)
    small_params = GPT(small).init(jax.random.key(0), jnp.zeros((1, 8), jnp.int32))["params"]
    small_params = jax.device_put(nn.unbox(small_params))
    toks_s = jnp.asarray(prompts(1, p, small.vocab_size))
    one_jit = timed(lambda: sampling.generate(
        small_params, small, toks_s, jnp.full((1,), p, jnp.int32),
        jax.random.split(jax.random.key(0), 1), n, **greedy), args.repeats, jax.block_until_ready)
    one_jit["tokens"] = np.asarray(one_jit.pop("out")[0][0]).tolist()
    res["small"] = {"one_jit": one_jit,
                    **python_loops(small, small_params, p, n, args.repeats, one_jit)}
    log(f"small model one jit b1 n{n}", one_jit)

    # 5. The HF comparison's decode (64 new tokens, batch 1).
    res["hf_match"] = gen(sampling.generate, 1, args.hf_new_tokens)
    log(f"cached b1 n{args.hf_new_tokens}", res["hf_match"])
    return res


def python_loops(cfg, params, p: int, n: int, repeats: int,
                 one_jit: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Batch-1 greedy decoding driven from Python, one jitted call per token: the while_loop's
    body as its own program (`fold_in`, `sampling.sample_token`, a one-token
    `GPT.apply(..., decode=True)`), cache donated. 'async': no host sync until the end (the best
    a Python loop can do); 'eos check': the token is read on the host after every step, as a loop
    that stops at an end-of-sequence token must."""
    import jax
    import jax.numpy as jnp

    from gptjax import sampling
    from gptjax.model import GPT, init_cache

    model = GPT(cfg)
    zero, one = jnp.float32(0.0), jnp.float32(1.0)

    @jax.jit
    def prefill(params, tokens, cache):
        positions = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
        logits, v = model.apply({"params": params, "cache": cache}, tokens, positions,
                                decode=True, mutable=["cache"])
        return logits[:, -1], v["cache"]

    @functools.partial(jax.jit, donate_argnums=(1,))
    def decode_step(params, cache, logits, keys, i):
        step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, i)
        tok, _ = sampling.sample_token(logits, step_keys, zero, 0, one)
        pos = jnp.full((tok.shape[0], 1), p, jnp.int32) + i
        logits, v = model.apply({"params": params, "cache": cache}, tok[:, None], pos,
                                decode=True, mutable=["cache"])
        return tok, logits[:, -1], v["cache"]

    toks = jnp.asarray(prompts(1, p, cfg.vocab_size))
    keys = jax.random.split(jax.random.key(0), 1)

    def loop(check_eos: bool):
        logits, cache = prefill(params, toks, init_cache(cfg, 1, p + n))
        out = []
        for i in range(n):
            tok, logits, cache = decode_step(params, cache, logits, keys, jnp.int32(i))
            out.append(tok)
            if check_eos and int(tok[0]) == -1:  # a host read per token (no EOS here)
                break
        return jnp.stack(out, axis=1)

    res = {}
    for name, check in (("async", False), ("eos check", True)):
        r = timed(lambda: loop(check), repeats, jax.block_until_ready)
        tokens = np.asarray(r.pop("out"))[0].tolist()
        r.update(tokens_per_s=n / r["median_s"], ms_per_step=r["median_s"] / n * 1e3,
                 same_tokens=tokens == one_jit["tokens"])
        res[name] = r
    return res


# ---------------------------------------------------------------------------------------- parent

def run_worker(name: str, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--hf-dir", args.hf_dir,
           "--new-tokens", str(args.new_tokens), "--uncached-new-tokens",
           str(args.uncached_new_tokens), "--uncached-repeats", str(args.uncached_repeats),
           "--batches", ",".join(map(str, args.batches)),
           "--large-batch", str(args.large_batch), "--large-batch-new-tokens",
           str(args.large_batch_new_tokens), "--hf-new-tokens", str(args.hf_new_tokens),
           "--repeats", str(args.repeats), "--prompt-len", str(args.prompt_len),
           "--torch-threads", str(args.torch_threads)]
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode:
        sys.exit(f"worker {name} exited with code {proc.returncode}")
    return json.loads(proc.stdout.split("RESULT ", 1)[1])


def _row(name: str, r: dict[str, Any], n: int, batch: int = 1) -> str:
    return (f"| {name} | {batch} | {n} | {r['median_s']:.2f} | {r['median_s'] / n * 1e3:.1f} | "
            f"{batch * n / r['median_s']:,.1f} | {r['compile_s']:.1f} |")


HEAD = ("| run | batch | new tokens | median s | ms / step | tokens/s | compile s |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n")


def report(args: argparse.Namespace, hf: dict[str, Any], gj: dict[str, Any]) -> dict[str, Any]:
    p, n, nu = args.prompt_len, args.new_tokens, args.uncached_new_tokens
    unc, same, cached = gj["uncached"], gj["cached_same_n"], gj["cached"]
    step_unc, step_same = unc["median_s"] / nu, same["median_s"] / nu
    print(f"# gptjax decode, GPT-2 124M (random weights, fp32), prompt {p}, greedy "
          f"({CORES} cores, jax {gj['jax']}, torch {hf['torch']}, transformers "
          f"{hf['transformers']})\n")
    print("## 1. KV cache (`sampling.generate`) vs no cache (`sampling.generate_uncached`)\n\n"
          + HEAD + "\n".join([_row("generate_uncached", unc, nu), _row("generate", same, nu)])
          + "\n\n"
          f"- speed-up of the cache at {nu} new tokens: **{step_unc / step_same:.1f}x**. The "
          f"uncached loop runs a full (1, {p} + i) forward through the training path at step i, "
          f"so its cost per token grows with the sequence; it is timed "
          f"{args.uncached_repeats} time(s) after its compile (--uncached-repeats).\n")
    loops = gj["python_loop"]
    small = gj["small"]
    rows = [_row("GPT-2 124M: generate (prefill + lax.while_loop, one jit)", cached, n)]
    rows += [_row(f"GPT-2 124M: Python loop, {k}", r, n) for k, r in loops.items()]
    rows += [_row("small 4L/4H/128d: generate (one jit)", small["one_jit"], n)]
    rows += [_row(f"small 4L/4H/128d: Python loop, {k}", small[k], n) for k in loops]
    speedups = "; ".join(
        f"{what} vs {k}: **{r['median_s'] / base['median_s']:.2f}x** (same tokens: "
        f"{r['same_tokens']})"
        for what, base, rs in (("124M", cached, loops),
                               ("small", small["one_jit"], {k: small[k] for k in loops}))
        for k, r in rs.items())
    print("## 2. One-jit while_loop vs a Python loop over a jitted one-token step\n\n" + HEAD
          + "\n".join(rows) + "\n\n"
          f"- speed-up of the one-jit loop: {speedups}.\n"
          "- the Python loop calls `jit(prefill)` once, then per token a jitted `decode_step` = "
          "the while_loop's body (fold_in, `sampling.sample_token`, `GPT.apply(..., decode=True, "
          "mutable=['cache'])`) with the cache donated. 'async' never syncs with the host until "
          "the end; 'eos check' reads each token on the host, as a loop that stops at an end "
          "token must. The small model (vocab 65, the shakespeare_char width) shows the loop "
          "overhead where a step is short.\n")
    rows = [_row("generate", r, r["new_tokens"], r["batch"]) for r in gj["batches"].values()]
    print("## 3. Throughput by batch size\n\n" + HEAD + "\n".join(rows) + "\n\n"
          f"- batches above {args.large_batch} decode {args.large_batch_new_tokens} new tokens "
          f"(--large-batch-new-tokens) to keep the run short; the others {n}.\n")
    bw = gj["bandwidth"]
    per_token = gj["param_bytes"] + gj["kv_cache_bytes"]
    ceiling = bw["gb_s"] * 1e9 / per_token
    frac = cached["tokens_per_s"] / ceiling
    probes = ", ".join(f"{k} {v:.1f}" for k, v in bw["probes_gb_s"].items())
    print("## 4. Batch-1 decode against the memory-bandwidth ceiling\n\n"
          "| parameter MB | KV cache MB | bytes / token MB | bandwidth GB/s | ceiling tokens/s | "
          "measured tokens/s | fraction |\n|---:|---:|---:|---:|---:|---:|---:|\n"
          f"| {gj['param_bytes'] / 1e6:.1f} | {gj['kv_cache_bytes'] / 1e6:.1f} | "
          f"{per_token / 1e6:.1f} | {bw['gb_s']:.1f} | {ceiling:.1f} | "
          f"{cached['tokens_per_s']:.1f} | **{frac:.0%}** |\n\n"
          f"- bandwidth: best read rate over a {bw['bytes'] / 2 ** 20:.0f} MiB float32 array "
          f"(min time of {max(args.repeats, 3)} runs after a warm-up), GB/s = 1e9 B/s: {probes}; "
          f"the ceiling uses {bw['best']}.\n"
          "- bytes / token = every parameter (float32, the padded 50304-row embedding included) "
          f"+ the whole KV cache of {p}+{n} slots, which each step reads in full.\n")
    hm, hc, hn = gj["hf_match"], hf["cache"], hf["no_cache"]
    m = args.hf_new_tokens
    agree = sum(a == b for a, b in zip(hm["tokens"], hc["tokens"]))
    print(f"## 5. gptjax vs Hugging Face `generate` (PyTorch CPU), greedy, batch 1, {m} new "
          "tokens\n\n| run | median s | ms / token | tokens/s | gptjax speed-up | compile s |\n"
          "|---|---:|---:|---:|---:|---:|\n"
          f"| gptjax `sampling.generate` | {hm['median_s']:.2f} | {hm['ms_per_step']:.1f} | "
          f"{hm['tokens_per_s']:.1f} | – | {hm['compile_s']:.1f} |\n"
          + "\n".join(f"| HF generate, use_cache={u} | {r['median_s']:.2f} | "
                      f"{r['median_s'] / m * 1e3:.1f} | {r['tokens_per_s']:.1f} | "
                      f"**{r['median_s'] / hm['median_s']:.2f}x** | – |"
                      for u, r in (("True", hc), ("False", hn))) + "\n\n"
          f"- same weights (HF random init, save_pretrained, gptjax.convert); greedy tokens "
          f"equal to HF's (use_cache=True) at {agree} of {m} positions. torch uses "
          f"{args.torch_threads or CORES} threads.\n")
    print("Numbers taken while other processes use the cores are unreliable.")
    return {"machine": {"cores": CORES, "load_avg": os.getloadavg()}, "args": vars(args),
            "hf": hf, "gptjax": gj,
            "summary": {"cached_over_uncached_same_n": step_unc / step_same,
                        "one_jit_over_python_loop": {
                            k: r["median_s"] / cached["median_s"] for k, r in loops.items()},
                        "small_one_jit_over_python_loop": {
                            k: small[k]["median_s"] / small["one_jit"]["median_s"]
                            for k in loops},
                        "bandwidth_gb_s": bw["gb_s"], "ceiling_tokens_per_s": ceiling,
                        "fraction_of_ceiling": frac,
                        "over_hf_cache": hc["median_s"] / hm["median_s"],
                        "over_hf_no_cache": hn["median_s"] / hm["median_s"]}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--new-tokens", type=int, default=256, help="batch-1 (and small-batch) run")
    ap.add_argument("--uncached-new-tokens", type=int, default=256)
    ap.add_argument("--uncached-repeats", type=int, default=1,
                    help="timed runs of the (slow) uncached decoder after its warm-up")
    ap.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")],
                    default=[1, 4, 16, 64])
    ap.add_argument("--large-batch", type=int, default=4,
                    help="batches above this use --large-batch-new-tokens")
    ap.add_argument("--large-batch-new-tokens", type=int, default=32)
    ap.add_argument("--hf-new-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3, help="timed runs after the warm-up")
    ap.add_argument("--torch-threads", type=int, default=0,
                    help="torch.set_num_threads for HF (0 = all cores; 1 is steadier when the "
                         "cores are shared)")
    ap.add_argument("--out", help="write every number as JSON here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--hf-dir", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        r = worker_hf(args) if args.worker == "hf" else worker_gptjax(args)
        print("RESULT " + json.dumps(r, default=float), flush=True)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        args.hf_dir = tmp
        hf = run_worker("hf", args)  # writes the model the gptjax worker converts
        gj = run_worker("gptjax", args)
    args.hf_dir = None
    out = report(args, hf, gj)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
