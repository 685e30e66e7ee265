"""Starting a stage from another stage's workdir (SFT from pretrain, the reward model from SFT).

Parameters only: the optimizer starts fresh. The tokenizer gains the chat special tokens if it
lacks them, and the embedding grows to match (new rows at the mean embedding). The model shape
comes from the init workdir; runtime options (dropout, dtype, remat, attention) from the config.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import ml_collections

from gptjax import config as config_lib
from gptjax import workdir as workdir_lib
from gptjax.data.tokenizer import Tokenizer, load_tokenizer, with_special_tokens
from gptjax.errors import GptjaxError
from gptjax.model import GPTConfig

RUNTIME_FIELDS = workdir_lib.RUNTIME_FIELDS


@dataclasses.dataclass
class Start:
    cfg: GPTConfig  # the model this stage trains (vocabulary grown if needed)
    params: Any  # host numpy GPT parameters from the init workdir, grown to cfg.vocab_size
    tokenizer: Tokenizer
    init_step: int


def start(config: ml_collections.ConfigDict, workdir: str) -> Start:
    """Load the init workdir, resolve config.model to the model trained here, and write the
    workdir's tokenizer.json and config.json (a workdir is self-contained)."""
    stage = config.stage
    if not config.init_from:
        raise GptjaxError(f"stage {stage!r} starts from a trained model: pass "
                          "--config.init_from=WORKDIR (e.g. a pretraining run's --workdir)")
    if os.path.abspath(config.init_from) == os.path.abspath(workdir):
        raise GptjaxError(f"--config.init_from and --workdir are the same folder ({workdir}); "
                          f"give the {stage} run a workdir of its own")
    base = workdir_lib.load_host(config.init_from)
    if base.tokenizer.vocab_size > base.cfg.vocab_size:
        raise GptjaxError(
            f"{config.init_from} has another vocabulary: its tokenizer has "
            f"{base.tokenizer.vocab_size} tokens but its model only {base.cfg.vocab_size}. "
            "Its tokenizer.json does not belong to its checkpoint; restore the right one.")
    tok = with_special_tokens(base.tokenizer)
    params, cfg = workdir_lib.grow_vocab(base.params, base.cfg,
                                         max(tok.vocab_size, base.cfg.vocab_size))
    cfg = dataclasses.replace(cfg, **{f: config.model[f] for f in RUNTIME_FIELDS})
    for k, v in dataclasses.asdict(cfg).items():
        config.model[k] = v
    os.makedirs(workdir, exist_ok=True)
    tok_path = os.path.join(workdir, "tokenizer.json")
    if os.path.exists(tok_path) and load_tokenizer(tok_path).to_json() != tok.to_json():
        raise GptjaxError(
            f"{workdir} was trained with another vocabulary than {config.init_from} gives "
            f"({tok_path} differs): use a new --workdir for this init model")
    workdir_lib.check_same_model(workdir, dataclasses.asdict(cfg))
    config_lib.validate(config)
    workdir_lib.write_run_files(config, workdir, tok)
    return Start(cfg, params, tok, base.step)
