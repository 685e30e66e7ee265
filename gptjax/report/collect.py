"""Every number the pipeline report shows, read from the stages' own files (report.json).

Nothing is recomputed: prepare's report.json, each stage's metrics.jsonl (a resumed stage
repeats some steps: the last line of a step wins, and they are equal on a deterministic
rerun), reward_eval.json, PPO's samples.jsonl and the eval stages' eval.json. Times are kept
apart from the results (`TIMES`), so two runs that compute the same thing give the same
report.json but for those keys.
"""

from __future__ import annotations

import json
import os
from typing import Any

from gptjax import workdir as workdir_lib

TIMES = ("seconds", "cpu_seconds", "tokens_per_sec", "mfu", "time_rollout", "time_scoring",
         "time_update")
TRAINING = ("pretrain", "sft", "reward", "ppo", "dpo", "grpo")  # stages with metrics.jsonl


def metrics(folder: str) -> list[dict[str, float]]:
    """metrics.jsonl as one dict per step (in step order), later lines of a step winning."""
    path = os.path.join(folder, "metrics.jsonl")
    by_step: dict[int, dict[str, float]] = {}
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    by_step.setdefault(int(rec["step"]), {}).update(rec)
    return [by_step[s] for s in sorted(by_step)]


def _refs(value: Any) -> list[str]:
    if isinstance(value, str) and value.startswith("@"):
        return [p.strip()[1:] for p in value.split(",")]
    return []


def _last(rows: list[dict[str, float]], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r]
    return vals[-1] if vals else None


def _first(rows: list[dict[str, float]], key: str) -> float | None:
    vals = [r[key] for r in rows if key in r]
    return vals[0] if vals else None


def _prepare(folder: str) -> dict[str, Any] | None:
    rep = workdir_lib.read_json(os.path.join(folder, "prepared"), "report.json")
    if rep is None:
        return None
    i, o, t = rep["input"], rep["output"], rep.get("tokenizer", {})
    return {"documents_in": i.get("documents"), "characters_in": i.get("characters"),
            "documents_kept": o.get("documents"), "characters_kept": o.get("characters"),
            "train_documents": o.get("train_documents"), "val_documents": o.get("val_documents"),
            "tokens": o.get("tokens"), "tokenizer": t.get("kind"),
            "vocab_size": t.get("vocab_size"), "tokens_per_char": t.get("tokens_per_char"),
            "removed": {rule: c["documents"] for rule, c in rep.get("removed", {}).items()},
            "length_histogram": rep.get("length_histogram")}


def _training(rows: list[dict[str, float]]) -> dict[str, Any]:
    out = {"steps": int(rows[-1]["step"]) if rows else 0}
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        if _last(rows, key) is not None:
            out[f"first_{key}"], out[f"last_{key}"] = _first(rows, key), _last(rows, key)
    return out


PPO_KEYS = ("score", "rm_score", "kl", "beta", "response_length", "ptx_loss", "val_ptx_loss",
            "truncated", "eval_score_greedy", "eval_score_sampled", "eval_length_greedy")


def _ppo(rows: list[dict[str, float]]) -> dict[str, Any]:
    return {"iterations": int(rows[-1]["step"]) if rows else 0,
            **{f"first_{k}": _first(rows, k) for k in PPO_KEYS},
            **{f"last_{k}": _last(rows, k) for k in PPO_KEYS}}


def _samples(folder: str) -> dict[int, list[dict[str, Any]]]:
    """PPO's greedy held-out answers by step (step 0: the SFT policy before any update)."""
    out: dict[int, list[dict[str, Any]]] = {}
    path = os.path.join(folder, "samples.jsonl")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                rec = json.loads(line)
                if rec.get("mode") == "greedy":
                    out.setdefault(int(rec["step"]), []).append(rec)
    return out


def _win_rate(ev: dict[str, Any], names: dict[str, str]) -> dict[str, Any] | None:
    w = ev.get("win_rate")
    if not w:
        return None
    keep = ("win_rate", "ci_low", "ci_high", "wins", "ties", "losses", "prompts",
            "mean_length_a", "mean_length_b", "length_tolerance")
    matched = w.get("length_matched") or {}  # the pairs of about equally long answers
    return {"a": names.get(w["a"], w["a"]), "b": names.get(w["b"], w["b"]),
            "judge": names.get(w["judge"], w["judge"]), **{k: w.get(k) for k in keep},
            "length_matched_win_rate": matched.get("win_rate") if matched.get("comparisons")
            else None, "length_matched_comparisons": matched.get("comparisons", 0)}


