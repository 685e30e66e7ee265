"""What the pipeline report says: the sections, tables and figures, from report.json's content
(collect.py) and the figure files (plots.py)."""

from __future__ import annotations

from typing import Any

from gptjax.report.render import Block, Heading, Image, Para, Table


def f(x: Any, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:,.{digits}f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def _cut(text: str, limit: int = 280) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit] + " …"


def _stages(rep: dict[str, Any], figs: dict[str, str]) -> list[Block]:
    rows = [[s["name"], s["kind"], ", ".join(s["init_from"]) or "–", f(s["seconds"], 1),
             f(s.get("cpu_seconds"), 1), "yes" if s["done"] else "no"] for s in rep["stages"]]
    total = sum(s["seconds"] or 0 for s in rep["stages"])
    out: list[Block] = [Heading("Stages and wall time"),
                        Table(["stage", "kind", "starts from", "wall seconds", "CPU seconds",
                               "finished"], rows),
                        Para(f"Total: {total:,.0f} s of wall time (all attempts of each stage; an "
                             "attempt killed without warning counts up to the newest file it "
                             "wrote; CPU seconds: of every thread, finished attempts only). A "
                             "machine shared with other work shows more wall than CPU time.")]
    if "wall_time" in figs:
        out.append(Image(figs["wall_time"], "wall time per stage"))
    return out


def _data(rep: dict[str, Any], figs: dict[str, str]) -> list[Block]:
    out: list[Block] = []
    for name, p in rep["prepare"].items():
        out += [Heading(f"Data and tokenizer ({name})"), Table(
            ["documents in", "kept", "train / val documents", "characters kept", "tokens",
             "tokenizer", "tokens / character"],
            [[f(p["documents_in"]), f(p["documents_kept"]),
              f"{f(p['train_documents'])} / {f(p['val_documents'])}", f(p["characters_kept"]),
              f(p["tokens"]), f"{p['vocab_size']:,}-token {p['tokenizer']}",
              f(p["tokens_per_char"], 4)]])]
        if p["removed"]:
            out.append(Table(["removed by", "documents"],
                             [[r, f(n)] for r, n in sorted(p["removed"].items())]))
    if "prepare" in figs:
        out.append(Image(figs["prepare"], "documents removed by each rule; document lengths"))
    for name, stats in rep["sft_data"].items():
        if stats:
            out += [Para(f"SFT data of `{name}` (conversations per source, as the stage read "
                         "them; a conversation keeps the longest prefix of whole turns that "
                         "fits the window):"), Table(
                ["source", "conversations", "kept", "cut to fit", "too long", "not encodable"],
                [[src, f(s["conversations"]), f(s["kept"]), f(s["cut"]), f(s["too_long"]),
                  f(s["unencodable"])] for src, s in stats.items()])]
    return out


def _training(rep: dict[str, Any], figs: dict[str, str]) -> list[Block]:
    rows = [[n, t["kind"], f(t["steps"]), f(t.get("first_loss"), 4), f(t.get("last_loss"), 4),
             f(t.get("last_val_loss"), 4)]
            for n, t in rep["training"].items() if t["kind"] != "ppo"]
    if not rows:
        return []
    out: list[Block] = [Heading("Training curves"),
                        Table(["stage", "kind", "steps", "first loss", "last loss",
                               "last held-out loss"], rows)]
    if "losses" in figs:
        out.append(Image(figs["losses"], "loss curves of each stage"))
    return out


def _roles(m: dict[str, Any]) -> str:
    roles = []
    if m.get("optimised_by"):
        roles.append(f"optimised by {m['optimised_by']}")
    if m.get("judge_of"):
        roles.append(f"judge of {m['judge_of']}")
    return ", ".join(roles) or "–"


def _data_part(d: dict[str, Any]) -> str:
    skip, cap = d.get("skip_examples") or 0, d.get("max_examples") or 0
    part = f"records [{skip:,}, {skip + cap:,})" if cap else f"records from {skip:,} on"
    return f"{d['mixture']}, {part}"


