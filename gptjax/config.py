"""The base ml_collections config every file in configs/ starts from (its validation is in
`gptjax.config_checks`, re-exported here).

The returned config is locked: a config file or a `--config.x.y=v` flag that names a key which
does not exist is an error instead of a silently ignored typo.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import ml_collections

from gptjax import axes, lora
from gptjax.config_checks import (  # noqa: F401 (the validation, re-exported)
    STAGES, TRUNCATED, DPO_REFERENCE, LORA_STAGES, RL_LORA_STAGES,
    seq_len, validate, validate_counts, validate_model, validate_dpo,
    validate_lora, validate_eval, validate_ppo, validate_grpo, validate_prepare)
from gptjax.errors import GptjaxError
from gptjax.model import GPTConfig


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.stage = "pretrain"
    c.seed = 0
    # sft / reward / ppo / dpo: the workdir whose latest parameters start this stage (its model
    # shape and tokenizer are used; its optimizer state is not). Runtime model options (dropout,
    # dtype, remat, attention) still come from this config's `model` section.
    c.init_from = ""

    c.model = ml_collections.ConfigDict(dataclasses.asdict(GPTConfig()))

    c.data = ml_collections.ConfigDict()
    c.data.text_path = ""  # raw UTF-8 text; "" = Tiny Shakespeare shipped inside the package
    c.data.tokenizer = "char"
    c.data.val_fraction = 0.1  # the last 10% of the tokens are the validation split (nanoGPT)
    c.data.seq_len = 0  # training window; 0 = model.block_size
    # A `prepare` stage's workdir (or its prepared/ folder): pretrain on its token shards with
    # its tokenizer instead of text_path's characters.
    c.data.prepared_dir = ""
    # sft / reward / ppo: the folder holding the named data sets ("" = the small subsets shipped
    # in the package, gptjax/data/shipped.py; e.g. ../shared/data for the full sets), and which
    # of them to use with what weight
    c.data.root = ""
    # sft: e.g. "topical-chat:1,gsm8k:0.5"; reward: e.g. "hh-rlhf"; ppo: preference data whose
    # prompts are the PPO prompts (e.g. "hh-rlhf" or a .jsonl file; answers unused). An entry
    # may be a path, glob or folder of .jsonl / .jsonl.gz / .parquet files (your own data).
    c.data.mixture = ""
    # Those files' conversation format: "" = detected per file from its fields, or one of
    # messages, prompt_completion, alpaca, sharegpt (gptjax/data/formats.py)
    c.data.format = ""
    c.data.max_examples = 0  # reward: cap on records per data set (0 = all)
    c.data.skip_examples = 0  # reward: records of each data set skipped before that cap (so two
    # reward models can learn from disjoint parts of one set: a judge and the one PPO optimises)

    c.reward = ml_collections.ConfigDict()
    # After training, subtract the mean reward of the init model's own answers to this many
    # training prompts (InstructGPT's normalisation before PPO); 0 = no normalisation.
    c.reward.normalize_prompts = 64
    c.reward.normalize_max_new_tokens = 64

    c.ppo = ppo_config()
    c.eval = eval_config()
    c.grpo = grpo_config()
    c.dpo = dpo_config()
    c.lora = lora_config()

    c.train = ml_collections.ConfigDict()
    c.train.steps = 2000
    c.train.batch_size = 12  # global batch (sequences per optimizer step, all devices)
    c.train.grad_accum = 1  # micro-batches per step; batch_size must divide by it
    c.train.log_every = 10
    c.train.eval_every = 250
    c.train.eval_batches = 20  # fixed validation windows: eval_batches * batch_size of them
    c.train.checkpoint_every = 250
    c.train.keep_checkpoints = 3
    c.train.async_checkpoint = True
    # Which checkpoint a rerun resumes from: "latest" = the newest, refused (nothing touched) if
    # it fails its digest; "previous" = the newest one that verifies, the newer ones moved to
    # <workdir>/corrupt_checkpoints/ (gptjax/checkpoint.py).
    c.train.resume = "latest"
    c.train.progress = True  # progress bar on stderr
    c.train.progress_label = ""  # the bar's label; "" = the stage's name (a pipeline: "[3/8] sft")

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 6e-4
    c.optim.min_lr = 6e-5
    c.optim.warmup_steps = 2000
    c.optim.decay_steps = 600000
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.1
    c.optim.weight_decay_mask = "matrices"
    c.optim.grad_clip = 1.0

    c.prepare = prepare_config()

    c.runtime = ml_collections.ConfigDict()
    # CPU only: 0 = XLA's single host device; -1 = one device per core (fitted to the batch),
    # which makes small models ~1.5x faster when run data-parallel; n = exactly n devices.
    c.runtime.cpu_devices = 0

    c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
    c.sharding = ml_collections.ConfigDict()
    c.sharding.rules = axes.DEFAULT_RULES  # tuple of (logical name, mesh axes)
    # Where fsdp-sharded weights are gathered (gptjax/step.py make_train_step): "per_step" =
    # once per optimizer step, held through the accumulation (one whole parameter copy per device,
    # plus a whole gradient for the LM loss, which is then reduced once per step);
    # "per_micro_step" = in every micro-step's forward and backward (least memory).
    c.sharding.gather_weights = "per_step"
    c.lock()
    return c


def ppo_config() -> ml_collections.ConfigDict:
    """Stage `ppo` (gptjax/loops/ppo.py): the policy starts from `init_from` (an SFT workdir),
    the critic from `ppo.reward_from`. train.steps counts PPO iterations (one rollout, then
    `epochs` x `num_minibatches` optimizer steps); optim.* schedules count optimizer steps.
    Defaults are InstructGPT's / TRL's (gptjax.rl.ppo.PPOConfig, gptjax.rl.rollout.RolloutConfig).
    """
    p = ml_collections.ConfigDict()
    p.reward_from = ""  # a `reward` stage's workdir: the frozen reward model and its offset
    p.batch_prompts = 16  # prompts per iteration (each answered samples_per_prompt times)
    p.samples_per_prompt = 4  # K responses per prompt
    p.max_new_tokens = 64  # N response slots; a response stops at <|end|>
    p.max_prompt_tokens = 0  # prompt width P; 0 = block_size - max_new_tokens. Longer prompts
    # keep their most recent whole turns; one whose last turn alone is too long is dropped.
    p.temperature = 1.0  # sampling (PPO samples from the policy itself: keep 1, no top-k/p)
    p.top_k = 0
    p.top_p = 1.0
    p.epochs = 4  # passes over each rollout batch
    p.num_minibatches = 1  # must divide batch_prompts * samples_per_prompt
    p.gamma = 1.0  # discount over response tokens
    p.lam = 0.95  # GAE lambda
    p.clip_eps = 0.2  # policy ratio clip
    p.vf_clip = 0.2  # value clip around the rollout's values
    p.vf_coef = 0.1  # value-loss weight (the critic is a separate network)
    p.ent_coef = 0.0  # entropy bonus
    # InstructGPT's pretraining mix (PPO-ptx): gamma times -log pi of pretraining windows, summed
    # into each minibatch step's loss. InstructGPT used 27.8 with beta 0.02. 0 = off (the
    # held-out pretraining loss is still watched when the data is found).
    p.ptx_coef = 0.0
    p.ptx_data = ""  # "" = the init_from chain's pretraining data; or a workdir / prepared dir /
    # text file (gptjax/loops/ptx.py)
    p.ptx_batch = 0  # pretraining windows per optimizer step; 0 = batch_prompts
    # An answer that reaches max_new_tokens without <|end|>: penalty (its score is
    # -truncated_penalty x the SFT answers' score std), end (scored with <|end|> appended), mask
    # (left out of the loss) or none (scored at its last token). See gptjax/rl/iteration.py.
    p.truncated = "penalty"
    p.truncated_penalty = 1.0
    # Scores in units of the SFT answers' score std (measured at step 0 with the offset), as
    # lm-human-preferences normalises its reward: beta and the clip then mean the same for any
    # reward model. score_clip > 0 clips |score| at that many SFT stds (0 = off).
    p.normalize_scores = False
    p.score_clip = 0.0
    # The critic starts from the reward model moved to the scores' scale (minus the offset, over
    # the std with normalize_scores); False = the raw reward model (gptjax/rl/iteration.py).
    p.center_critic = True
    # The reward offset (SFT answers score 0 on average) is measured at step 0 on this many
    # training prompts with PPO's sampling settings; 0 = the reward workdir's offset.
    p.offset_prompts = 64
    p.eval_prompts = 8  # held-out prompts answered (greedy + sampled) every train.eval_every
    p.eval_at_start = True  # ... and by the SFT policy before the first iteration (step 0)
    p.kl_kind = "k1"  # per-token KL estimator in the reward: k1, abs, mse, k3
    p.whiten_advantages = True
    p.init_kl_coef = 0.2  # beta at step 0 (TRL's default)
    p.target_kl = 6.0  # adaptive beta aims the per-sequence KL here; 0 = beta fixed
    p.kl_horizon = 10000.0  # adaptive controller horizon (sequences)
    return p


def dpo_config() -> ml_collections.ConfigDict:
    """Stage `dpo` (gptjax/loops/dpo.py): the policy and the frozen reference start from
    `init_from` (an SFT workdir); data.mixture names preference data (pairs, or K ranked answers
    giving their C(K, 2) pairs). train.batch_size counts records (all answers of a record share
    a batch). Defaults are TRL's DPOConfig."""
    d = ml_collections.ConfigDict()
    d.loss = "sigmoid"  # sigmoid (DPO), ipo (IPO, per-token mean log-probs), hinge (SLiC)
    d.beta = 0.1  # the KL strength: implicit reward = beta * log(pi / pi_ref)
    d.label_smoothing = 0.0  # sigmoid only: conservative DPO's label noise eps in [0, 0.5)
    # per_batch: the reference (a frozen copy of the SFT model, or the LoRA base) reads every
    # batch; precomputed: its log-probs of every record are computed once before training and
    # cached in the workdir (ref_logps.npz): one forward pass less per step, no second copy.
    d.reference = "per_batch"
    # Warn when the held-out log-probs of chosen AND rejected answers have both fallen by more
    # than this (nats per answer; per token for ipo) below the reference's while the margin
    # grows: the policy is moving probability off both answers. 0 = no warning.
    d.displacement_warning = 1.0
    return d


