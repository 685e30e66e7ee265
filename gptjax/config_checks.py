"""The config's validation: checks that need no devices or data, each raising GptjaxError with
one line naming the key and the fix (`gptjax.config` re-exports them; configs start from
`gptjax.config.base_config`)."""

from __future__ import annotations

from typing import Any

import ml_collections

from gptjax import losses
from gptjax.data import formats
from gptjax.errors import GptjaxError

STAGES = ("prepare", "pretrain", "sft", "reward", "ppo", "eval", "grpo", "dpo", "pipeline")
TRUNCATED = ("penalty", "end", "mask", "none")  # ppo.truncated (gptjax/rl/iteration.py)
DPO_REFERENCE = ("per_batch", "precomputed")  # dpo.reference (gptjax/loops/dpo.py)
LORA_STAGES = ("sft", "reward", "dpo", "grpo", "ppo")  # the stages that train LoRA adapters
RL_LORA_STAGES = ("grpo", "ppo")  # ... whose ratio pi / pi_old needs the adapters without dropout


def seq_len(config: ml_collections.ConfigDict) -> int:
    return int(config.data.seq_len) or int(config.model.block_size)


# Counts that must be >= 1 (or >= 0), as (section, key); checked by `validate`.
POSITIVE = (("train", "steps"), ("train", "batch_size"), ("train", "grad_accum"),
            ("train", "log_every"), ("train", "eval_every"), ("train", "eval_batches"),
            ("train", "checkpoint_every"), ("train", "keep_checkpoints"),
            ("optim", "decay_steps"), ("reward", "normalize_max_new_tokens"))
NON_NEGATIVE = (("seed",), ("data", "seq_len"), ("data", "max_examples"),
                ("data", "skip_examples"), ("optim", "warmup_steps"), ("optim", "lr"),
                ("optim", "min_lr"), ("optim", "weight_decay"), ("optim", "grad_clip"),
                ("reward", "normalize_prompts"), ("ppo", "max_prompt_tokens"), ("ppo", "top_k"))
MODEL_POSITIVE = ("block_size", "n_layer", "n_head", "n_embd", "vocab_multiple")


def _key(config: ml_collections.ConfigDict, path: tuple[str, ...]) -> Any:
    node = config
    for p in path:
        node = node[p]
    return node


def validate_counts(config: ml_collections.ConfigDict) -> None:
    """Counts and rates that must be positive (or non-negative), and the resume switch."""
    for path, low in [(p, 1) for p in POSITIVE] + [(p, 0) for p in NON_NEGATIVE]:
        value = _key(config, path)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
            raise GptjaxError(f"{'.'.join(path)}={value!r} must be a number >= {low}; fix "
                              f"--config.{'.'.join(path)}")
    resume = config.train.resume
    if resume not in ("latest", "previous"):
        raise GptjaxError(f"train.resume={resume!r}: use latest (the newest checkpoint, which must "
                          "verify) or previous (the newest one that verifies)")
    if not 0.0 <= config.model.dropout < 1.0:
        raise GptjaxError(f"model.dropout={config.model.dropout} must be in [0, 1)")
    if config.runtime.cpu_devices < -1:
        raise GptjaxError(f"runtime.cpu_devices={config.runtime.cpu_devices}: use 0 (XLA's one "
                          "device), -1 (one per core) or a count")


def validate(config: ml_collections.ConfigDict, shape: bool = True) -> None:
    """Checks that need no devices or data; raises GptjaxError naming the key and the fix.
    `shape=False` skips the model-shape checks (a fine-tuning stage takes its shape from
    init_from, so they run again once it is known)."""
    if config.stage not in STAGES:
        raise GptjaxError(f"stage={config.stage!r} is unknown; stages are {STAGES}")
    validate_counts(config)
    if shape:
        validate_model(config)
    t = config.train
    if t.batch_size % t.grad_accum:
        raise GptjaxError(f"train.batch_size={t.batch_size} must be a positive multiple of "
                          f"train.grad_accum={t.grad_accum}")
    if config.sharding.gather_weights not in ("per_step", "per_micro_step"):
        raise GptjaxError(f"sharding.gather_weights={config.sharding.gather_weights!r}: use "
                          "per_step or per_micro_step")
    if not 0.0 < config.data.val_fraction < 1.0:
        raise GptjaxError(f"data.val_fraction={config.data.val_fraction} must be in (0, 1)")
    formats.check_format(config.data.format)
    if config.stage == "prepare":
        validate_prepare(config.prepare)
    if config.stage == "ppo":
        validate_ppo(config, shape)
    if config.stage == "eval":
        validate_eval(config.eval)
    if config.stage == "grpo":
        validate_grpo(config)
    if config.stage == "dpo":
        validate_dpo(config.dpo)
    validate_lora(config)


