"""The conversation formats of users' own files (TRL and LLaMA-Factory), read into gptjax's turns.

A conversation is a list of {"role": "system" | "user" | "assistant", "content": str} turns
(gptjax.data.chat). Each format and what it becomes:

  messages           {"messages": [{"role", "content"}, ...]} (TRL conversational; an optional
                     leading system turn) -> the turns as they are
  prompt_completion  {"prompt": P, "completion": C}, each a string or a list of turns; a string
                     prompt is a user turn, a string completion an assistant turn -> P + C
  alpaca             {"instruction", "input", "output"[, "system"][, "history"]} -> [system],
                     the history's (query, response) pairs, then user = instruction and input
                     joined by a newline (LLaMA-Factory's rule), assistant = output
  sharegpt           {"conversations": [{"from", "value"}, ...][, "system"]}, from = human /
                     user -> user, gpt / assistant / chatgpt -> assistant, system -> system

`detect` picks the format from a file's first record (forced by `data.format`). A record that
cannot be used raises `RowProblem` with its kind (PROBLEMS), so readers count the kinds and
report where each first happened instead of stopping at the first bad row.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from gptjax.data import sources
from gptjax.data.chat import ROLE_TOKENS, Conversation
from gptjax.errors import GptjaxError

FORMATS = ("messages", "prompt_completion", "alpaca", "sharegpt")
PROBLEMS = ("not_json", "missing_field", "wrong_type", "unknown_role", "empty_turn",
            "no_assistant")
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "chatgpt": "assistant", "system": "system"}


class RowProblem(Exception):
    """One record that cannot be used: `kind` is one of PROBLEMS, the message says why."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind


def detect(record: dict[str, Any]) -> str | None:
    """The format a record's fields say, or None."""
    if "messages" in record:
        return "messages"
    if "conversations" in record:
        return "sharegpt"
    if "instruction" in record and "output" in record:
        return "alpaca"
    if "prompt" in record and "completion" in record:
        return "prompt_completion"
    return None


def check_format(fmt: str) -> None:
    if fmt and fmt not in FORMATS:
        raise GptjaxError(f"data.format={fmt!r}: use one of {FORMATS}, or '' to detect the "
                          "format of each file from its fields")


def _field(record: dict[str, Any], key: str) -> Any:
    if key not in record or record[key] is None:
        raise RowProblem("missing_field", f"has no {key!r} (fields: {sorted(record)})")
    return record[key]


def text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise RowProblem("wrong_type", f"{what} is a {type(value).__name__}, not a string")
    if not value.strip():
        raise RowProblem("empty_turn", f"{what} is empty")
    return value


def turns(value: Any, what: str = "the turn list", role_key: str = "role",
          content_key: str = "content", roles: dict[str, str] | None = None
          ) -> list[dict[str, str]]:
    """A list of turn dicts checked and mapped to gptjax roles."""
    if not isinstance(value, list):
        raise RowProblem("wrong_type", f"{what} is a {type(value).__name__}, not a list of turns")
    out = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise RowProblem("wrong_type", f"turn {i} of {what} is a {type(turn).__name__}, not "
                             f"an object with {role_key!r} and {content_key!r}")
        role = turn.get(role_key)
        mapped = roles.get(role) if roles is not None and isinstance(role, str) else role
        if mapped not in ROLE_TOKENS:
            known = sorted(roles) if roles is not None else sorted(ROLE_TOKENS)
            raise RowProblem("unknown_role", f"turn {i} has {role_key} {role!r}; known: {known}")
        out.append({"role": mapped,
                    "content": text(turn.get(content_key), f"turn {i} ({role})")})
    return out


def _side(value: Any, role: str, what: str) -> list[dict[str, str]]:
    """A prompt or completion: a string (one turn of `role`) or a list of turns."""
    if isinstance(value, str):
        return [{"role": role, "content": text(value, what)}]
    return turns(value, what)


def _alpaca(r: dict[str, Any], need_output: bool = True) -> list[dict[str, str]]:
    conv = []
    if r.get("system"):
        conv.append({"role": "system", "content": text(r["system"], "'system'")})
    history = r.get("history") or []
    if not isinstance(history, list):
        raise RowProblem("wrong_type", "'history' is not a list of [query, response] pairs")
    for i, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise RowProblem("wrong_type", f"history entry {i} is not a [query, response] pair")
        conv += [{"role": "user", "content": text(pair[0], f"history {i} query")},
                 {"role": "assistant", "content": text(pair[1], f"history {i} response")}]
    instruction = _field(r, "instruction")
    extra = r.get("input")
    if not isinstance(instruction, str) or not isinstance(extra, (str, type(None))):
        raise RowProblem("wrong_type", "'instruction' and 'input' must be strings")
    query = "\n".join(x for x in (instruction, extra) if x)
    conv.append({"role": "user", "content": text(query, "'instruction' + 'input'")})
    if need_output or r.get("output"):
        conv.append({"role": "assistant", "content": text(_field(r, "output"), "'output'")})
    return conv


