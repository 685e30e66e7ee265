"""The DPO step: gptjax against TRL's DPOTrainer, and gptjax's LoRA against full fine-tuning.

Same model shape (a GPT-2: --n_layer, --n_head, --n_embd, --vocab, biases, tanh GELU, fp32),
same batch (--batch preference pairs, each a --prompt-token prompt with --answer-token chosen and
rejected answers, no padding), same loss (DPO sigmoid, beta 0.1, the reference read every step
as a frozen copy of the policy), AdamW with clipping at 1.0. Each implementation runs in its own
subprocess (this script re-invokes itself with --worker), in alternating rounds, and times
--steps steps after --warmup untimed ones:

    gptjax       gptjax.loops.dpo: the stage's loss through supervised.loss_stage and
                 trainer.compile_stage, the jitted step on random token ids
    gptjax_lora  the same with lora.rank=--rank on the 4 projections (the base frozen: the
                 reference is the base with the adapters off)
    trl          trl.DPOTrainer on a transformers GPT2LMHeadModel of the same shape (a copy as
                 ref_model), its own data collator and concatenated forward; step time from a
                 TrainerCallback (on_step_begin -> on_step_end)

tokens/s counts the 2 x batch sequences of prompt + answer tokens a step reads. Memory: each
worker's peak RSS, and for gptjax the compiled step's memory analysis (arguments + temporaries:
parameters, optimizer state, the frozen reference and the activations).

    .venv-trl/bin/python benchmarks/dpo.py [--rounds 2] [--steps 10] [--n_layer 4 --n_embd 128 ...]

The Python that runs it must import both gptjax and TRL: `python3.11 -m venv .venv-trl &&
.venv-trl/bin/pip install -e . torch==2.13.0 trl==1.16.0 transformers==5.24.0 datasets`.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def pairs(args, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random token ids: prompts (B, P), chosen and rejected answers (B, A); never 0..3 (the
    ids the TRL tokenizer reserves)."""
    rng = np.random.default_rng(seed)
    b, p, a = args.batch, args.prompt, args.answer
    return (rng.integers(4, args.vocab, (b, p)), rng.integers(4, args.vocab, (b, a)),
            rng.integers(4, args.vocab, (b, a)))


def worker_gptjax(args, rank: int) -> dict:
    import tempfile

    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    from gptjax import config as config_lib, lora
    from gptjax import step as step_lib
    from gptjax.loops import dpo, supervised, trainer, tuning
    from gptjax.model import GPT

    t = args.prompt + args.answer
    config = config_lib.base_config()
    config_lib.overrides_from_dict(config, {
        "stage": "dpo", "model.vocab_size": args.vocab, "model.block_size": t,
        "model.n_layer": args.n_layer, "model.n_head": args.n_head, "model.n_embd": args.n_embd,
        "train.batch_size": args.batch, "optim.lr": 1e-5, "optim.warmup_steps": 0,
        "lora.rank": rank, "init_from": "none"})
    config.mesh.update(data=1, fsdp=1, tensor=1)
    cfg = config_lib.gpt_config(config)
    model = GPT(cfg)
    x = (jnp.zeros((1, t), jnp.int32),)
    base = jax.device_get(nn.unbox(jax.jit(lambda r: model.init(r, *x)["params"])(
        jax.random.key(0))))
    tune = tuning.make(config, tempfile.mkdtemp(), model, x, base, lambda: base, 0)
    frozen = tune.frozen or trainer.Frozen(lambda r: {"ref": model.init(r, *x)["params"]},
                                           lambda: {"ref": base})
    stage = supervised.loss_stage(config, "dpo", tune.init,
                                  dpo.make_loss_fn(model, tune, dpo.Hparams()),
                                  initial=tune.initial, frozen=frozen)
    c = trainer.compile_stage(config, stage, jax.devices()[:1])
    fz = jax.device_put(frozen.load(), c.frozen_shardings)
    shardings = step_lib.shardings_of(c.abstract)
    given = jax.device_put(tune.initial(), shardings.params) if tune.initial else fz
    state = jax.jit(stage.start, out_shardings=shardings)(given)
    prompt, chosen, rejected = pairs(args)
    seqs = np.stack([np.concatenate([prompt, chosen], 1), np.concatenate([prompt, rejected], 1)],
                    1)  # (B, 2, P + A)
    seqs = np.concatenate([seqs, np.zeros_like(seqs[..., :1])], -1)  # (B, 2, T + 1), last unused
    mask = np.zeros(seqs.shape, np.float32)
    mask[..., args.prompt:t] = 1.0  # targets t = P .. T-1 are the answer tokens
    pref = np.zeros((args.batch, 2, 2), np.float32)
    pref[:, 0, 1] = 1.0
    batch = jax.device_put({"tokens": seqs.astype(np.int32), "mask": mask, "pref": pref},
                           c.batch_sharding)
    step = c.train_step
    mem = step.lower(state, batch, fz).compile().memory_analysis()
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        state, metrics = step(state, batch, fz)
        jax.block_until_ready(metrics)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    params = lora.num_params(state.params)
    return {"step_s": times, "loss": float(metrics["loss"]), "trainable": params,
            "total": cfg.num_params(non_embedding=False),
            "state_bytes": lora.num_bytes(state), "frozen_bytes": lora.num_bytes(fz),
            "compiled_peak_bytes": int(mem.argument_size_in_bytes + mem.temp_size_in_bytes),
            "peak_rss_mib": peak_rss_mib()}