def lora_config() -> ml_collections.ConfigDict:
    """LoRA adapters (gptjax/lora.py) for the fine-tuning stages sft, reward, dpo, grpo, ppo:
    rank 0 =
    full fine-tuning; rank r > 0 freezes the init model and trains, on each targeted projection
    W, a low-rank update (alpha / r) A B (A: in x r, B: r x out). Only the adapters (and the
    reward model's new head) are checkpointed; `python -m gptjax.convert --merge-lora` writes
    a plain workdir."""
    lo = ml_collections.ConfigDict()
    lo.rank = 0
    lo.alpha = 16.0  # the update's scale is alpha / rank
    # comma-separated regular expressions searched in projection paths such as h_0/attn/c_attn
    # (attention qkv and output, MLP in and out: attn/c_attn, attn/c_proj, mlp/c_fc, mlp/c_proj)
    lo.targets = lora.DEFAULT_TARGETS
    lo.dropout = 0.0  # dropout on the adapters' input (training only)
    # comma-separated GPT parameter groups trained in full beside the adapters (PEFT's
    # modules_to_save), e.g. "wte": the token embedding (tied to the output), which chat
    # tokens new to the init model need; "wte,ln_f"; "" = adapters only
    lo.train = ""
    return lo


def eval_config() -> ml_collections.ConfigDict:
    """Stage `eval` (gptjax/loops/eval.py): each task on or off; workdirs are left empty in
    config files and given on the command line (`--config.eval.a=runs/ppo`)."""
    e = ml_collections.ConfigDict()
    e.a = ""  # model A: an sft / ppo workdir (the one whose win rate is reported)
    e.b = ""  # model B: the baseline it is compared with (e.g. the SFT workdir)
    e.judge = ""  # a `reward` workdir that scores A's and B's answers by their text
    e.base = ""  # a pretrained workdir: the answers' perplexity under it (fluency); "" = off
    e.models = ""  # comma-separated workdirs for perplexity and GSM8K; "" = eval.a and eval.b
    e.batch_size = 16  # rows per generate / scoring call
    e.perplexity = ml_collections.ConfigDict(dict(
        enabled=False,
        # exactly one source: a text file, a `prepare` run's validation shards, or the
        # held-out split (data.val_fraction, data.root) of an SFT mixture, assistant tokens only
        text_path="", prepared_dir="", sft_mixture="",
        max_tokens=200_000,  # cap on scored tokens of a text / shards source (0 = all)
    ))
    e.reward_accuracy = ml_collections.ConfigDict(dict(
        enabled=False,
        workdir="",  # the reward workdir; "" = eval.judge
        mixture="hh-rlhf",  # preference sets (names or .jsonl paths), comma-separated
        split="heldout",  # "heldout": the reward run's own held-out part; "all": every record
    ))
    e.win_rate = ml_collections.ConfigDict(dict(
        enabled=False,
        prompts="vicuna",  # mt-bench (first turns), vicuna, hh-rlhf (held-out), or a .jsonl
        max_prompts=0,  # the first n distinct prompts (0 = all)
        samples_per_prompt=1,  # answers per prompt and model; sample j of A meets sample j of B
        max_new_tokens=128, temperature=0.7, top_k=0, top_p=1.0,  # the same for A and B
        tie_margin=0.0,  # |score_A - score_B| <= margin is a tie
        length_tolerance=0.1,  # length-matched: |len_A - len_B| <= tol * max (characters)
        bootstrap=2000,  # resamplings of the prompts for the 95% interval
        table_rows=5,  # prompts in the side-by-side table
    ))
    e.gsm8k = ml_collections.ConfigDict(dict(
        enabled=False,
        path="",  # a GSM8K .jsonl; "" = <data.root>/gsm8k/test.jsonl
        max_questions=100,  # the first n test questions (0 = all), answered greedily
        max_new_tokens=256,
    ))
    return e


