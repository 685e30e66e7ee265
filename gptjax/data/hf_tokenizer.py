"""A Hugging Face tokenizer (GPT-2's byte-level BPE) behind gptjax's Tokenizer interface.

`python -m gptjax.convert --from-hf DIR` reads the vocabulary from the same folder as the
weights: `tokenizer.json` (what a fast tokenizer's `save_pretrained` writes) or GPT-2's
`vocab.json` + `merges.txt`. The library is Hugging Face `tokenizers` (the Rust tokenizer that
transformers itself runs; a few MB, no torch), not a hand-written BPE, so ids are exactly
GPT-2's. The whole tokenizer is stored inside the workdir's tokenizer.json (self-contained).

gptjax's chat tokens are added as special tokens after the existing vocabulary
(`add_specials`), so GPT-2's ids never move and a model only grows its embedding;
`<|endoftext|>` is GPT-2's own (id 50256).
"""

from __future__ import annotations

import json
import os
from typing import Iterable

from gptjax.errors import GptjaxError

KIND = "hf"


class HFTokenizer:
    """`tokenizers.Tokenizer` with gptjax's special tokens."""

    kind = KIND

    def __init__(self, spec: str):
        from tokenizers import Tokenizer
        from gptjax.data.tokenizer import SPECIAL_TOKENS
        self.spec = spec  # the tokenizer's own JSON serialisation
        self.tk = Tokenizer.from_str(spec)
        self.specials = {t: self.tk.token_to_id(t) for t in SPECIAL_TOKENS
                         if self.tk.token_to_id(t) is not None}

    @classmethod
    def from_folder(cls, folder: str) -> "HFTokenizer | None":
        """The tokenizer of a Hugging Face model folder, or None when it has no tokenizer files."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        path = os.path.join(folder, "tokenizer.json")
        try:
            if os.path.isfile(path):
                return cls(Tokenizer.from_file(path).to_str())
            vocab, merges = (os.path.join(folder, n) for n in ("vocab.json", "merges.txt"))
            if not (os.path.isfile(vocab) and os.path.isfile(merges)):
                return None
            # GPT-2's tokenizer: byte-level BPE, no prefix space, byte-level decoding.
            tk = Tokenizer(models.BPE.from_file(vocab, merges))
            tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tk.decoder = decoders.ByteLevel()
            if "<|endoftext|>" in json.load(open(vocab, encoding="utf-8")):
                tk.add_special_tokens(["<|endoftext|>"])
            return cls(tk.to_str())
        except Exception as e:  # tokenizers raises a plain Exception for malformed files
            raise GptjaxError(f"the tokenizer files in {folder} cannot be read ({type(e).__name__}"
                              f": {' '.join(str(e).split())[:200]}); save them again with "
                              "save_pretrained") from None

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tk.decode([int(i) for i in ids], skip_special_tokens=False)

    def to_json(self) -> dict:
        return {"type": KIND, "tokenizer": self.spec}

    def add_specials(self, tokens: Iterable[str]) -> "HFTokenizer":
        """Append special tokens at the end of the vocabulary (existing ids keep theirs)."""
        from tokenizers import AddedToken, Tokenizer
        tk = Tokenizer.from_str(self.spec)
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                               for t in tokens if tk.token_to_id(t) is None])
        return HFTokenizer(tk.to_str())
