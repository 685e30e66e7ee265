"""Train-step throughput, MFU and memory of gptjax next to PyTorch peers, measured in one run.

    python benchmarks/train_throughput.py [--shapes shakespeare_char,gpt2_124m] [--peers hf,nanogpt]
        [--steps N] [--warmup W] [--out results.json]
    python benchmarks/train_throughput.py --end-to-end [--repeats R] [--e2e-steps N]

Every framework runs in its own subprocess (this file re-invoked with --worker), so each peak
RSS is that framework's alone. MFU = flops_per_token * tokens/s / peak, with flops_per_token =
6N + 6*L*T*C (GPTConfig.flops_per_token, the same count for every row) and peak = a float32
1024^3 jnp.dot measured once in the parent (gptjax.metrics.measured_matmul_peak).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import runpy
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

SHAPES = {  # shape name -> (config file, overrides)
    "shakespeare_char": ("configs/shakespeare_char.py", {}),
    "gpt2_124m": ("configs/gpt2_124m.py", {"model.dtype": "float32", "train.batch_size": 4,
                                           "data.seq_len": 128, "train.grad_accum": 1}),
}
DEFAULT_STEPS = {"shakespeare_char": 30, "gpt2_124m": 10}
PEERS = {"hf": "HF GPT2LMHeadModel (torch)", "nanogpt": "nanoGPT-style (torch)"}
# nanoGPT `train.py config/train_shakespeare_char.py` with the CPU settings of DESIGN.md
# (2000 iters, 4L/4H/128C, block 64, batch 12, dropout 0), as measured in the issue that asked
# for this benchmark, on a 2-core CPU machine like this one. Constants, not measured here.
NANOGPT_E2E = {"wall_s": 104.0, "val_loss": 1.886, "steps": 2000,
               "source": "nanoGPT CPU baby-GPT run, issue measurement on a 2-core machine"}
MIB = 2 ** 20
CORES = len(os.sched_getaffinity(0))


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss * 1024 / MIB  # ru_maxrss is in KiB on Linux


def load_config(shape: str):
    """The shape's real config file (its get_config()) with the benchmark's overrides."""
    from gptjax.config import overrides_from_dict
    path, overrides = SHAPES[shape]
    config = runpy.run_path(os.path.join(ROOT, path))["get_config"]()
    overrides_from_dict(config, overrides)
    return config


def shape_spec(shape: str) -> dict[str, Any]:
    """Plain numbers a torch worker needs (so it never imports jax), plus the FLOP count."""
    from gptjax.config import gpt_config, seq_len
    config = load_config(shape)
    m = gpt_config(config)
    t = seq_len(config)
    return dict(shape=shape, vocab_size=m.vocab_size, padded_vocab_size=m.padded_vocab_size,
                block_size=m.block_size, n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd,
                bias=m.bias, ln_eps=m.ln_eps, activation=m.activation,
                batch_size=int(config.train.batch_size),
                seq_len=t, lr=float(config.optim.lr), flops_per_token=m.flops_per_token(t))


def token_batches(spec: dict[str, Any], n: int = 4) -> list[np.ndarray]:
    """n random (B, T+1) int32 token windows, the same for every framework."""
    rng = np.random.default_rng(0)
    shape = (spec["batch_size"], spec["seq_len"] + 1)
    return [rng.integers(0, spec["vocab_size"], shape, dtype=np.int32) for _ in range(n)]


def time_steps(step: Callable[[int], float], steps: int, warmup: int) -> dict[str, Any]:
    """Call `step(i) -> loss` (it must block until done): the first call and warmup-1 more
    untimed, then `steps` timed calls; seconds per call and the first and last loss."""
    losses, times = [], []
    for i in range(max(warmup, 1) + steps):
        t0 = time.perf_counter()
        losses.append(step(i))
        times.append(time.perf_counter() - t0)
    timed = times[-steps:]
    return dict(step_s=statistics.median(timed), step_s_min=min(timed),
                step_s_mean=statistics.fmean(timed), first_step_s=times[0],
                loss_first=losses[0], loss_last=losses[-1])


def worker_gptjax(spec: dict[str, Any], steps: int, warmup: int) -> dict[str, Any]:
    """The real pretrain step from `gptjax.loops.pretrain.build` on random token batches."""
    from gptjax import runtime

    config = load_config(spec["shape"])
    # As `python -m gptjax.train` does: the config's CPU device split (one device per core for
    # the baby GPT) is set before JAX starts its backend.
    runtime.configure_cpu_devices(config.runtime.cpu_devices,
                                  config.train.batch_size // config.train.grad_accum)
    import jax
    from gptjax import sharding
    from gptjax.loops import pretrain

    pieces = pretrain.build(config)
    batches = [jax.device_put(x, pieces.batch_sharding) for x in token_batches(spec)]
    state = pieces.make_state(jax.random.key(0))
    with sharding.activated(pieces.mesh, pieces.rules):  # as in pretrain.run
        t0 = time.perf_counter()
        compiled = pieces.train_step.lower(state, batches[0]).compile()
        compile_s = time.perf_counter() - t0
        m = compiled.memory_analysis()
        compiled_mib = None if m is None else (m.argument_size_in_bytes + m.output_size_in_bytes
                                               + m.temp_size_in_bytes - m.alias_size_in_bytes) / MIB
        del compiled

        def step(i: int) -> float:
            nonlocal state
            state, metrics = pieces.train_step(state, batches[i % len(batches)])
            return float(metrics["loss"].block_until_ready())

        res = time_steps(step, steps, warmup)  # the first call reuses the AOT executable
    return dict(res, compile_s=compile_s, compiled_mib=compiled_mib,
                params=sum(x.size for x in jax.tree.leaves(state.params)),
                devices=f"{jax.device_count()} x {jax.devices()[0].device_kind}")


def build_nanogpt(spec: dict[str, Any]):
    """nanoGPT's model.py as publicly described: pre-LN blocks, SDPA causal attention, GELU MLP
    (exact or tanh per spec['activation']), tied wte/lm_head, bias flag honoured, N(0, 0.02)
    init with scaled residual projections."""
    import math

    import torch
    from torch import nn
    from torch.nn import functional as F

    c, h, nl, bias = spec["n_embd"], spec["n_head"], spec["n_layer"], spec["bias"]
    # nanoGPT's nn.GELU() is exact; GPT-2 shapes use the tanh form, like gptjax's config.
    gelu_approx = "tanh" if spec.get("activation", "gelu_tanh") == "gelu_tanh" else "none"

    def layer_norm():
        return nn.LayerNorm(c, eps=spec["ln_eps"], bias=bias)

    class CausalSelfAttention(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn, self.c_proj = nn.Linear(c, 3 * c, bias=bias), nn.Linear(c, c, bias=bias)

        def forward(self, x):
            b, t, _ = x.size()
            q, k, v = self.c_attn(x).split(c, dim=2)
            q, k, v = (z.view(b, t, h, c // h).transpose(1, 2)  # (B, nh, T, hs)
                       for z in (q, k, v))
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.attn, self.ln_2 = layer_norm(), CausalSelfAttention(), layer_norm()
            self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(c, 4 * c, bias=bias),
                                          c_proj=nn.Linear(4 * c, c, bias=bias)))

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            y = F.gelu(self.mlp.c_fc(self.ln_2(x)), approximate=gelu_approx)
            return x + self.mlp.c_proj(y)

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(spec["vocab_size"], c)
            self.wpe = nn.Embedding(spec["block_size"], c)
            self.h = nn.ModuleList(Block() for _ in range(nl))
            self.ln_f = layer_norm()
            self.lm_head = nn.Linear(c, spec["vocab_size"], bias=False)
            self.lm_head.weight = self.wte.weight  # weight tying
            for name, p in self.named_parameters():
                if p.dim() >= 2:
                    std = 0.02 / math.sqrt(2 * nl) if name.endswith("c_proj.weight") else 0.02
                    nn.init.normal_(p, 0.0, std)
                elif name.endswith("bias"):
                    nn.init.zeros_(p)

        def forward(self, idx):
            pos = torch.arange(idx.size(1), device=idx.device)
            x = self.wte(idx) + self.wpe(pos)
            for block in self.h:
                x = block(x)
            return self.lm_head(self.ln_f(x))

    return GPT()


def build_hf(spec: dict[str, Any]):
    """transformers' GPT2LMHeadModel from a GPT2Config (random init; biases always on)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=spec["vocab_size"], n_positions=spec["block_size"],
                     n_embd=spec["n_embd"], n_layer=spec["n_layer"], n_head=spec["n_head"],
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                     activation_function="gelu_new", layer_norm_epsilon=spec["ln_eps"],
                     bos_token_id=None, eos_token_id=None)
    model = GPT2LMHeadModel(cfg)
    return lambda idx: model(input_ids=idx).logits, model