def _sharegpt(r: dict[str, Any]) -> list[dict[str, str]]:
    conv = []
    if r.get("system"):
        conv.append({"role": "system", "content": text(r["system"], "'system'")})
    return conv + turns(_field(r, "conversations"), "'conversations'", "from", "value",
                        SHAREGPT_ROLES)


def to_conversation(record: dict[str, Any], fmt: str, need_assistant: bool = True
                    ) -> list[dict[str, str]]:
    """The record's conversation in gptjax turns; RowProblem when it cannot be used (also when
    it has no assistant turn, unless need_assistant is False: a prompt)."""
    if fmt == "messages":
        conv = turns(_field(record, "messages"), "'messages'")
    elif fmt == "prompt_completion":
        conv = (_side(_field(record, "prompt"), "user", "'prompt'")
                + _side(_field(record, "completion"), "assistant", "'completion'"))
    elif fmt == "alpaca":
        conv = _alpaca(record, need_assistant)
    elif fmt == "sharegpt":
        conv = _sharegpt(record)
    else:
        raise GptjaxError(f"unknown conversation format {fmt!r}; use one of {FORMATS}")
    if need_assistant and not any(t["role"] == "assistant" for t in conv):
        raise RowProblem("no_assistant", "has no assistant turn, so nothing to learn from")
    return conv


@dataclasses.dataclass
class FileReport:
    """What reading one file kept and rejected, with where each kind of problem first was."""

    path: str
    format: str = ""
    rows: int = 0
    used: int = 0
    rejected: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    first: dict[str, str] = dataclasses.field(default_factory=dict)  # kind -> "where: why"

    def reject(self, kind: str, where: str, why: str) -> None:
        self.rejected[kind] += 1
        self.first.setdefault(kind, f"{where} {why}")

    def not_json(self, where: str, why: str) -> None:
        """A JSONL line that is not a JSON object: a row, rejected."""
        self.rows += 1
        self.reject("not_json", where, why)

    def summary(self) -> str:
        """'2 unknown_role (first: f.jsonl line 3 turn 1 has role 'tool'...); 1 empty_turn ...'"""
        return "; ".join(f"{n} {kind} (first: {self.first[kind]})"
                         for kind, n in sorted(self.rejected.items()))

    def no_row_usable(self, what: str) -> GptjaxError:
        hint = (f", or force another format with --config.data.format (read as {self.format})"
                if self.format else "")
        return GptjaxError(f"{self.path}: none of its {self.rows} rows is a usable {what} "
                           f"({self.summary()}); fix the rows{hint}")


def merge_reports(reports: list[FileReport]) -> tuple[dict[str, int], dict[str, str]]:
    """(rejected rows by kind, where each kind first happened) over several files."""
    counts: collections.Counter = collections.Counter()
    first: dict[str, str] = {}
    for rep in reports:
        counts.update(rep.rejected)
        for kind, where in rep.first.items():
            first.setdefault(kind, where)
    return dict(sorted(counts.items())), first


def first_record_format(path: str, fmt: str) -> str:
    """The format of a file: `fmt` when forced, else what its first record's fields say."""
    check_format(fmt)
    if fmt:
        return fmt
    bad: list[str] = []
    for where, rec in sources.iter_rows(path, on_bad=lambda w, why: bad.append(f"{w} {why}")):
        found = detect(rec)
        if found is None:
            raise GptjaxError(
                f"{where}: cannot tell the conversation format from the fields {sorted(rec)[:12]}"
                f"; SFT files hold 'messages', 'prompt' + 'completion', 'instruction' + 'output' "
                "(Alpaca) or 'conversations' (ShareGPT): rename the fields or set "
                "--config.data.format")
        return found
    first = f" ({bad[0]})" if bad else ""
    raise GptjaxError(f"{path} holds no JSON record{first}; give it one JSON object a line")


def read_conversations(path: str, fmt: str = "") -> tuple[list[Conversation], FileReport]:
    """Every usable conversation of a .jsonl / .jsonl.gz / .parquet file, in order, and the
    report of what was rejected; a file with no usable conversation is one clear error."""
    report = FileReport(path, first_record_format(path, fmt))
    out = []
    for where, rec in sources.iter_rows(path, on_bad=report.not_json):
        report.rows += 1
        try:
            out.append(to_conversation(rec, report.format))
        except RowProblem as e:
            report.reject(e.kind, where, str(e))
    report.used = len(out)
    if not out:
        raise report.no_row_usable(f"{report.format} conversation")
    return out, report