def collect(workdir: str) -> dict[str, Any]:
    """report.json's content for a pipeline workdir."""
    cfg = workdir_lib.run_config(workdir)
    order, stages_cfg = list(cfg["order"]), cfg["stages"]
    folders = {name: os.path.join(workdir, name) for name in order}
    names = {os.path.normpath(f): n for n, f in folders.items()}
    names.update({f: n for n, f in folders.items()})
    rep: dict[str, Any] = {"pipeline": cfg.get("name", ""), "order": order, "stages": [],
                           "prepare": {}, "training": {}, "sft_data": {}, "reward_models": {},
                           "ppo": {}, "win_rates": {}, "answers": []}
    optimised = {r: n for n in order if stages_cfg[n]["stage"] == "ppo"
                 for r in _refs(stages_cfg[n]["ppo"]["reward_from"])}
    judges = {r: n for n in order if stages_cfg[n]["stage"] == "eval"
              for r in _refs(stages_cfg[n].get("eval", {}).get("judge", ""))}
    for name in order:
        kind, folder = stages_cfg[name]["stage"], folders[name]
        mark = workdir_lib.read_json(folder, workdir_lib.PIPELINE_STAGE_FILE) or {}
        rep["stages"].append({"name": name, "kind": kind, "done": bool(mark.get("done")),
                              "seconds": mark.get("seconds"),
                              "cpu_seconds": mark.get("cpu_seconds"),
                              "init_from": _refs(stages_cfg[name].get("init_from", ""))})
        if kind == "prepare" and _prepare(folder):
            rep["prepare"][name] = _prepare(folder)
        if kind in TRAINING:
            rows = metrics(folder)
            rep["training"][name] = {"kind": kind, **(_ppo(rows) if kind == "ppo"
                                                      else _training(rows))}
        if kind == "sft":
            rep["sft_data"][name] = workdir_lib.read_json(folder, "data_stats.json")
        if kind == "reward":
            ev = workdir_lib.read_json(folder, "reward_eval.json")
            if ev is not None:
                rep["reward_models"][name] = {
                    **ev, "optimised_by": optimised.get(name), "judge_of": judges.get(name),
                    "data": {k: stages_cfg[name]["data"][k] for k in
                             ("mixture", "skip_examples", "max_examples", "root")}}
        if kind == "ppo":
            rep["ppo"][name] = rep["training"][name]
        if kind == "eval":
            w = _win_rate(workdir_lib.read_json(folder, "eval.json") or {}, names)
            if w is not None:
                rep["win_rates"][name] = w
    rep["answers"] = answers(workdir, order, stages_cfg, folders, names)
    return rep


def answers(workdir: str, order: list[str], stages_cfg: dict[str, Any],
            folders: dict[str, str], names: dict[str, str]) -> list[dict[str, str]]:
    """The same held-out prompts answered by the base, SFT and PPO models, side by side: from
    the eval stages' side-by-side tables (matched by prompt), else from PPO's greedy
    held-out answers (step 0 = the SFT policy, the last step = PPO)."""
    by_prompt: dict[str, dict[str, str]] = {}
    for name in order:
        if stages_cfg[name]["stage"] != "eval":
            continue
        ev = workdir_lib.read_json(folders[name], "eval.json") or {}
        w = ev.get("win_rate") or {}
        a, b = names.get(w.get("a", ""), w.get("a")), names.get(w.get("b", ""), w.get("b"))
        for row in w.get("side_by_side", []):
            cell = by_prompt.setdefault(row["prompt"], {"prompt": row["prompt"]})
            cell.setdefault(a, row["a"])
            cell.setdefault(b, row["b"])
    if by_prompt:
        return list(by_prompt.values())
    for name in order:
        if stages_cfg[name]["stage"] == "ppo":
            s = _samples(folders[name])
            if len(s) >= 2:
                first, last = s[min(s)], s[max(s)]
                init = (_refs(stages_cfg[name].get("init_from", "")) or ["sft"])[0]
                return [{"prompt": x["prompt"], init: x["answer"], name: y["answer"]}
                        for x, y in zip(first, last)]
    return []
