"""Stage `dpo`: direct preference optimisation (DPO / IPO / SLiC hinge) of the SFT model.

`run(config, workdir)`: the policy and the frozen reference start from `config.init_from` (the
SFT workdir). Each record of `config.data.mixture` (preference pairs, or K ranked answers giving
their labeled pairs; gptjax/data/dpo.py) has its K answers scored in one forward pass: the
sequence log-prob log pi(y_k | x) sums the log-probs of answer k's own tokens (the assistant
turn and its <|end|>; ipo: their mean). The loss is `losses.dpo_loss` on
rho_k = log pi(y_k | x) - log pi_ref(y_k | x), with `dpo.loss`, `dpo.beta`, `dpo.label_smoothing`.

The reference's log-probs (`dpo.reference`): per_batch reads the frozen reference every step (a
copy of the SFT model, or under LoRA the frozen base itself); precomputed computes them once for
every record before training and caches them in the workdir (ref_logps.npz; reused on resume
when the data and reference are the same). The policy trains in full or, with lora.rank > 0, as
LoRA adapters on the SFT model (gptjax/loops/tuning.py). Dropout is off in the policy's and the
reference's forward (TRL's disable_dropout), so the first step has rho = 0 exactly; the
adapters' own dropout (lora.dropout) still applies.

Logged as TRL does (train and held-out): rewards_chosen, rewards_rejected, rewards_margins,
rewards_accuracies, logps_chosen, logps_rejected. The known failure, the held-out log-probs of
chosen and rejected answers both falling below the reference's while the margin grows, is
logged (val_chosen_logp_change, val_rejected_logp_change) and warned about. After training,
dpo_eval.json holds the preference accuracy (implicit reward margin > 0) over every labeled
pair of the held-out records, with its standard error.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gptjax import config as config_lib
from gptjax import losses, lora, sharding
from gptjax import workdir as workdir_lib
from gptjax.data import dpo as dpo_data, preferences
from gptjax.loops import finetune, supervised, trainer, tuning
from gptjax.model import GPT, GPTConfig

REF_CACHE = "ref_logps.npz"
EVAL_FILE = "dpo_eval.json"


@dataclasses.dataclass(frozen=True)
class Hparams:
    loss: str = "sigmoid"
    beta: float = 0.1
    label_smoothing: float = 0.0

    @property
    def average(self) -> bool:  # IPO compares per-token mean log-probs (as TRL does)
        return self.loss == "ipo"


def hparams(config: ml_collections.ConfigDict) -> Hparams:
    d = config.dpo
    return Hparams(d.loss, float(d.beta), float(d.label_smoothing))


def answer_logps(model: GPT, params: Any, batch: dict[str, Any], average: bool) -> jax.Array:
    """Sequence log-probs (P, K) of every answer of batch tokens / mask (P, K, T + 1)."""
    p, k, t1 = batch["tokens"].shape
    tokens = batch["tokens"].reshape(p * k, t1)
    mask = batch["mask"].reshape(p * k, t1)
    logits = model.apply({"params": params}, tokens[:, :-1])  # (P*K, T, V), no dropout
    return losses.sequence_logprobs(logits, tokens[:, 1:], mask[:, 1:], average).reshape(p, k)


def make_loss_fn(model: GPT, tune: tuning.Tuning, hp: Hparams):
    """loss_fn(params, batch, rng[, frozen]) -> (DPO loss, TRL's metrics). The reference's
    log-probs are batch['ref_logps'] when precomputed, else read from the frozen reference
    (`reference_params`: frozen['ref'], or under LoRA frozen['base'], the base with the
    adapters off, with the SFT values of groups trained in full)."""
    def loss_fn(params, batch, rng, *frozen):
        fz = frozen[0] if frozen else None
        with tune.adapters(params, rng):
            logps = answer_logps(model, tune.model_params(params, fz), batch, hp.average)
        if "ref_logps" in batch:
            ref = batch["ref_logps"]
        else:
            ref = answer_logps(model, reference_params(fz, tune), batch, hp.average)
        return losses.dpo_loss(logps, ref, batch["pref"], hp.beta, hp.loss, hp.label_smoothing)
    return loss_fn


@functools.partial(jax.jit, static_argnames=("cfg", "average"))
def _logps(params, cfg: GPTConfig, tokens, mask, average: bool):
    batch = {"tokens": tokens[:, None], "mask": mask[:, None]}
    return answer_logps(GPT(cfg), params, batch, average)[:, 0]


def logps_of(params: Any, cfg: GPTConfig, records: list[dict[str, np.ndarray]], average: bool,
             chunk: int = 32) -> np.ndarray:
    """(N, K) sequence log-probs of the records' answers on the default device, in fixed-size
    chunks (one compile); padded answers get 0."""
    data = preferences.stack(records)
    n, k, t1 = data["tokens"].shape
    tokens, mask = data["tokens"].reshape(n * k, t1), data["mask"].reshape(n * k, t1)
    params = jax.device_put(params)
    out = []
    for i in range(0, n * k, chunk):
        tk, mk = tokens[i:i + chunk], mask[i:i + chunk]
        pad = chunk - len(tk)
        tk, mk = np.pad(tk, ((0, pad), (0, 0))), np.pad(mk, ((0, pad), (0, 0)))
        out.append(np.asarray(_logps(params, cfg, tk, mk, average))[:chunk - pad])
    return np.concatenate(out).reshape(n, k)


def _fingerprint(records: list[dict[str, np.ndarray]], extra: str) -> str:
    h = hashlib.blake2b(extra.encode(), digest_size=16)
    for r in records:
        h.update(r["tokens"].tobytes())
        h.update(r["mask"].tobytes())
    return h.hexdigest()


def reference_params(frozen: Any, tune: tuning.Tuning) -> Any:
    """The reference's parameters among the frozen models: the SFT copy, or under LoRA the
    frozen base (the adapters off) with the SFT values of any groups trained in full."""
    if tune.spec is None:
        return frozen["ref"]
    return lora.overlay(frozen["base"], frozen["ref_full"]) if tune.full else frozen["base"]


def attach_reference(workdir: str, data: dpo_data.PairData, ref_params: Any, cfg: GPTConfig,
                     hp: Hparams, ref_name: str) -> bool:
    """Add each record's reference log-probs ('ref_logps' (K,)), from the workdir's cache when
    it was computed for the same records and reference, else computed now and cached. Returns
    whether the cache was reused."""
    groups = [*data.train, data.val]
    flat = [r for g in groups for r in g]
    key = _fingerprint(flat, f"{ref_name}|average={hp.average}|{cfg}")
    path = os.path.join(workdir, REF_CACHE)
    cached = None
    if os.path.isfile(path):
        with np.load(path) as f:
            if str(f["fingerprint"]) == key:
                cached = f["ref_logps"]
    reused = cached is not None
    if cached is None:
        cached = logps_of(ref_params, cfg, flat, hp.average)
        if jax.process_index() == 0:
            np.savez(path + ".tmp.npz", ref_logps=cached, fingerprint=key)
            os.replace(path + ".tmp.npz", path)
    for r, lp in zip(flat, cached):
        r["ref_logps"] = lp.astype(np.float32)
    return reused


def heldout_report(policy: Any, ref: Any, cfg: GPTConfig, val: list, hp: Hparams
                   ) -> dict[str, float]:
    """Over every labeled pair of the held-out records: preference accuracy (implicit reward
    margin r_w - r_l > 0; ties count as wrong), its standard error sqrt(a(1-a)/n), the mean
    margin and rewards, and the policy's and reference's log-probs of chosen / rejected."""
    pol = logps_of(policy, cfg, val, hp.average)
    ref_lp = (np.stack([r["ref_logps"] for r in val]) if "ref_logps" in val[0]
              else logps_of(ref, cfg, val, hp.average))
    w, wi, li = np.nonzero(np.stack([r["pref"] for r in val]))  # (record, w, l) of each pair
    r = hp.beta * (pol - ref_lp)
    margin = r[w, wi] - r[w, li]
    acc = float((margin > 0).mean())
    return {"accuracy": acc, "pairs": int(len(margin)), "records": len(val), "chance": 0.5,
            "stderr": math.sqrt(acc * (1 - acc) / max(len(margin), 1)),
            "margin": float(margin.mean()), "rewards_chosen": float(r[w, wi].mean()),
            "rewards_rejected": float(r[w, li].mean()),
            "logps_chosen": float(pol[w, wi].mean()), "logps_rejected": float(pol[w, li].mean()),
            "ref_logps_chosen": float(ref_lp[w, wi].mean()),
            "ref_logps_rejected": float(ref_lp[w, li].mean())}


@dataclasses.dataclass
class Displacement:
    """The eval report: every held-out metric as val_<name>, the change of the chosen and
    rejected answers' log-probs from the reference's (rewards / beta), and a warning when both
    fell by more than `threshold` while the margin is positive: the policy is moving
    probability off both answers (likelihood displacement), winning the margin by pushing the
    rejected answer down faster rather than the chosen one up."""

    beta: float
    threshold: float
    warnings: int = 0

    def report(self, step: int, out: dict[str, np.ndarray]) -> dict[str, float]:
        m = {f"val_{k}": float(v) for k, v in out.items()}
        d_w, d_l = m["val_rewards_chosen"] / self.beta, m["val_rewards_rejected"] / self.beta
        m["val_chosen_logp_change"], m["val_rejected_logp_change"] = d_w, d_l
        falling = (self.threshold > 0 and d_w < -self.threshold and d_l < -self.threshold
                   and m["val_rewards_margins"] > 0)
        m["val_displacement"] = float(falling)
        if falling:
            self.warnings += 1
            if jax.process_index() == 0:
                print(f"gptjax dpo: warning: at step {step} the held-out log-probs of the chosen "
                      f"and the rejected answers have both fallen below the reference's "
                      f"({d_w:+.2f} and {d_l:+.2f} nats) while the margin grew to "
                      f"{m['val_rewards_margins'] / self.beta:.2f}: the policy moves probability "
                      "off both answers. Consider a lower optim.lr, a larger dpo.beta, or "
                      "dpo.loss=ipo.", file=sys.stderr, flush=True)
        return m


def run(config: ml_collections.ConfigDict, workdir: str) -> trainer.RunResult:
    s = finetune.start(config, workdir)
    tcfg, seq_len, hp = config.train, config_lib.seq_len(config), hparams(config)
    data = dpo_data.load(config.data.root, config.data.mixture, s.tokenizer, seq_len,
                         config.data.val_fraction, config.data.max_examples)
    model = GPT(s.cfg)
    tune = tuning.make(config, workdir, model, (jnp.zeros((1, seq_len), jnp.int32),), s.params,
                       lambda: s.params, s.init_step)
    precomputed = config.dpo.reference == "precomputed"
    frozen = tune.frozen  # LoRA: the base, which is also the reference
    if precomputed:
        reused = attach_reference(workdir, data, s.params, s.cfg, hp,
                                  f"{os.path.abspath(config.init_from)}@{s.init_step}")
        data.stats["reference"] = {"precomputed": True, "cache_reused": reused}
    elif tune.spec is None:  # a frozen copy of the SFT model
        frozen = trainer.Frozen(
            lambda r: {"ref": model.init(r, jnp.zeros((1, seq_len), jnp.int32))["params"]},
            lambda: {"ref": s.params})
    elif tune.full:  # LoRA training groups in full (lora.train): the reference keeps their SFT
        base = tune.frozen  # values, which the frozen base lacks
        frozen = trainer.Frozen(
            lambda r: {**base.init(r), "ref_full": lora.pick(
                model.init(r, jnp.zeros((1, seq_len), jnp.int32))["params"], tune.full)},
            lambda: {**base.load(), "ref_full": lora.pick(s.params, tune.full)})
    workdir_lib.write_json(workdir, "data_stats.json", data.stats)
    if jax.process_index() == 0:
        for name, st in data.stats.items():
            if name != "reference":
                print(f"dpo data {name}: {st['train']} training and {st['val']} held-out of "
                      f"{st['records']} records ({st['too_long']} too long for {seq_len + 1} "
                      f"tokens, {st['not_encodable']} not encodable)", flush=True)
    pidx, pcount = jax.process_index(), jax.process_count()
    train_it = preferences.train_iterator(data.train, tcfg.batch_size, config.seed, pidx, pcount,
                                          data.weights)
    val_set = preferences.val_stack(data.val, tcfg.batch_size, tcfg.eval_batches, pidx, pcount)
    flops = s.cfg.flops_per_token(seq_len)
    monitor = Displacement(hp.beta, float(config.dpo.displacement_warning))
    result = trainer.fit(config, workdir, supervised.loss_stage(
        config, "dpo", tune.init, make_loss_fn(model, tune, hp),
        data=trainer.Data.of_iterator(train_it, position_global=True), val=val_set,
        initial=tune.initial, frozen=frozen, eval_report=monitor.report, eval_at_start=True,
        tokens_per_step=tcfg.batch_size * data.k_max * seq_len,
        flops_per_token=tune.flops_per_token(flops) + (0 if precomputed else flops / 3),
        num_params=s.cfg.num_params(non_embedding=False),
        describe=f"{hp.loss} beta {hp.beta:g}, reference {config.dpo.reference}, "
                 + tune.describe()))
    if result.interrupted_by is not None:
        return result
    policy = tune.merged(sharding.to_host(result.state.params), s.params)
    report = heldout_report(policy, s.params, s.cfg, data.val, hp)
    report["displacement_warnings"] = monitor.warnings
    workdir_lib.write_json(workdir, EVAL_FILE, report)
    if jax.process_index() == 0:
        print(f"dpo held-out preference accuracy {report['accuracy']:.3f} ± "
              f"{report['stderr']:.3f} on {report['pairs']} pairs (chance 0.5); margin "
              f"{report['margin']:.3f}; chosen / rejected log-prob change "
              f"{report['logps_chosen'] - report['ref_logps_chosen']:+.2f} / "
              f"{report['logps_rejected'] - report['ref_logps_rejected']:+.2f}", flush=True)
    return result