def _tokenizer(vocab: int):
    """A word-level tokenizer whose token i is the word 't<i>' (0..3: pad, eos, bos, unk)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    words = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3,
             **{f"t{i}": i for i in range(4, vocab)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>",
                                   bos_token="<bos>", unk_token="<unk>")


def worker_trl(args) -> dict:
    import tempfile

    import torch
    import transformers
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    torch.manual_seed(0)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    t = args.prompt + args.answer
    cfg = transformers.GPT2Config(vocab_size=args.vocab, n_positions=t, n_embd=args.n_embd,
                                  n_layer=args.n_layer, n_head=args.n_head,
                                  activation_function="gelu_new", resid_pdrop=0.0,
                                  embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=2,
                                  eos_token_id=1, pad_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    ref = transformers.GPT2LMHeadModel(cfg)
    ref.load_state_dict(model.state_dict())
    prompt, chosen, rejected = pairs(args)

    def text(ids):
        return " ".join(f"t{i}" for i in ids)

    n = args.batch * (args.warmup + args.steps + 2)
    # TRL appends the EOS to each answer: answers of A - 1 words + EOS = A tokens
    data = Dataset.from_dict({
        "prompt": [text(prompt[i % args.batch]) + " " for i in range(n)],
        "chosen": [text(chosen[i % args.batch][:-1]) for i in range(n)],
        "rejected": [text(rejected[i % args.batch][:-1]) for i in range(n)]})
    times: list[float] = []
    lengths: list[int] = []

    class Timer(transformers.TrainerCallback):
        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            times.append(time.perf_counter() - self.t0)

    with tempfile.TemporaryDirectory() as out:
        conf = DPOConfig(output_dir=out, per_device_train_batch_size=args.batch,
                         max_steps=args.warmup + args.steps, learning_rate=1e-5, beta=0.1,
                         max_length=None, lr_scheduler_type="constant", max_grad_norm=1.0,
                         logging_steps=10**6, save_strategy="no", report_to=[], use_cpu=True,
                         dataloader_num_workers=0, seed=0, bf16=False, fp16=False)
        trainer = DPOTrainer(model=model, ref_model=ref, args=conf, train_dataset=data,
                             processing_class=_tokenizer(args.vocab), callbacks=[Timer()])
        first = trainer.train_dataset[0]
        lengths = [len(first["prompt_ids"]), len(first["chosen_ids"]), len(first["rejected_ids"])]
        trainer.train()
    return {"step_s": times[args.warmup:], "lengths": lengths, "threads": torch.get_num_threads(),
            "trainable": sum(p.numel() for p in model.parameters()),
            "peak_rss_mib": peak_rss_mib()}


def run_worker(name: str, argv: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    r = subprocess.run([sys.executable, __file__, "--worker", name, *argv], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"worker {name} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", default="")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--n_layer", type=int, default=4)
    ap.add_argument("--n_head", type=int, default=4)
    ap.add_argument("--n_embd", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--answer", type=int, default=64)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--peers", default="gptjax,trl,gptjax_lora")
    ap.add_argument("--torch_threads", type=int, default=0, help="0: torch's default")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    if args.worker:
        sys.path.insert(0, ROOT)
        out = (worker_trl(args) if args.worker == "trl" else
               worker_gptjax(args, args.rank if args.worker == "gptjax_lora" else 0))
        print(json.dumps(out))
        return
    argv = [f"--{k}={v}" for k, v in vars(args).items() if k not in ("worker", "out")]
    peers = args.peers.split(",")
    results: dict[str, list[dict]] = {p: [] for p in peers}
    for r in range(args.rounds):
        for p in peers:
            res = run_worker(p, argv)
            results[p].append(res)
            print(f"round {r + 1} {p}: median step {np.median(res['step_s']) * 1e3:.1f} ms",
                  file=sys.stderr, flush=True)
    tokens = 2 * args.batch * (args.prompt + args.answer)
    print(f"\nDPO step: GPT-2 {args.n_layer}L/{args.n_head}H/{args.n_embd}d, vocab {args.vocab}, "
          f"{args.batch} pairs x ({args.prompt} prompt + {args.answer} answer tokens) = "
          f"{tokens} tokens/step, {args.steps} timed steps x {args.rounds} rounds\n")
    print("| implementation | median step ms (per round) | tokens/s | trainable params | "
          "peak RSS MiB | compiled step peak MiB |")
    print("|---|---|---:|---:|---:|---:|")
    tps = {}
    for p in peers:
        meds = [float(np.median(x["step_s"])) for x in results[p]]
        tps[p] = tokens / float(np.median(meds))
        last = results[p][-1]
        peak = last.get("compiled_peak_bytes")
        print(f"| {p} | {', '.join(f'{m * 1e3:.1f}' for m in meds)} | {tps[p]:.0f} | "
              f"{last['trainable']:,} | {max(x['peak_rss_mib'] for x in results[p]):.0f} | "
              + (f"{peak / 2**20:.1f}" if peak else "-") + " |")
    if "trl" in tps and "gptjax" in tps:
        per_round = [float(np.median(t["step_s"])) / float(np.median(g["step_s"]))
                     for g, t in zip(results["gptjax"], results["trl"])]
        print(f"\ngptjax / TRL tokens/s: {tps['gptjax'] / tps['trl']:.2f}x (per round "
              + ", ".join(f"{x:.2f}" for x in per_round) + "); TRL sequence lengths (prompt, "
              f"chosen, rejected) {results['trl'][-1]['lengths']}, torch threads "
              f"{results['trl'][-1]['threads']}")
    if "gptjax_lora" in tps and "gptjax" in tps:
        f, lo = results["gptjax"][-1], results["gptjax_lora"][-1]
        print(f"LoRA rank {args.rank} / full: step time "
              f"{tps['gptjax'] / tps['gptjax_lora']:.2f}x, trainable parameters "
              f"{lo['trainable'] / f['trainable']:.4f}x, train state (params + optimizer) "
              f"{lo['state_bytes'] / 2**20:.2f} vs {f['state_bytes'] / 2**20:.2f} MiB, frozen "
              f"{lo['frozen_bytes'] / 2**20:.2f} vs {f['frozen_bytes'] / 2**20:.2f} MiB, "
              f"compiled step peak {lo['compiled_peak_bytes'] / 2**20:.1f} vs "
              f"{f['compiled_peak_bytes'] / 2**20:.1f} MiB")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"args": vars(args), "results": results}, fh, indent=1)


if __name__ == "__main__":
    main()