def validate_model(config: ml_collections.ConfigDict) -> None:
    """The model section's checks."""
    m = config.model
    for key in MODEL_POSITIVE:
        if not m[key] >= 1:
            raise GptjaxError(f"model.{key}={m[key]} must be >= 1")
    if m.vocab_size < 0:
        raise GptjaxError(f"model.vocab_size={m.vocab_size} must be >= 0 (0 = the tokenizer's)")
    if m.n_embd % m.n_head:
        raise GptjaxError(f"model.n_embd={m.n_embd} must be divisible by model.n_head={m.n_head}")
    if m.activation not in ("gelu_tanh", "gelu"):
        raise GptjaxError(f"model.activation={m.activation!r}: use gelu_tanh (GPT-2) or gelu")
    if m.dtype not in ("float32", "bfloat16", "float16"):
        raise GptjaxError(f"model.dtype={m.dtype!r}: use float32, bfloat16 or float16")
    if seq_len(config) > m.block_size:
        raise GptjaxError(
            f"data.seq_len={config.data.seq_len} is longer than model.block_size={m.block_size}: "
            "the position embedding has no rows past block_size. Lower data.seq_len or raise "
            "model.block_size.")


def validate_dpo(d: ml_collections.ConfigDict) -> None:
    """The dpo section's checks."""
    if d.loss not in losses.DPO_LOSSES:
        raise GptjaxError(f"dpo.loss={d.loss!r}: use one of {losses.DPO_LOSSES}")
    if d.beta <= 0:
        raise GptjaxError(f"dpo.beta={d.beta} must be > 0 (TRL's default is 0.1)")
    if not 0.0 <= d.label_smoothing < 0.5:
        raise GptjaxError(f"dpo.label_smoothing={d.label_smoothing} must be in [0, 0.5)")
    if d.label_smoothing and d.loss != "sigmoid":
        raise GptjaxError(f"dpo.label_smoothing applies to dpo.loss=sigmoid only (got "
                          f"dpo.loss={d.loss!r}); set it to 0")
    if d.reference not in DPO_REFERENCE:
        raise GptjaxError(f"dpo.reference={d.reference!r}: use one of {DPO_REFERENCE}")
    if d.displacement_warning < 0:
        raise GptjaxError(f"dpo.displacement_warning={d.displacement_warning} must be >= 0")


def validate_lora(config: ml_collections.ConfigDict) -> None:
    """The lora section's checks that need no model (targets and rank are checked against the
    model's projections by gptjax.lora.sites)."""
    lo = config.lora
    if lo.rank < 0:
        raise GptjaxError(f"lora.rank={lo.rank} must be >= 0 (0 = full fine-tuning)")
    if not lo.rank:
        return
    if config.stage not in LORA_STAGES:
        raise GptjaxError(f"lora.rank={lo.rank}: stage {config.stage!r} does not train LoRA "
                          f"adapters (stages that do: {LORA_STAGES}); set lora.rank=0")
    if lo.alpha <= 0:
        raise GptjaxError(f"lora.alpha={lo.alpha} must be > 0")
    if not 0.0 <= lo.dropout < 1.0:
        raise GptjaxError(f"lora.dropout={lo.dropout} must be in [0, 1)")
    if lo.dropout and config.stage in RL_LORA_STAGES:
        raise GptjaxError(f"lora.dropout={lo.dropout}: stage {config.stage!r} samples and scores "
                          "with the same network, so its adapters run without dropout (as TRL "
                          "disables dropout in RL); set lora.dropout=0")
    if not [t for t in str(lo.targets).split(",") if t.strip()]:
        raise GptjaxError("lora.targets is empty; name the projections to adapt, e.g. "
                          "attn/c_attn,attn/c_proj,mlp/c_fc,mlp/c_proj")


