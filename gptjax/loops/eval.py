"""Stage `eval`: perplexity, reward-model accuracy, win rate by a judge, GSM8K exact match.

`run(config, workdir)` runs every task switched on in `config.eval` (gptjax/config.py) and
writes into the workdir: `eval.json` (every number, by task), `eval.md` (the same as tables,
with the side-by-side answers), `answers.jsonl` (every answer generated, with its score) and
the resolved `config.json`. Nothing is trained; one device is used.

- perplexity: each model of `eval.models` on one held-out source (gptjax.evals.perplexity);
- reward_accuracy: a reward workdir on preference pairs (gptjax.evals.reward_accuracy);
- win_rate: A and B answer the same prompts with the same sampling settings; the judge (any
  `gptjax.evals.judge.Judge`, by default the reward workdir `eval.judge`) scores every answer
  by its text; wins / ties / losses, the win rate with a 95% bootstrap interval over prompts,
  answer lengths, the length-matched win rate, and each model's degeneration measures and
  fluency under `eval.base` beside it (gptjax.evals.winrate, degeneration);
- gsm8k: greedy answers to the first test questions, exact match of the final number.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any

import ml_collections

from gptjax import config as config_lib
from gptjax import reward_model
from gptjax import workdir as workdir_lib
from gptjax.data import shipped
from gptjax.data.chat import Conversation
from gptjax.errors import GptjaxError
from gptjax.evals import answers as ans, degeneration, gsm8k, judge as judge_lib
from gptjax.evals import perplexity, prompts as prompt_sets, report, reward_accuracy, winrate

ANSWERS_FILE = "answers.jsonl"


@dataclasses.dataclass
class EvalResult:
    report: dict[str, Any]
    interrupted_by: int | None = None  # (the train entry point reads it; eval is not stopped)


def _models(e: ml_collections.ConfigDict) -> list[str]:
    names = [m.strip() for m in e.models.split(",") if m.strip()] or [m for m in (e.a, e.b) if m]
    if not names:
        raise GptjaxError("perplexity and GSM8K need a model: set --config.eval.models=DIR[,DIR] "
                          "(or eval.a / eval.b)")
    return names


def _lm(workdir: str) -> workdir_lib.TrainedModel:
    """A workdir whose checkpoint is a language model (any stage but reward)."""
    workdir_lib.model_config(workdir)
    if workdir_lib.stage(workdir) == "reward":
        raise GptjaxError(f"{workdir} is a reward model: it has no language-model head to "
                          "score text with; pass a pretrain, sft or ppo workdir")
    return workdir_lib.load(workdir)


def perplexity_task(config: ml_collections.ConfigDict) -> dict[str, Any]:
    e, p = config.eval, config.eval.perplexity
    out = {}
    for wd in _models(e):
        m = _lm(wd)
        if p.text_path:
            out[wd] = perplexity.on_text(m, p.text_path, p.max_tokens, e.batch_size)
        elif p.prepared_dir:
            out[wd] = perplexity.on_prepared(m, p.prepared_dir, p.max_tokens, e.batch_size)
        else:
            out[wd] = perplexity.on_sft_heldout(m, config.data.root, p.sft_mixture,
                                                config.data.val_fraction, e.batch_size)
        print(f"eval: perplexity {wd}: {out[wd]['perplexity']:.3f} "
              f"({out[wd]['bits_per_char']:.3f} bits/char, {out[wd]['tokens']} tokens)")
    return out


def reward_accuracy_task(config: ml_collections.ConfigDict) -> dict[str, Any]:
    r = config.eval.reward_accuracy
    wd = r.workdir or config.eval.judge
    if not wd:
        raise GptjaxError("eval.reward_accuracy needs a reward workdir: set "
                          "--config.eval.reward_accuracy.workdir=DIR (or eval.judge)")
    judge_lib.require_reward_workdir(wd, "eval.reward_accuracy.workdir")
    scorer = reward_model.load(wd)
    records, info = reward_accuracy.heldout_records(wd, r.mixture, config.data.root, r.split,
                                                    scorer.tokenizer, scorer.cfg.block_size)
    if not records:
        raise GptjaxError(f"no pair of {r.mixture!r} can be evaluated ({info['sets']}): use "
                          "preference data the reward model's tokenizer encodes")
    out = {"workdir": wd, "mixture": r.mixture, **info,
           **reward_accuracy.evaluate(scorer, records, config.eval.win_rate.bootstrap,
                                      config.seed)}
    print(f"eval: reward accuracy {wd} on {r.mixture}: {out['accuracy']:.3f} "
          f"[{out['ci_low']:.3f}, {out['ci_high']:.3f}] over {out['pairs']} pairs")
    return out


def _fit_all(prompts: list[Conversation], models: list[ans.Model], width: dict[str, int]
             ) -> tuple[list[int], dict[str, list[list[int]]], dict[str, int]]:
    """(indices of the prompts every model's context holds, their ids per model, skips)."""
    keep, ids, skipped = [], {m.name: [] for m in models}, {m.name: 0 for m in models}
    for i, p in enumerate(prompts):
        fits = {m.name: ans.fit_prompt(p, m, width[m.name]) for m in models}
        for name, x in fits.items():
            skipped[name] += x is None
        if all(x is not None for x in fits.values()):
            keep.append(i)
            for name, x in fits.items():
                ids[name].append(x)
    return keep, ids, skipped


def answer_all(models: list[ans.Model], prompts: list[Conversation], s: ans.Sampling,
               what: str, key: str) -> tuple[list[int], dict[str, ans.Answers], dict[str, int]]:
    """Every model's answers to the prompts all of them can hold; an error when none fits
    (`key`: the config key of max_new_tokens, for the fix)."""
    width = {m.name: ans.prompt_width(m, s.max_new_tokens, key) for m in models}
    keep, ids, skipped = _fit_all(prompts, models, width)
    if not keep:
        sizes = ", ".join(f"{m.name} ({width[m.name]} prompt tokens)" for m in models)
        raise prompt_sets.PromptSetError(
            f"none of the {len(prompts)} {what} prompts fits the context of {sizes}: lower "
            f"{key} or use models with a longer context")
    return keep, {m.name: ans.answer(m, ids[m.name], s, keep) for m in models}, skipped


def _flat(a: ans.Answers) -> tuple[list[str], list[bool]]:
    return ([t for row in a.texts for t in row], [s for row in a.stopped for s in row])


def win_rate_task(config: ml_collections.ConfigDict, judge: judge_lib.Judge | None = None
                  ) -> tuple[dict[str, Any], list[dict]]:
    """The win rate of eval.a over eval.b under `judge` (default: the reward workdir
    eval.judge); (report, answer rows for answers.jsonl)."""
    e, w = config.eval, config.eval.win_rate
    if not (e.a and e.b):
        raise GptjaxError("eval.win_rate needs two models: --config.eval.a=DIR --config.eval.b=DIR")
    if judge is None:
        if not e.judge:
            raise GptjaxError("eval.win_rate needs a judge: --config.eval.judge=REWARD_WORKDIR")
        judge = judge_lib.load_reward_judge(e.judge)
    models = [ans.load_model(e.a, "eval.a"), ans.load_model(e.b, "eval.b")]
    prompts = prompt_sets.load(w.prompts, config.data.root, config.data.val_fraction,
                               w.max_prompts)
    s = ans.Sampling(w.max_new_tokens, w.temperature, w.top_k, w.top_p, w.samples_per_prompt,
                     config.seed, e.batch_size)
    keep, answers, skipped = answer_all(models, prompts, s, repr(w.prompts),
                                        "eval.win_rate.max_new_tokens")
    a, b = answers[e.a], answers[e.b]
    kept = [prompts[i] for i in keep]
    flat_prompts = [p for p in kept for _ in range(s.samples)]
    groups = [i for i in range(len(kept)) for _ in range(s.samples)]
    texts_a, stop_a = _flat(a)
    texts_b, stop_b = _flat(b)
    scores_a, scores_b = judge.score(flat_prompts, texts_a), judge.score(flat_prompts, texts_b)
    out = winrate.compare(scores_a, scores_b, groups, [len(t) for t in texts_a],
                          [len(t) for t in texts_b], margin=w.tie_margin,
                          length_tolerance=w.length_tolerance, n_boot=w.bootstrap,
                          seed=config.seed)
    base = _lm(e.base) if e.base else None
    degen = {}
    for name, texts, stopped, answers_ in ((e.a, texts_a, stop_a, a), (e.b, texts_b, stop_b, b)):
        degen[name] = degeneration.summary(texts, stopped)
        degen[name]["mean_tokens"] = sum(map(sum, answers_.num_tokens)) / len(texts)
        if base is not None:
            f = perplexity.fluency(base, texts, e.batch_size)
            degen[name]["base_perplexity"] = f["perplexity"]
    out.update(a=e.a, b=e.b, judge=judge.name, prompt_set=w.prompts,
               prompts_total=len(prompts), prompts_skipped=skipped,
               sampling=dataclasses.asdict(s), degeneration=degen,
               base=e.base or None, length_unit="characters",
               judge_dropped_chars=getattr(judge, "dropped_chars", 0))
    out["side_by_side"] = [
        {"prompt": kept[i][-1]["content"], "a": a.texts[i][0], "b": b.texts[i][0],
         "score_a": float(scores_a[i * s.samples]), "score_b": float(scores_b[i * s.samples])}
        for i in range(min(w.table_rows, len(kept)))]
    rows = [{"task": "win_rate", "prompt_index": keep[g], "sample": k % s.samples,
             "prompt": flat_prompts[k], "a": texts_a[k], "b": texts_b[k],
             "score_a": float(scores_a[k]), "score_b": float(scores_b[k]),
             "stopped_a": stop_a[k], "stopped_b": stop_b[k]} for k, g in enumerate(groups)]
    print(f"eval: win rate {e.a} over {e.b} (judge {judge.name}): {out['win_rate']:.3f} "
          f"[{out['ci_low']:.3f}, {out['ci_high']:.3f}] on {out['prompts']} prompts "
          f"x {s.samples} ({out['wins']} wins, {out['ties']} ties, {out['losses']} losses)")
    return out, rows


def gsm8k_task(config: ml_collections.ConfigDict) -> tuple[dict[str, Any], list[dict]]:
    e, g = config.eval, config.eval.gsm8k
    path = g.path or os.path.join(shipped.data_root(config.data.root), "gsm8k", "test.jsonl")
    rows = gsm8k.read(path, g.max_questions)
    s = ans.Sampling(g.max_new_tokens, 0.0, 0, 1.0, 1, config.seed, e.batch_size)  # greedy
    out, answer_rows = {}, []
    for wd in _models(e):
        m = ans.load_model(wd, "eval.models")
        width = ans.prompt_width(m, s.max_new_tokens, "eval.gsm8k.max_new_tokens")
        fitted = [ans.fit_prompt([{"role": "user", "content": q}], m, width) for q, _ in rows]
        keep = [i for i, x in enumerate(fitted) if x is not None]
        if not keep:
            raise prompt_sets.PromptSetError(
                f"none of the {len(rows)} GSM8K questions fits the {width} prompt tokens of "
                f"{wd}: lower eval.gsm8k.max_new_tokens or use a model with a longer context")
        ids = {q: fitted[i] for i, (q, _) in enumerate(rows)}
        stopped: list[bool] = []

        def greedy(questions: list[str]) -> list[str]:
            a = ans.answer(m, [ids[q] for q in questions], s)
            stopped.extend(x[0] for x in a.stopped)
            return [t[0] for t in a.texts]

        kept_rows = [rows[i] for i in keep]
        r = gsm8k.evaluate(kept_rows, greedy)
        out[wd] = {k: r[k] for k in ("accuracy", "correct", "questions", "stderr", "no_number")}
        out[wd].update(path=path, skipped_too_long=len(rows) - len(keep),
                       truncated_fraction=degeneration.truncated_fraction(stopped))
        answer_rows += [{"task": "gsm8k", "model": wd, "question": q, "reference": ref,
                         "answer": t, "extracted": x, "correct": c}
                        for (q, ref), t, x, c in zip(kept_rows, r["answers"], r["extracted"],
                                                     r["is_correct"])]
        print(f"eval: GSM8K {wd}: {r['accuracy']:.3f} ({r['correct']}/{r['questions']})")
    return out, answer_rows


def run(config: ml_collections.ConfigDict, workdir: str,
        judge: judge_lib.Judge | None = None) -> EvalResult:
    """Run the switched-on tasks; `judge` replaces the reward workdir eval.judge for the win
    rate (a gold scorer, from Python)."""
    config_lib.validate(config)
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        f.write(config_lib.to_json(config))
    e = config.eval
    result: dict[str, Any] = {"seconds": {}}
    rows: list[dict] = []
    for task in ("perplexity", "reward_accuracy", "win_rate", "gsm8k"):
        if not e[task].enabled:
            continue
        t0 = time.perf_counter()
        if task == "perplexity":
            result[task] = perplexity_task(config)
        elif task == "reward_accuracy":
            result[task] = reward_accuracy_task(config)
        elif task == "win_rate":
            result[task], r = win_rate_task(config, judge)
            rows += r
        else:
            result[task], r = gsm8k_task(config)
            rows += r
        result["seconds"][task] = round(time.perf_counter() - t0, 2)
    result = _json_safe(result)
    _write(workdir, "eval.json", json.dumps(result, indent=2, sort_keys=True))
    _write(workdir, "eval.md", report.markdown(result))
    _write(workdir, ANSWERS_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    print(f"eval: wrote {os.path.join(workdir, 'eval.json')} and eval.md")
    return EvalResult(result)


def _json_safe(x: Any) -> Any:
    """NaN / inf (a statistic with nothing to compute it from) as null: eval.json stays JSON."""
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "item"):  # numpy scalars
        return _json_safe(x.item())
    return x


def _write(workdir: str, name: str, text: str) -> None:
    path = os.path.join(workdir, name)
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(path + ".tmp", path)