def _rewards(rep: dict[str, Any], figs: dict[str, str]) -> list[Block]:
    models = rep["reward_models"]
    if not models:
        return []
    rows = [[n, _data_part(m["data"]), f(m["pairs"]), f(m["accuracy"]), f(m["stderr"]),
             f"[{f(m['accuracy'] - 1.96 * m['stderr'])}, {f(m['accuracy'] + 1.96 * m['stderr'])}]",
             _roles(m)] for n, m in models.items()]
    out: list[Block] = [Heading("Reward models"), Table(
        ["reward model", "trained on", "held-out pairs", "accuracy", "s.e.", "95% interval",
         "role"], rows)]
    for n, m in models.items():
        if m.get("optimised_by") and m.get("judge_of"):
            out.append(Para(f"Warning: `{n}` is both the reward model {m['optimised_by']} "
                            f"optimised and the judge of {m['judge_of']}: that win rate measures "
                            "reward hacking as much as quality."))
    if "reward_accuracy" in figs:
        out.append(Image(figs["reward_accuracy"], "held-out accuracy of the reward models"))
    return out


def _ppo(rep: dict[str, Any], figs: dict[str, str]) -> list[Block]:
    out: list[Block] = []
    for name, p in rep["ppo"].items():
        keys = ("score", "kl", "beta", "response_length", "ptx_loss", "truncated",
                "eval_score_greedy")
        out += [Heading(f"PPO ({name}, {p['iterations']} iterations)"), Table(
            ["", *keys], [["first iteration", *(f(p[f"first_{k}"], 4) for k in keys)],
                          ["last iteration", *(f(p[f"last_{k}"], 4) for k in keys)]]),
            Para("score: the optimised reward model's score minus its offset (the SFT "
                 "policy's mean); eval_score_greedy: the same on held-out prompts, greedy (at "
                 "iteration 0 the SFT policy itself).")]
        if f"ppo_{name}" in figs:
            out.append(Image(figs[f"ppo_{name}"], f"{name} per iteration"))
    return out


def _win_rates(rep: dict[str, Any], figs: dict[str, str]) -> list[Block]:
    rates = rep["win_rates"]
    if not rates:
        return []
    rows = [[f"{w['a']} over {w['b']}", w["judge"], f(w["win_rate"]),
             f"[{f(w['ci_low'])}, {f(w['ci_high'])}]",
             f"{w['wins']} / {w['ties']} / {w['losses']}", f(w["prompts"]),
             f"{f(w.get('length_matched_win_rate'))} ({w.get('length_matched_comparisons', 0)} "
             "pairs)"] for w in rates.values()]
    judges = sorted({w["judge"] for w in rates.values()})
    out: list[Block] = [Heading("Win rates"), Table(
        ["comparison", "judge", "win rate", "95% interval", "wins / ties / losses", "prompts",
         "length-matched win rate"], rows), Para(
        f"Judged by {', '.join('`' + j + '`' for j in judges)}: "
        + "; ".join(f"`{n}` is a reward model trained on {_data_part(m['data'])}"
                    for n, m in rep["reward_models"].items() if n in judges)
        + "; " + "; ".join(f"PPO optimised `{n}` ({_data_part(m['data'])})"
                           for n, m in rep["reward_models"].items() if m.get("optimised_by"))
        + ". The interval is a bootstrap over prompts; the length-matched win rate counts "
        "only the pairs of answers whose lengths (in characters) differ by at most "
        + ", ".join(sorted({f"{100 * (w.get('length_tolerance') or 0):.0f}%"
                            for w in rates.values()})) + " of the longer one.")]
    if "win_rates" in figs:
        out.append(Image(figs["win_rates"], "win rates with 95% intervals"))
    return out


def _answers(rep: dict[str, Any], limit: int) -> list[Block]:
    rows = rep["answers"][:limit]
    if not rows:
        return []
    models = [k for k in rows[0] if k != "prompt"]
    order = [m for stage in rep["order"] for m in models if m == stage]
    return [Heading("The same held-out prompts, answered by each model"),
            Table(["prompt", *order], [[_cut(r["prompt"]), *(_cut(r.get(m, "")) for m in order)]
                                       for r in rows])]


def blocks(rep: dict[str, Any], figs: dict[str, str], answers: int) -> list[Block]:
    names = " → ".join(rep["order"])
    return [Heading(f"{rep['pipeline'] or 'pipeline'}: from raw text to a chat model", 1),
            Para(f"Stages: {names}. Every number and figure below is read from the stages' own "
                 "files in this workdir (report.json holds them)."),
            *_stages(rep, figs), *_data(rep, figs), *_training(rep, figs),
            *_rewards(rep, figs), *_ppo(rep, figs), *_win_rates(rep, figs),
            *_answers(rep, answers)]
