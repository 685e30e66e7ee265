"""RL prompts (PPO, later GRPO): what the policy answers, from preference data or any file.

`data.mixture` names the sources: the named preference sets (hh-rlhf, finegrained-rlhf: their
prompts, answers unused) or paths / globs / folders of .jsonl, .jsonl.gz or .parquet files. A
file's record gives its prompt by its fields:
  {"prompt": str | [turns], ...}   the prompt as it is (plain prompt files, prompt/completion,
                                   preference records)
  {"chosen": [turns], "rejected": [turns]}   TRL's conversational pair: their shared turns
  {"messages" | "conversations" | "instruction", ...}   an SFT conversation (gptjax.data.formats):
                                   the turns before its last assistant turn (all, if none)
`data.format` forces an SFT format. Records that give no prompt are counted by kind with where
each kind first happened; a file that gives none is one clear error. Each source's held-out
`data.val_fraction` (the fixed split of the other stages) is left out, and prompts are pooled:
every distinct prompt once. Iteration i takes `batch_indices` of a fresh shuffle per pass.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from gptjax.data import formats, preferences, sources
from gptjax.data.chat import Conversation, render_prompt
from gptjax.data.tokenizer import Tokenizer
from gptjax.errors import GptjaxError, TokenizerCoverageError


def fit_prompt(conversation: Conversation, tok: Tokenizer, width: int) -> list[int] | None:
    """The prompt ids of the longest suffix of whole turns that fits `width` tokens (the most
    recent turns matter most to the answer); None when even the last turn is too long."""
    for i in range(len(conversation)):
        ids = render_prompt(conversation[i:], tok)
        if len(ids) <= width:
            return ids
    return None


def _before_last_answer(conv: list[dict[str, str]]) -> list[dict[str, str]]:
    last = max((i for i, t in enumerate(conv) if t["role"] == "assistant"), default=len(conv))
    if not any(t["role"] == "user" for t in conv[:last]):
        raise formats.RowProblem("missing_field", "has no user turn before its answer")
    return conv[:last]


def prompt_of(record: dict[str, Any], fmt: str = "") -> list[dict[str, str]]:
    """The prompt turns of one record (the module docstring's rules); RowProblem if none."""
    record = {k: v for k, v in record.items() if v is not None}  # Parquet: absent columns
    if not fmt and "prompt" in record:
        p = record["prompt"]
        if isinstance(p, str):
            return [{"role": "user", "content": formats.text(p, "'prompt'")}]
        conv = formats.turns(p, "'prompt'")
        if not conv:
            raise formats.RowProblem("empty_turn", "'prompt' has no turns")
        return conv
    if not fmt and isinstance(record.get("chosen"), list) and isinstance(
            record.get("rejected"), list):
        return preferences.implicit_pair(record["chosen"], record["rejected"])[0]
    fmt = fmt or formats.detect(record) or ("alpaca" if "instruction" in record else "")
    if not fmt:
        raise formats.RowProblem("missing_field", "has no 'prompt', 'messages', "
                                 f"'conversations' or 'instruction' (fields: {sorted(record)})")
    return _before_last_answer(formats.to_conversation(record, fmt, need_assistant=False))


def read_prompts(entry: str, root: str, fmt: str = ""
                 ) -> tuple[list[Conversation], list[formats.FileReport]]:
    """The prompts of one mixture entry (a named preference set or files), in order, and one
    report per file."""
    if not sources.is_file_entry(entry):
        return [r.prompt for r in preferences.read_source(entry, root)], []
    formats.check_format(fmt)
    out, reports = [], []
    for path in sources.expand_files(entry):
        rep = formats.FileReport(path, fmt)
        for where, rec in sources.iter_rows(path, on_bad=rep.not_json):
            rep.rows += 1
            try:
                out.append(prompt_of(rec, fmt))
                rep.used += 1
            except formats.RowProblem as e:
                rep.reject(e.kind, where, str(e))
        if not rep.used:
            raise rep.no_row_usable("prompt")
        reports.append(rep)
    return out, reports


def load_prompts(config: ml_collections.ConfigDict, tok: Tokenizer, width: int,
                 heldout: bool = False) -> tuple[list[list[int]], dict[str, dict[str, Any]]]:
    """(distinct prompt ids, per-source counts) of config.data.mixture's training split (or,
    heldout=True, of its held-out split: PPO's evaluation prompts; then none is no error)."""
    mixture = sources.parse_mixture(config.data.mixture, preferences.READERS,
                                    "source of prompts", "'hh-rlhf' or a .jsonl file")
    prompts, seen, stats = [], set(), {}
    for name, weight in mixture:
        if weight != 1:
            raise GptjaxError(f"data.mixture gives {name} weight {weight}, but RL pools the "
                              "prompts of every source (each distinct prompt once); drop the "
                              "weight")
        found, reports = read_prompts(name, config.data.root, config.data.format)
        records, held = sources.split(found, config.data.val_fraction)
        records = held if heldout else records
        st = stats[name] = {"records": len(records), "kept": 0, "too_long": 0,
                            "not_encodable": 0, "duplicates": 0}
        if reports:  # file sources: the rows that gave no prompt
            st["rejected"], st["first_rejected"] = formats.merge_reports(reports)
        for prompt in records:
            try:
                ids = fit_prompt(prompt, tok, width)
            except TokenizerCoverageError:
                st["not_encodable"] += 1
                continue
            if ids is None:
                st["too_long"] += 1
            elif tuple(ids) in seen:
                st["duplicates"] += 1
            else:
                seen.add(tuple(ids))
                prompts.append(ids)
                st["kept"] += 1
    if not prompts and not heldout:
        raise GptjaxError(
            f"no prompt of data.mixture={config.data.mixture!r} can be used ({stats}): raise "
            "ppo.max_prompt_tokens (or the model's block size) or use data the tokenizer covers")
    return prompts, stats


def batch_indices(n: int, batch: int, seed: int, step: int) -> np.ndarray:
    """Indices of iteration `step`'s prompts: positions step*batch .. of an endless stream that
    goes through all n prompts in a fresh shuffle per pass (seeded by (seed, pass))."""
    pos = np.arange(step * batch, (step + 1) * batch)
    passes, within = np.divmod(pos, n)
    perms = {p: np.random.default_rng([seed, int(p)]).permutation(n) for p in set(passes)}
    return np.array([perms[p][i] for p, i in zip(passes, within)])