def validate_eval(e: ml_collections.ConfigDict) -> None:
    """The eval section's checks that need no workdir (workdirs are checked by the stage)."""
    tasks = ("perplexity", "reward_accuracy", "win_rate", "gsm8k")
    if not any(e[t].enabled for t in tasks):
        raise GptjaxError(f"stage eval has no task: enable one of {tasks}, e.g. "
                          "--config.eval.win_rate.enabled=True")
    p = e.perplexity
    if p.enabled and sum(bool(x) for x in (p.text_path, p.prepared_dir, p.sft_mixture)) != 1:
        raise GptjaxError("eval.perplexity needs exactly one of text_path, prepared_dir and "
                          "sft_mixture")
    if e.reward_accuracy.split not in ("heldout", "all"):
        raise GptjaxError(f"eval.reward_accuracy.split={e.reward_accuracy.split!r}: use heldout "
                          "or all")
    w = e.win_rate
    if w.samples_per_prompt < 1 or w.max_new_tokens < 1 or w.bootstrap < 1:
        raise GptjaxError("eval.win_rate.samples_per_prompt, max_new_tokens and bootstrap must "
                          "be >= 1")
    if w.temperature < 0 or not 0 < w.top_p <= 1 or w.top_k < 0 or w.tie_margin < 0:
        raise GptjaxError("eval.win_rate: temperature, top_k and tie_margin must be >= 0 and "
                          "top_p in (0, 1]")
    if e.gsm8k.max_new_tokens < 1 or e.batch_size < 1:
        raise GptjaxError("eval.gsm8k.max_new_tokens and eval.batch_size must be >= 1")


def validate_ppo(config: ml_collections.ConfigDict, shape: bool = True) -> None:
    """The ppo section's checks that need no workdir."""
    p = config.ppo  # (ppo.reward_from is checked by the stage: config files leave it empty)
    if p.batch_prompts < 1 or p.samples_per_prompt < 1 or p.epochs < 1:
        raise GptjaxError("ppo.batch_prompts, ppo.samples_per_prompt and ppo.epochs must be >= 1")
    rows = p.batch_prompts * p.samples_per_prompt
    if p.num_minibatches < 1 or rows % p.num_minibatches:
        raise GptjaxError(f"ppo.num_minibatches={p.num_minibatches} must divide the "
                          f"{rows} sequences of an iteration (batch_prompts x samples_per_prompt)")
    room = config.model.block_size - p.max_new_tokens
    if p.max_new_tokens < 1 or (shape and (room < 1 or p.max_prompt_tokens > room)):
        raise GptjaxError(
            f"ppo.max_new_tokens={p.max_new_tokens} + ppo.max_prompt_tokens="
            f"{p.max_prompt_tokens} must fit model.block_size={config.model.block_size} with "
            "room for a prompt; lower them")
    if (p.ptx_coef < 0 or p.ptx_batch < 0 or p.offset_prompts < 0 or p.eval_prompts < 0
            or p.score_clip < 0):
        raise GptjaxError("ppo.ptx_coef, ppo.ptx_batch, ppo.offset_prompts, ppo.eval_prompts "
                          "and ppo.score_clip must be >= 0")
    if (p.normalize_scores or p.score_clip) and not p.offset_prompts:
        raise GptjaxError("ppo.normalize_scores and ppo.score_clip are in units of the SFT "
                          "answers' score std, measured on ppo.offset_prompts prompts: set "
                          "ppo.offset_prompts > 0 (e.g. 64)")
    if p.truncated not in TRUNCATED:
        raise GptjaxError(f"ppo.truncated={p.truncated!r}: use one of {TRUNCATED}")
    if p.kl_kind not in losses.KL_KINDS:
        raise GptjaxError(f"ppo.kl_kind={p.kl_kind!r}: use one of {losses.KL_KINDS}")
    if p.target_kl < 0 or p.init_kl_coef < 0:
        raise GptjaxError("ppo.target_kl and ppo.init_kl_coef must be >= 0")
    if not p.temperature > 0 or not 0.0 < p.top_p <= 1.0:
        raise GptjaxError(f"ppo.temperature={p.temperature} must be > 0 and ppo.top_p="
                          f"{p.top_p} in (0, 1]: PPO samples from the policy itself")


