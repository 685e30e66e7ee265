"""eval.md: the eval stage's results (eval.json) as Markdown tables, every number from the run."""

from __future__ import annotations

from typing import Any


def _f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def _cell(text: str, limit: int = 300) -> str:
    """One table cell: newlines and pipes escaped, long answers cut (the full text is in
    answers.jsonl)."""
    text = text if len(text) <= limit else text[:limit] + " …"
    return text.replace("|", "\\|").replace("\n", "<br>") or "(empty)"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
            + ["| " + " | ".join(r) + " |" for r in rows])


def _perplexity(res: dict) -> list[str]:
    rows = [[wd, _f(r["perplexity"]), _f(r["bits_per_char"]), str(r["tokens"]), r["source"]]
            for wd, r in res.items()]
    return ["## Perplexity", "", *_table(
        ["model", "perplexity", "bits / char", "tokens", "text"], rows), ""]


def _reward(r: dict) -> list[str]:
    return ["## Reward-model accuracy", "", *_table(
        ["reward model", "pairs", "prompts", "accuracy", "s.e. (pairs independent)",
         "s.e. (by prompt)", "95% interval (by prompt)", "chance"],
        [[r["workdir"], str(r["pairs"]), str(r["prompts"]), _f(r["accuracy"]), _f(r["stderr"]),
          _f(r["cluster_stderr"]), f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}]",
          _f(r["chance"], 1)]]),
        "", f"{r['mixture']}, split `{r['split']}`; {r['grouping']}.", ""]


def _win(r: dict) -> list[str]:
    s = r["sampling"]
    lm = r["length_matched"]
    out = ["## Win rate", "",
           f"A = `{r['a']}`, B = `{r['b']}`, judge = `{r['judge']}`; prompts: {r['prompt_set']} "
           f"({r['prompts']} of {r['prompts_total']} fit both contexts) × {s['samples']} "
           f"samples (max_new_tokens {s['max_new_tokens']}, temperature {s['temperature']}, "
           f"top_k {s['top_k']}, top_p {s['top_p']}).", "",
           *_table(["pairs", "comparisons", "A wins", "ties", "B wins", "win rate of A",
                    "95% interval (bootstrap over prompts)"],
                   [["all", str(r["comparisons"]), str(r["wins"]), str(r["ties"]),
                     str(r["losses"]), _f(r["win_rate"]),
                     f"[{_f(r['ci_low'])}, {_f(r['ci_high'])}]"],
                    [f"length-matched (±{r['length_tolerance']:.0%})", str(lm["comparisons"]),
                     str(lm["wins"]), str(lm["ties"]), str(lm["losses"]), _f(lm["win_rate"]),
                     f"[{_f(lm['ci_low'])}, {_f(lm['ci_high'])}]"]]),
           "", "Degeneration of the answers (the same measures for both models):", ""]
    keys = ["mean_score", "mean_chars", "mean_tokens", "distinct_1", "distinct_2",
            "repeated_4gram_share", "digit_share", "symbol_share", "truncated_fraction",
            "base_perplexity"]
    rows = []
    for name, side in ((r["a"], "a"), (r["b"], "b")):
        d = {**r["degeneration"][name], "mean_score": r[f"mean_score_{side}"]}
        rows.append([f"{side.upper()} `{name}`", *(_f(d.get(k)) for k in keys)])
    out += _table(["model", *keys], rows)
    if r.get("base"):
        out += ["", f"base_perplexity: the answers' perplexity under `{r['base']}`."]
    out += ["", "First answers side by side (sample 0; full texts in answers.jsonl):", "",
            *_table(["prompt", "A", "score A", "B", "score B"],
                    [[_cell(x["prompt"], 150), _cell(x["a"]), _f(x["score_a"]), _cell(x["b"]),
                      _f(x["score_b"])] for x in r["side_by_side"]]), ""]
    return out


def _gsm8k(res: dict) -> list[str]:
    rows = [[wd, _f(r["accuracy"]), f"{r['correct']} / {r['questions']}", _f(r["stderr"]),
             str(r["no_number"]), _f(r["truncated_fraction"]), str(r["skipped_too_long"])]
            for wd, r in res.items()]
    return ["## GSM8K (greedy, exact match of the final number)", "", *_table(
        ["model", "exact match", "correct", "s.e.", "no number", "cut at limit",
         "skipped (too long)"], rows), ""]


def markdown(result: dict) -> str:
    lines = ["# Evaluation", ""]
    if "perplexity" in result:
        lines += _perplexity(result["perplexity"])
    if "reward_accuracy" in result:
        lines += _reward(result["reward_accuracy"])
    if "win_rate" in result:
        lines += _win(result["win_rate"])
    if "gsm8k" in result:
        lines += _gsm8k(result["gsm8k"])
    secs = ", ".join(f"{k} {v:.1f} s" for k, v in result.get("seconds", {}).items())
    lines += [f"Time: {secs}.", ""]
    return "\n".join(lines)