def grpo_config() -> ml_collections.ConfigDict:
    """Stage `grpo` (gptjax/loops/grpo.py, the maths in gptjax/rl/grpo.py): GRPO / RLOO from
    an SFT workdir (`init_from`) on a verifiable task; no critic. train.steps counts iterations
    (one rollout, then epochs x num_minibatches optimizer steps)."""
    g = ml_collections.ConfigDict()
    # addition (shipped), gsm8k (data.root/gsm8k) or a .jsonl of {"prompt", "answer"} records
    g.task = "addition"
    g.marker = "####"  # .jsonl tasks: the final answer follows it (addition: "so"; gsm8k: ####)
    g.train_prompts = 20000  # addition: distinct training problems drawn
    g.eval_prompts = 200  # held-out prompts answered greedily every train.eval_every
    g.eval_at_start = True  # ... and by the SFT policy before the first iteration (step 0)
    g.samples_logged = 16  # held-out answers appended to samples.jsonl per evaluation
    # Weighted sum of exact_match (final number), format ("<marker> <number>" at the end) and
    # reward_model (the model of grpo.reward_from), e.g. "exact_match:1,format:0.1"
    g.rewards = "exact_match:1"
    g.reward_from = ""
    g.batch_prompts = 16  # prompts per iteration (the update's groups)
    g.samples_per_prompt = 8  # K answers per prompt (>= 2: the group)
    # Dynamic sampling (DAPO's, at a fixed shape): the rollout answers oversample x batch_prompts
    # prompts and the update keeps batch_prompts groups, those whose K rewards differ first
    g.oversample = 1
    g.max_new_tokens = 64
    g.max_prompt_tokens = 0  # 0 = block_size - max_new_tokens
    g.temperature = 1.0
    g.top_k = 0
    g.top_p = 1.0
    g.advantage = "group"  # baseline: group mean (GRPO) or rloo (leave-one-out)
    g.scale = "group"  # divide by the group's reward std, the batch's, or none (Dr. GRPO)
    g.beta = 0.04  # KL coefficient (DeepSeekMath); 0 = no reference model
    g.kl_kind = "k3"  # k1 or k3
    g.kl_in = "loss"  # loss (GRPO) or reward (RLOO / classic RLHF)
    # token_mean (DAPO, TRL's default), sequence_mean (GRPO's paper), fixed_length (Dr. GRPO)
    g.aggregation = "token_mean"
    g.clip_low = 0.2
    g.clip_high = 0.2  # DAPO's clip-higher: 0.28
    g.mask_truncated = False  # answers cut at max_new_tokens leave the loss (DAPO)
    g.epochs = 1  # passes over each rollout (GRPO's mu); 1 with 1 minibatch = on-policy
    g.num_minibatches = 1
    return g