def validate_grpo(config: ml_collections.ConfigDict) -> None:
    """The grpo section's checks that need no workdir."""
    from gptjax.rl import grpo, verifiers
    g = config.grpo
    verifiers.parse_rewards(g.rewards)  # unknown reward names: one line
    if g.batch_prompts < 1 or g.epochs < 1 or g.samples_per_prompt < 2 or g.oversample < 1:
        raise GptjaxError(f"grpo.samples_per_prompt={g.samples_per_prompt} must be >= 2 (a "
                          "group to compare with) and grpo.batch_prompts, grpo.epochs, "
                          f"grpo.oversample (={g.oversample}) >= 1")
    rows = g.batch_prompts * g.samples_per_prompt
    if g.num_minibatches < 1 or rows % g.num_minibatches:
        raise GptjaxError(f"grpo.num_minibatches={g.num_minibatches} must divide the {rows} "
                          "answers of an iteration (batch_prompts x samples_per_prompt)")
    room = config.model.block_size - g.max_new_tokens
    if g.max_new_tokens < 1 or room < 1 or g.max_prompt_tokens > room:
        raise GptjaxError(
            f"grpo.max_new_tokens={g.max_new_tokens} + grpo.max_prompt_tokens="
            f"{g.max_prompt_tokens} must fit model.block_size={config.model.block_size} with "
            "room for a prompt; lower them")
    for key, allowed in (("advantage", grpo.ADVANTAGES), ("scale", grpo.SCALES),
                         ("kl_kind", grpo.KL_KINDS), ("kl_in", grpo.KL_IN),
                         ("aggregation", grpo.AGGREGATIONS)):
        if g[key] not in allowed:
            raise GptjaxError(f"grpo.{key}={g[key]!r}: use one of {allowed}")
    if g.beta < 0 or g.clip_low < 0 or g.clip_high < 0 or g.eval_prompts < 0:
        raise GptjaxError("grpo.beta, grpo.clip_low, grpo.clip_high and grpo.eval_prompts must "
                          "be >= 0")
    if g.train_prompts < 1:
        raise GptjaxError(f"grpo.train_prompts={g.train_prompts} must be >= 1")


def validate_prepare(p: ml_collections.ConfigDict) -> None:
    """The prepare section's checks that need no input files."""
    if not 0.0 < p.val_fraction < 1.0:
        raise GptjaxError(f"prepare.val_fraction={p.val_fraction} must be in (0, 1)")
    if p.num_shards < 1:
        raise GptjaxError(f"prepare.num_shards={p.num_shards} must be >= 1")
    if p.text_unit not in ("file", "paragraph", "line"):
        raise GptjaxError(f"prepare.text_unit={p.text_unit!r}: use file, paragraph or line")
    if not 0.0 < p.dedup.threshold <= 1.0:
        raise GptjaxError(f"prepare.dedup.threshold={p.dedup.threshold} must be in (0, 1]")
    if p.dedup.bands and p.dedup.num_perm // p.dedup.bands < 1:
        raise GptjaxError(f"prepare.dedup.bands={p.dedup.bands} exceeds "
                          f"prepare.dedup.num_perm={p.dedup.num_perm}")
    if p.tokenizer.kind not in ("sentencepiece", "char"):
        raise GptjaxError(f"prepare.tokenizer.kind={p.tokenizer.kind!r}: use sentencepiece or char")
    if p.tokenizer.model_type not in ("bpe", "unigram"):
        raise GptjaxError(f"prepare.tokenizer.model_type={p.tokenizer.model_type!r}: use bpe or "
                          "unigram")