def torch_matmul_peak(n: int = 1024, repeats: int = 10) -> float:
    """Best float32 FLOP/s of a torch (n x n) @ (n x n), for comparison with jnp.dot's."""
    import torch
    a, times = torch.ones(n, n), []
    for _ in range(repeats + 1):  # the first one warms up
        t0 = time.perf_counter()
        a @ a
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / min(times[1:])


def worker_torch(peer: str, spec: dict[str, Any], steps: int, warmup: int) -> dict[str, Any]:
    """fp32 AdamW(betas 0.9/0.95, wd 0.1 on matrices) + clip_grad_norm_(1.0), one step a batch."""
    import torch
    from torch.nn import functional as F
    torch.set_num_threads(CORES)
    torch.manual_seed(0)
    forward, model = build_hf(spec) if peer == "hf" else (build_nanogpt(spec),) * 2
    model.train()
    params = list(model.parameters())  # tied weights appear once
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=spec["lr"], betas=(0.9, 0.95))
    batches = [torch.from_numpy(x).long() for x in token_batches(spec)]
    v = spec["vocab_size"]

    def step(i: int) -> float:
        tokens = batches[i % len(batches)]
        logits = forward(tokens[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, v), tokens[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    res = time_steps(step, steps, warmup)
    return dict(res, params=sum(p.numel() for p in params), torch_matmul_peak=torch_matmul_peak(),
                threads=torch.get_num_threads())


def run_worker(name: str, spec: dict[str, Any], steps: int, warmup: int) -> dict[str, Any]:
    """Run one framework in a fresh interpreter; its stderr passes through, its stdout is parsed."""
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", name, "--spec", json.dumps(spec),
           "--steps", str(steps), "--warmup", str(warmup)]
    print(f"[{spec['shape']}] {name}: {warmup} + {steps} steps", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": f"worker exited with code {proc.returncode}"}
    return json.loads(lines[-1][len("RESULT "):])


def _f(x: Any, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def shape_table(shape: str, spec: dict[str, Any], results: dict[str, dict[str, Any]]) -> str:
    s = spec
    lines = [f"### {shape}: {s['n_layer']}L {s['n_head']}H {s['n_embd']}C, vocab "
             f"{s['vocab_size']}, B={s['batch_size']} T={s['seq_len']} "
             f"({s['batch_size'] * s['seq_len']} tokens/step), block {s['block_size']}, "
             f"bias={s['bias']}, fp32; {s['flops_per_token'] / 1e6:.2f} MFLOP/token", "",
             "| impl | params | step ms | tokens/s | MFU | compile s | compiled MiB | peak RSS MiB"
             " | loss first→last | tokens/s gptjax/peer | RSS gptjax/peer |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    ours = results.get("gptjax", {})
    for name, r in results.items():
        label = "gptjax" if name == "gptjax" else PEERS[name]
        if "error" in r:
            lines.append(f"| {label} | {r['error']} |" + " |" * 9)
            continue
        ratio_tps = ratio_rss = None
        if name != "gptjax" and "tokens_per_s" in ours:
            ratio_tps = ours["tokens_per_s"] / r["tokens_per_s"]
            ratio_rss = ours["peak_rss_mib"] / r["peak_rss_mib"]
        lines.append(
            f"| {label} | {r['params'] / 1e6:.2f}M | {r['step_s'] * 1e3:.1f} | "
            f"{r['tokens_per_s']:,.0f} | {r['mfu']:.1%} | {_f(r.get('compile_s'), '.1f')} | "
            f"{_f(r.get('compiled_mib'), ',.0f')} | {r['peak_rss_mib']:,.0f} | "
            f"{r['loss_first']:.3f}→{r['loss_last']:.3f} | {_f(ratio_tps, '.2f')} | "
            f"{_f(ratio_rss, '.2f')} |")
    notes = ["gptjax pads the embedding to a multiple of 128 rows "
             f"({s['vocab_size']}→{s['padded_vocab_size']}); peers use {s['vocab_size']}."]
    if not s["bias"]:
        notes.append("gptjax and nanoGPT-style run bias=False as configured; HF GPT-2 always "
                     "has biases (Linear and LayerNorm), so it has a few more parameters.")
    peaks = [f"{PEERS[n]} {r['torch_matmul_peak'] / 1e9:.0f}" for n, r in results.items()
             if "torch_matmul_peak" in r]
    if peaks:
        notes.append("torch's own fp32 1024^3 matmul, GFLOP/s (not used for MFU): "
                     + ", ".join(peaks) + ".")
    return "\n".join(lines + [""] + [f"- {n}" for n in notes])


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    import jax
    from gptjax.metrics import measured_matmul_peak
    shapes = [s for s in args.shapes.split(",") if s]
    peers = [p for p in args.peers.split(",") if p]
    unknown = [s for s in shapes if s not in SHAPES] + [p for p in peers if p not in PEERS]
    if unknown:
        sys.exit(f"unknown shape/peer {unknown}; shapes: {list(SHAPES)}, peers: {list(PEERS)}")
    peak = measured_matmul_peak()
    out = {"machine": {"cores": CORES, "jax": jax.__version__,
                       "device": jax.devices()[0].device_kind},
           "peak_flops": peak, "peak_source": "float32 jnp.dot 1024^3, best of 10", "shapes": {}}
    print(f"## gptjax train step vs PyTorch peers ({CORES} cores, "
          f"jax {jax.__version__}, {jax.devices()[0].device_kind})\n\n"
          f"Peak for MFU: {peak / 1e9:.1f} GFLOP/s (measured float32 jnp.dot 1024^3, best of 10)."
          f" MFU = flops_per_token * tokens/s / peak, flops_per_token = 6N + 6·L·T·C.\n",
          flush=True)
    for shape in shapes:
        spec = shape_spec(shape)
        steps = args.steps or DEFAULT_STEPS[shape]
        results = {name: run_worker(name, spec, steps, args.warmup)
                   for name in ["gptjax"] + peers}
        for r in results.values():
            if "step_s" in r:  # MFU = flops_per_token * tokens/s / peak
                r["tokens_per_s"] = spec["batch_size"] * spec["seq_len"] / r["step_s"]
                r["mfu"] = spec["flops_per_token"] * r["tokens_per_s"] / peak
        out["shapes"][shape] = {"spec": spec, "steps": steps, "warmup": args.warmup,
                                "results": results}
        print(shape_table(shape, spec, results) + "\n", flush=True)
    print("Columns: see benchmarks/README.md. Numbers taken while other processes use the cores "
          "are unreliable.")
    return out


def _timed(cmd: list[str]) -> tuple[float, str, float]:
    """(wall seconds, stdout, peak RSS MiB) of a child process run to completion."""
    before = peak_rss_mib(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode:
        sys.exit(f"{' '.join(cmd[1:3])} exited with code {proc.returncode}")
    # ru_maxrss of children is the max over all of them: right for the first child only.
    return wall, proc.stdout, max(peak_rss_mib(resource.RUSAGE_CHILDREN), before)


def _gptjax_e2e(steps: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as workdir:
        cmd = [sys.executable, "-m", "gptjax.train", "--config", "configs/shakespeare_char.py",
               "--workdir", workdir, "--config.train.progress=False"]
        if steps:
            cmd.append(f"--config.train.steps={steps}")
        wall, out, rss = _timed(cmd)
        sys.stderr.write(out)
        loop = re.search(r"steps in ([0-9.]+)s", out)  # pretrain.run's own loop time
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            records = [json.loads(line) for line in f if line.strip()]
    evals = [r for r in records if "val_loss" in r]
    return {"wall_s": wall, "loop_s": float(loop.group(1)) if loop else None,
            "val_loss": evals[-1]["val_loss"], "steps": int(records[-1]["step"]),
            "peak_rss_mib": rss}


def _nanogpt_e2e() -> dict[str, Any]:
    wall, out, _ = _timed([sys.executable, os.path.join(ROOT, "benchmarks", "nanogpt_train.py")])
    return dict(json.loads(out.split("RESULT ", 1)[1]), wall_s=wall)


def end_to_end(args: argparse.Namespace) -> dict[str, Any]:
    """Wall time and final val_loss of the real CLI run of configs/shakespeare_char.py, next to
    nanoGPT's train.py loop (benchmarks/nanogpt_train.py, PyTorch) on the same machine, the two
    alternating for --repeats rounds (this is what makes a drifting machine comparable)."""
    ours, peers = [], []
    for _ in range(args.repeats):
        ours.append(_gptjax_e2e(args.e2e_steps))
        if not args.e2e_steps:
            peers.append(_nanogpt_e2e())
    med = statistics.median
    ref = NANOGPT_E2E
    rows = [f"| gptjax (round {i + 1}) | {r['steps']} | {r['wall_s']:.1f} | "
            f"{_f(r['loop_s'], '.1f')} | {r['val_loss']:.4f} | {r['peak_rss_mib']:,.0f} |"
            for i, r in enumerate(ours)]
    rows += [f"| nanoGPT train.py loop, PyTorch (round {i + 1}) | {r['steps']} | "
             f"{r['wall_s']:.1f} | {r['loop_s']:.1f} | {r['val_loss']:.4f} | "
             f"{r['peak_rss_mib']:,.0f} |" for i, r in enumerate(peers)]
    rows.append(f"| nanoGPT (issue's constant) | {ref['steps']} | {ref['wall_s']:.0f} | – | "
                f"{ref['val_loss']:.3f} | – |")
    wall = med(r["wall_s"] for r in ours)
    if peers:
        ratios = [o["wall_s"] / p["wall_s"] for o, p in zip(ours, peers)]
        ratio = (f"- wall gptjax/nanoGPT-peer per round: "
                 f"{', '.join(f'{x:.2f}' for x in ratios)} (median {med(ratios):.2f}); "
                 f"median gptjax wall / issue constant: {wall / ref['wall_s']:.2f}.\n")
    else:
        ratio = f"- not comparable: {ours[0]['steps']} steps, not {ref['steps']}.\n"
    print(f"## End to end: python -m gptjax.train --config configs/shakespeare_char.py "
          f"({CORES} cores)\n\n"
          "| run | steps | wall s | loop s | final val_loss | peak RSS MiB |\n"
          "|---|---:|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n\n"
          f"- constant row: {ref['source']}.\n" + ratio +
          "- wall s: the whole command (start-up, data preparation, compilation, evaluation, "
          "checkpoints); loop s: the training loop alone. The PyTorch peer's val_loss is its "
          "own estimate (20 random batches, as nanoGPT), gptjax's is its fixed validation set "
          "(20 batches of evenly spaced windows).", flush=True)
    return {"end_to_end": {"gptjax": ours, "nanogpt_peer": peers, "nanogpt_reference": ref}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="shakespeare_char,gpt2_124m", help=", ".join(SHAPES))
    ap.add_argument("--peers", default="hf,nanogpt", help="comma list of " + ", ".join(PEERS))
    ap.add_argument("--steps", type=int, default=0, help=f"timed steps ({DEFAULT_STEPS})")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (after compile)")
    ap.add_argument("--out", help="write every number as JSON here")
    ap.add_argument("--end-to-end", action="store_true", help="time the real char run instead")
    ap.add_argument("--repeats", type=int, default=2,
                    help="end-to-end rounds, gptjax and the PyTorch peer alternating")
    ap.add_argument("--e2e-steps", type=int, default=0,
                    help="override train.steps of the end-to-end run (default: the config's)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--spec", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        spec = json.loads(args.spec)
        if args.worker == "gptjax":
            r = worker_gptjax(spec, args.steps, args.warmup)
        else:
            r = worker_torch(args.worker, spec, args.steps, args.warmup)
        print("RESULT " + json.dumps(dict(r, peak_rss_mib=peak_rss_mib())), flush=True)
        return 0
    out = end_to_end(args) if args.end_to_end else throughput(args)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