def prepare_config() -> ml_collections.ConfigDict:
    """Stage `prepare`: raw text -> cleaned, filtered, deduplicated corpus -> tokenizer -> token
    shards (gptjax/loops/prepare.py). Thresholds are Gopher's (Rae et al. 2021, A.1.1)."""
    p = ml_collections.ConfigDict()
    p.inputs = ()  # files, globs (** recurses) or directories: .txt, .json, .jsonl, each or .gz
    p.text_field = "text"  # JSON key of the text; "a|b" = a, else b; a list of strings is joined
    p.url_field = ""  # JSON key of the record's URL, checked against filters.url_blocklist
    p.text_unit = "paragraph"  # plain-text documents: "file", "paragraph" (blank lines), "line"
    p.val_fraction = 0.05  # every 1/val_fraction-th kept document goes to the validation split
    p.num_shards = 4  # token (and corpus) shards per split, documents dealt round-robin
    p.seed = 0

    p.clean = ml_collections.ConfigDict(dict(
        nfkc=True,  # Unicode NFKC (full-width forms -> ASCII, ligatures split, ...)
        whitespace=True,  # newlines, Unicode spaces, runs of spaces, trailing spaces
        control=True,  # control and invisible format characters (BOM, zero-width space, ...)
        mojibake=True,  # repair UTF-8 that was decoded as cp1252 / latin-1 ("Ã©" -> "é")
        max_invalid_fraction=0.01,  # drop a document whose characters are > 1% invalid bytes
    ))
    p.filters = ml_collections.ConfigDict(dict(
        min_chars=1,  # length limits on the cleaned text (characters); max 0 = none
        max_chars=1_000_000,
        url_blocklist="",  # a file of domains, one a line; records whose URL is on it go
        languages=(),  # keep only these langid labels (e.g. ("en", "zh")); () = all
        quality=True,  # Gopher quality rules (thresholds in prepare.quality)
        repetition=True,  # Gopher repetition rules (thresholds in prepare.repetition)
    ))
    p.quality = ml_collections.ConfigDict(dict(
        min_words=50, max_words=100_000, min_mean_word_len=3.0, max_mean_word_len=10.0,
        max_symbol_word_ratio=0.1,  # ("#" + "..." + "…") per word
        max_bullet_lines=0.9, max_ellipsis_lines=0.3,  # shares of lines
        min_alpha_words=0.8,  # share of words with a letter
        min_stop_words=2,  # distinct words of: the be to of and that have with
    ))
    p.repetition = ml_collections.ConfigDict(dict(
        max_dup_line_frac=0.3, max_dup_para_frac=0.3,  # shares repeating an earlier one
        max_dup_line_char_frac=0.2, max_dup_para_char_frac=0.2,  # their share of characters
        top_ngram=((2, 0.20), (3, 0.18), (4, 0.16)),  # (n, max char share of the top n-gram)
        dup_ngram=((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10)),
    ))
    p.dedup = ml_collections.ConfigDict(dict(
        exact=True,  # same text after lowercasing and collapsing whitespace
        near=True,  # MinHash + LSH
        threshold=0.8,  # Jaccard similarity of character-n-gram sets counted as a duplicate
        num_perm=128, ngram=5,
        bands=0,  # 0 = chosen from threshold and num_perm (gptjax/data/dedup.py)
    ))
    p.tokenizer = ml_collections.ConfigDict(dict(
        kind="sentencepiece",  # or "char" (one id per character of the corpus)
        vocab_size=8000, model_type="bpe", character_coverage=0.9995,
        user_defined_symbols=(),  # extra whole tokens beyond gptjax's special tokens
        max_sentences=2_000_000,  # lines sentencepiece trains on (the first ones); 0 = all
    ))
    return p


def gpt_config(config: ml_collections.ConfigDict) -> GPTConfig:
    """The GPTConfig of the config's model section (a workdir's is `workdir.model_config`)."""
    return GPTConfig(**config.model.to_dict())


def to_json(config: ml_collections.ConfigDict) -> str:
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def get(config: ml_collections.ConfigDict, dotted: str) -> Any:
    """The value at a dotted key ('train.batch_size')."""
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def overrides_from_dict(config: ml_collections.ConfigDict, values: dict[str, Any]) -> None:
    """Apply {'a.b': v} overrides (for Colab / tests), rejecting unknown keys like the CLI does."""
    for dotted, value in values.items():
        node = config
        *parents, leaf = dotted.split(".")
        for p in parents:
            if p not in node:
                raise GptjaxError(f"unknown config key {dotted!r}")
            node = node[p]
        if leaf not in node:
            raise GptjaxError(f"unknown config key {dotted!r}")
        node[leaf] = value
