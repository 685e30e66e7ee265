"""The pretraining data of PPO-ptx (InstructGPT eq. 2): where it is, and its batches.

    objective = E[r(x, y) - beta * log(pi / pi_SFT)(y | x)] + gamma * E_{x ~ D_pretrain}[log pi(x)]

`ppo.ptx_data` names the data: "" follows the `init_from` chain of the workdir PPO starts from
(SFT -> ... -> the pretraining run) to that run's own data (its tokenized text or its
`prepared_dir` shards); otherwise a pretraining workdir, a `prepare` workdir (or its prepared/
folder), or a UTF-8 text file, encoded with the policy's tokenizer. The token ids must be the
policy's: a corpus tokenized by another tokenizer is refused. Batches are random windows, a pure
function of (seed, iteration) as in pretraining, so a resumed run draws the same ones.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
import numpy as np

from gptjax import config as config_lib
from gptjax import workdir as workdir_lib
from gptjax.data import lm as lm_data
from gptjax.data.tokenizer import Tokenizer, with_special_tokens
from gptjax.errors import GptjaxError

_PTX_STREAM = 0x5054  # folded into the seed: PPO's windows differ from pretraining's batches


@dataclasses.dataclass
class Corpus:
    train: np.ndarray  # 1-D token ids (memmap or ShardedTokens)
    val: np.ndarray
    source: str  # where it came from, for the banner and data_stats.json


def pretraining_workdir(start: str) -> str | None:
    """The pretraining run at the root of `start`'s init_from chain (None if the chain ends in a
    workdir without its data, e.g. one made by `gptjax.convert`)."""
    seen, wd = set(), start
    while wd and os.path.abspath(wd) not in seen:
        seen.add(os.path.abspath(wd))
        cfg = workdir_lib.run_config(wd)
        if cfg.get("stage", "pretrain") == "pretrain":
            return wd if cfg.get("data") is not None else None
        wd = cfg.get("init_from", "")
    return None


def _of_pretraining_run(wd: str) -> tuple[lm_data.TokenSplits, str]:
    data = ml_collections.ConfigDict(workdir_lib.run_config(wd)["data"])
    return lm_data.corpus_for(data, os.path.join(wd, "data")), f"the pretraining data of {wd}"


def load(config: ml_collections.ConfigDict, tok: Tokenizer) -> Corpus | None:
    """The ptx corpus for a policy with tokenizer `tok`, or None when `ppo.ptx_data` is "" and the
    init_from chain has no pretraining data (then ptx_coef must be 0)."""
    where = config.ppo.ptx_data
    if not where:
        wd = pretraining_workdir(config.init_from)
        if wd is None:
            return None
        splits, source = _of_pretraining_run(wd)
    elif os.path.isfile(where):
        text = lm_data.read_text(where)
        ids = np.asarray(tok.encode(text), np.int32)  # TokenizerCoverageError names the fix
        n_val = max(int(len(ids) * config.data.val_fraction), 1)
        splits = lm_data.TokenSplits(ids[:-n_val], ids[-n_val:], tok)
        source = f"{where} (encoded with the policy's tokenizer)"
    elif os.path.isdir(where):
        if os.path.isfile(os.path.join(where, workdir_lib.CONFIG_FILE)) and \
                workdir_lib.stage(where) == "pretrain":
            splits, source = _of_pretraining_run(where)
        else:  # a prepare workdir or its prepared/ folder
            data = ml_collections.ConfigDict({"prepared_dir": where})
            splits, source = lm_data.corpus_for(data, ""), f"the prepared shards of {where}"
    else:
        raise GptjaxError(f"--config.ppo.ptx_data={where}: no such file or directory; give a "
                          "pretraining workdir, a prepare workdir or a UTF-8 text file")
    if with_special_tokens(splits.tokenizer).to_json() != with_special_tokens(tok).to_json():
        raise GptjaxError(
            f"the ptx data ({source}) is tokenized with another tokenizer "
            f"({splits.tokenizer.kind}, {splits.tokenizer.vocab_size} tokens) than the policy "
            f"({tok.kind}, {tok.vocab_size} tokens): its ids would be other tokens. Point "
            "--config.ppo.ptx_data at the data the policy was pretrained on, or at a text file")
    need = config_lib.seq_len(config) + 1
    for name, split in (("training", splits.train), ("validation", splits.val)):
        if len(split) < need:
            raise GptjaxError(f"the ptx data ({source}) has {len(split)} {name} tokens, fewer "
                              f"than one window of {need}; give it more text "
                              "(--config.ppo.ptx_data) or lower data.seq_len")
    return Corpus(splits.train, splits.val, source)


def windows(tokens: np.ndarray, seq_len: int, n: int, seed: int, step: int) -> np.ndarray:
    """Iteration `step`'s n random windows (n, seq_len + 1) int32: seeded by (seed, step)."""
    rng = np.random.default_rng([seed, _PTX_STREAM, int(step)])
    starts = rng.integers(0, len(tokens) - seq_len, size=n)
    return np.stack([np.asarray(tokens[s:s + seq_len + 1]) for s in starts]).astype(np.int32)
