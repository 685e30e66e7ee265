"""Tokenizers behind one interface: encode, decode, vocab_size, save/load with the workdir."""

from __future__ import annotations

import json
import os
from typing import Protocol

from gptjax.errors import GptjaxError


class Tokenizer(Protocol):
    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def save(self, path: str) -> None: ...


class CharTokenizer:
    """One id per distinct character of the training text, sorted (nanoGPT's char level)."""

    kind = "char"

    def __init__(self, chars: list[str]):
        self.chars = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}

    @classmethod
    def train(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[ch] for ch in text]
        except KeyError as e:
            raise GptjaxError(
                f"character {e.args[0]!r} is not in this char tokenizer's vocabulary "
                f"({self.vocab_size} characters from its training text)") from None

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def save(self, path: str) -> None:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"type": self.kind, "chars": self.chars}, f, ensure_ascii=False)
        os.replace(tmp, path)


def load_tokenizer(path: str) -> Tokenizer:
    if not os.path.exists(path):
        raise GptjaxError(f"no tokenizer at {path}: is this a gptjax workdir?")
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    if spec.get("type") == "char":
        return CharTokenizer(spec["chars"])
    raise GptjaxError(f"tokenizer file {path} has unknown type {spec.get('type')!r}")
