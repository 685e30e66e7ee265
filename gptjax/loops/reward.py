"""Stage `reward`: the reward model, trained on human rankings of K answers per prompt.

`run(config, workdir)`: start the GPT trunk from `config.init_from` (the SFT workdir) with a
fresh scalar head, train on the preference data of `config.data.mixture` with InstructGPT's
ranking loss (all K answers of a prompt in one batch), then
1. evaluate pairwise accuracy on the held-out records (`reward_eval.json`: accuracy, number of
   labeled pairs, standard error sqrt(a(1-a)/n), chance level 0.5), and
2. normalise: sample the init model's answers to `reward.normalize_prompts` training prompts
   and store their mean reward as the offset every later score subtracts
   (`reward_normalization.json`), so the SFT policy starts PPO at mean reward 0.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gptjax import config as config_lib
from gptjax import losses, sharding
from gptjax import reward_model as rm
from gptjax import workdir as workdir_lib
from gptjax.data import preferences
from gptjax.loops import finetune, supervised, trainer, tuning
from gptjax.model import GPTConfig, RewardModel


def heldout_accuracy(params, cfg, val: list) -> dict[str, float]:
    """Pairwise accuracy over every labeled pair of the held-out records (the same accuracy as
    the training metric, over all records at once)."""
    data = preferences.stack(val)
    n, k, t = data["tokens"].shape
    scores = rm.score_tokens(params, cfg, data["tokens"].reshape(n * k, t),
                             data["lengths"].reshape(n * k)).reshape(n, k)
    _, aux = losses.ranking_loss(jnp.asarray(scores), jnp.asarray(data["pref"]),
                                 jnp.asarray(data["valid"]))
    acc, pairs = float(aux["accuracy"]), int(data["pref"].sum())
    return {"accuracy": acc, "pairs": pairs, "records": n, "chance": 0.5,
            "stderr": math.sqrt(acc * (1 - acc) / max(pairs, 1))}


def stage(config: ml_collections.ConfigDict, cfg: GPTConfig, k_max: int) -> trainer.Stage:
    """The reward-model stage of trunk shape `cfg` on batches of prompts with k_max answers each,
    without data or a start: what `gptjax.aot` compiles (the full model, no LoRA)."""
    seq_len = config_lib.seq_len(config)
    model = RewardModel(cfg)

    def init(r):
        tokens, lengths = jnp.zeros((1, seq_len), jnp.int32), jnp.ones((1,), jnp.int32)
        return model.init(r, tokens, lengths)["params"]

    return supervised.loss_stage(
        config, "reward", init, rm.rm_loss_fn(model, cfg.dropout > 0),
        tokens_per_step=config.train.batch_size * k_max * seq_len,
        flops_per_token=cfg.flops_per_token(seq_len),
        num_params=cfg.num_params(non_embedding=False))


def run(config: ml_collections.ConfigDict, workdir: str) -> trainer.RunResult:
    s = finetune.start(config, workdir)
    tcfg, seq_len = config.train, config_lib.seq_len(config)
    data = preferences.load(config.data.root, config.data.mixture, s.tokenizer, seq_len,
                            config.data.val_fraction, config.data.max_examples,
                            config.data.skip_examples)
    workdir_lib.write_json(workdir, "data_stats.json", data.stats)
    model = RewardModel(s.cfg)

    def init(r):
        tokens, lengths = jnp.zeros((1, seq_len), jnp.int32), jnp.ones((1,), jnp.int32)
        return model.init(r, tokens, lengths)["params"]

    def initial_params():
        head = nn.unbox(jax.jit(init)(jax.random.key(config.seed)))["head"]
        return {"trunk": s.params, "head": jax.device_get(head)}

    pidx, pcount = jax.process_index(), jax.process_count()
    train_it = preferences.train_iterator(data.train, tcfg.batch_size, config.seed, pidx, pcount,
                                          data.weights)
    val_set = preferences.val_stack(data.val, tcfg.batch_size, tcfg.eval_batches, pidx, pcount)
    answers = tcfg.batch_size * data.k_max
    # LoRA: adapters on the SFT trunk, the new head trained in full
    tune = tuning.make(config, workdir, model,
                       (jnp.zeros((1, seq_len), jnp.int32), jnp.ones((1,), jnp.int32)),
                       {"trunk": s.params}, initial_params, s.init_step, full_keys=("head",),
                       base_key="trunk")
    result = trainer.fit(config, workdir, supervised.loss_stage(
        config, "reward", tune.init, tune.wrap(rm.rm_loss_fn(model, s.cfg.dropout > 0)),
        # batch i holds records [i*B, (i+1)*B) whatever the process count
        data=trainer.Data.of_iterator(train_it, position_global=True), val=val_set,
        initial=tune.initial, frozen=tune.frozen, tokens_per_step=answers * seq_len,
        flops_per_token=tune.flops_per_token(s.cfg.flops_per_token(seq_len)),
        num_params=s.cfg.num_params(non_embedding=False), describe=tune.describe()))
    if result.interrupted_by is not None:
        return result
    # gathered when sharded over processes; LoRA adapters merged into the trunk
    params = tune.merged(sharding.to_host(result.state.params), {"trunk": s.params})
    report = heldout_accuracy(params, s.cfg, data.val)
    workdir_lib.write_json(workdir, "reward_eval.json", report)
    msg = (f"reward model held-out accuracy {report['accuracy']:.3f} ± {report['stderr']:.3f} "
           f"on {report['pairs']} pairs (chance 0.5)")
    n = min(config.reward.normalize_prompts, len(data.train_prompts))
    if n > 0:
        prompts = data.train_prompts[:n]
        replies = rm.sample_answers(s.params, s.cfg, s.tokenizer, prompts,
                                    config.reward.normalize_max_new_tokens, config.seed)
        tokens, lengths = rm.encode_answers(s.tokenizer, list(zip(prompts, replies)), seq_len)
        raw = rm.score_tokens(params, s.cfg, tokens, lengths)
        norm = {"offset": float(raw.mean()), "std": float(raw.std()), "prompts": n,
                "init_from": config.init_from}
        workdir_lib.write_json(workdir, rm.NORMALIZATION_FILE, norm)
        msg += f"; offset {norm['offset']:.4f} (mean reward of {n} SFT answers)"
    if jax.process_index() == 0:
        print(msg, flush=True)
    return result
