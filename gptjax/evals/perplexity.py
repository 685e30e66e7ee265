"""Perplexity of a model on held-out text, and the fluency of answers under a base model.

    perplexity = exp( Σ_t w_t · (−log p(x_t | x_<t)) / Σ_t w_t )

over the scored target tokens (w_t = 1 on every token of plain text, on the assistant's
tokens only for chat data). Perplexities of models with other tokenizers are not comparable
(the tokens differ); bits per character, Σ −log2 p / characters of the decoded targets, is.
Rows are right-padded to the model's block size and batched in one shape (one compile).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from gptjax import losses
from gptjax.data import lm, sft as sft_data
from gptjax.data.shards import open_prepared, open_split
from gptjax.data.tokenizer import EOS, Tokenizer
from gptjax.errors import GptjaxError
from gptjax.evals.judge import encodable
from gptjax.model import GPT, GPTConfig
from gptjax.workdir import TrainedModel

Row = tuple[np.ndarray, np.ndarray]  # (ids (L,), weights (L,)): weights[t] scores token t


@functools.partial(jax.jit, static_argnames=("cfg",))
def _row_nll(params, cfg: GPTConfig, inputs, targets, weights):
    logits = GPT(cfg).apply({"params": params}, inputs)  # (B, T, V)
    nll = -losses.token_logprobs(logits, targets)  # (B, T)
    return (nll * weights).sum(-1), weights.sum(-1)


def row_nll(model: TrainedModel, rows: Sequence[Row], batch: int = 8
            ) -> tuple[np.ndarray, np.ndarray]:
    """(Σ_t w_t · nll_t, Σ_t w_t) per row; a row has at most block_size + 1 tokens and its
    first token is context only (weights[0] is ignored)."""
    t = model.cfg.block_size
    sums, counts = [], []
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        x = np.zeros((batch, t + 1), np.int32)
        w = np.zeros((batch, t + 1), np.float32)
        for i, (ids, wt) in enumerate(chunk):
            if len(ids) > t + 1:
                raise ValueError(f"a row of {len(ids)} tokens exceeds block_size + 1 = {t + 1}")
            x[i, :len(ids)], w[i, :len(ids)] = ids, wt
        s, c = _row_nll(model.params, model.cfg, jnp.asarray(x[:, :-1]), jnp.asarray(x[:, 1:]),
                        jnp.asarray(w[:, 1:]))
        sums.append(np.asarray(s)[:len(chunk)])
        counts.append(np.asarray(c)[:len(chunk)])
    if not sums:
        return np.zeros((0,)), np.zeros((0,))
    return np.concatenate(sums).astype(np.float64), np.concatenate(counts).astype(np.float64)


def report(nll: np.ndarray, count: np.ndarray, chars: int) -> dict[str, float | int]:
    tokens = float(count.sum())
    if tokens == 0:
        raise GptjaxError("no token to score: the held-out text is empty after tokenizing")
    total = float(nll.sum())
    return {"perplexity": math.exp(total / tokens), "nll_per_token": total / tokens,
            "tokens": int(tokens), "characters": int(chars),
            "bits_per_char": total / math.log(2) / chars if chars else math.nan}


def windows(ids: np.ndarray, block: int, max_tokens: int = 0) -> list[Row]:
    """Non-overlapping windows of block + 1 tokens, stride block: every token after the first
    is scored exactly once (with up to block − 1 tokens of context). max_tokens caps the
    scored tokens (0 = all)."""
    ids = np.asarray(ids, np.int32)
    if max_tokens:
        ids = ids[:max_tokens + 1]
    rows = []
    for s in range(0, max(len(ids) - 1, 0), block):
        piece = ids[s:s + block + 1]
        rows.append((piece, np.ones(len(piece), np.float32)))
    return rows


def _chars(tok: Tokenizer, rows: Sequence[Row]) -> int:
    """Characters of the scored targets, decoded (what bits per character divides by)."""
    return sum(len(tok.decode(ids[1:][wt[1:] > 0].tolist())) for ids, wt in rows)


def _evaluate(model: TrainedModel, rows: list[Row], batch: int) -> dict:
    nll, count = row_nll(model, rows, batch)
    return report(nll, count, _chars(model.tokenizer, rows))


def on_text(model: TrainedModel, path: str, max_tokens: int = 0, batch: int = 8) -> dict:
    """Perplexity on a UTF-8 text file (characters the model's char tokenizer lacks are
    dropped and counted)."""
    text, dropped = encodable(model.tokenizer, lm.read_text(path))
    rows = windows(np.asarray(model.tokenizer.encode(text)), model.cfg.block_size, max_tokens)
    return {**_evaluate(model, rows, batch), "source": path, "dropped_chars": dropped}


def on_prepared(model: TrainedModel, prepared_dir: str, max_tokens: int = 0,
                batch: int = 8) -> dict:
    """Perplexity on the validation shards of a `prepare` run. Tokens of another tokenizer
    than the model's are decoded and encoded again with the model's."""
    tokens_dir, ptok = open_prepared(prepared_dir)
    val = open_split(tokens_dir, "val")
    n = min(len(val), max_tokens + 1) if max_tokens else len(val)
    ids = np.asarray(val[0:n])
    if ptok.to_json() != model.tokenizer.to_json():
        text, _ = encodable(model.tokenizer, ptok.decode(ids.tolist()))
        ids = np.asarray(model.tokenizer.encode(text))
    rows = windows(ids, model.cfg.block_size, max_tokens)
    return {**_evaluate(model, rows, batch), "source": f"{prepared_dir} (val shards)"}


def on_sft_heldout(model: TrainedModel, root: str, mixture: str, val_fraction: float,
                   batch: int = 8) -> dict:
    """Perplexity on the assistant tokens of the SFT data's held-out conversations: the fixed
    split of `gptjax.data.sft` (seed 0), computed over the conversations this model's tokenizer
    and context can hold, so for the SFT run's own model it is that run's held-out set."""
    _, _, val, _ = sft_data.load(root, mixture, model.tokenizer, model.cfg.block_size,
                                 val_fraction)
    # The chat loss mask is per token (1 on what the assistant produces): a row's weights.
    rows = [(ids, np.asarray(mask, np.float32)) for ids, mask in val]
    return {**_evaluate(model, rows, batch), "source": f"{mixture} (held-out {val_fraction})",
            "conversations": len(val)}


def fluency(model: TrainedModel, texts: Sequence[str], batch: int = 8) -> dict:
    """Perplexity of answers as plain text under a (base) model: each answer alone after the
    document separator, its first block_size tokens. Empty answers are skipped (counted)."""
    tok = model.tokenizer
    start = tok.specials.get(EOS)
    rows, empty, dropped = [], 0, 0
    for t in texts:
        t, d = encodable(tok, t)
        dropped += d
        ids = tok.encode(t)
        if not ids:
            empty += 1
            continue
        ids = ([start] if start is not None else []) + ids
        ids = np.asarray(ids[:model.cfg.block_size + 1], np.int32)
        rows.append((ids, np.ones(len(ids), np.float32)))
    if not rows:
        return {"perplexity": math.nan, "tokens": 0, "answers": 0, "empty": empty}
    return {**_evaluate(model, rows, batch), "answers": len(rows), "empty": empty,
            "dropped_chars": dropped}
