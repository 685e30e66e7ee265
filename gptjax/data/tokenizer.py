"""Tokenizers behind one interface: encode, decode, special ids, save/load with the workdir.

Two kinds: `CharTokenizer` (one id per character, nanoGPT's char level) and
`SentencePieceTokenizer` (BPE trained with the sentencepiece library, byte fallback on, so no
input is out of vocabulary). Every tokenizer gptjax trains reserves SPECIAL_TOKENS (the document
separator and the chat-turn markers) as whole tokens: sentencepiece user-defined symbols, or ids
after the characters of a char tokenizer. A tokenizer without them (an older workdir) gets them
appended at the end of its vocabulary by `with_special_tokens`, so existing ids never move and a
model only has to grow its embedding.

A workdir stores its tokenizer as one self-contained `tokenizer.json` (the sentencepiece model
proto is embedded, base64).
"""

from __future__ import annotations

import base64
import json
import os
import re
from typing import Iterable, Iterator, Protocol

from gptjax.errors import GptjaxError, TokenizerCoverageError

EOS = "<|endoftext|>"  # between documents in pretraining streams; also the padding id
SYSTEM = "<|system|>"
USER = "<|user|>"
ASSISTANT = "<|assistant|>"
END_OF_TURN = "<|end|>"
SPECIAL_TOKENS = (EOS, SYSTEM, USER, ASSISTANT, END_OF_TURN)
# Sentencepiece writes spaces as U+2581 inside pieces and decodes every U+2581 back to a space, so
# a literal U+2581 in the text is encoded as its three UTF-8 byte tokens instead.
_SP_SPACE = "\u2581"


class Tokenizer(Protocol):
    kind: str
    vocab_size: int
    specials: dict[str, int]  # special token string -> id

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def to_json(self) -> dict: ...


def special_id(tok: Tokenizer, token: str) -> int:
    """The id of a special token, or a clear error for a tokenizer that lacks it."""
    try:
        return tok.specials[token]
    except KeyError:
        raise GptjaxError(
            f"the {tok.kind} tokenizer has no special token {token!r} (it was trained before "
            "gptjax reserved chat tokens); fine-tune with stage 'sft', which adds them") from None


def _special_splitter(specials: Iterable[str]) -> re.Pattern | None:
    specials = sorted(specials, key=len, reverse=True)
    return re.compile("(" + "|".join(map(re.escape, specials)) + ")") if specials else None


class CharTokenizer:
    """One id per distinct character of the training text (sorted), then the special tokens."""

    kind = "char"

    def __init__(self, chars: list[str], specials: Iterable[str] = ()):
        self.chars = list(chars)
        self.stoi = {ch: i for i, ch in enumerate(self.chars)}
        self.specials = {s: len(self.chars) + i for i, s in enumerate(specials)}
        self.itos = self.chars + list(self.specials)
        self._split = _special_splitter(self.specials)

    @classmethod
    def train(cls, text: str, specials: Iterable[str] = SPECIAL_TOKENS) -> "CharTokenizer":
        return cls(sorted(set(text)), specials)

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        parts = self._split.split(text) if self._split else [text]
        ids: list[int] = []
        for i, part in enumerate(parts):
            if i % 2:  # the splitter's capture group: a special token
                ids.append(self.specials[part])
                continue
            try:
                ids.extend(self.stoi[ch] for ch in part)
            except KeyError as e:
                raise TokenizerCoverageError(
                    f"character {e.args[0]!r} is not in this char tokenizer's vocabulary "
                    f"({len(self.chars)} characters from its training text)") from None
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.itos[int(i)] for i in ids)

    def to_json(self) -> dict:
        return {"type": self.kind, "chars": self.chars, "specials": list(self.specials)}

    def add_specials(self, tokens: Iterable[str]) -> "CharTokenizer":
        new = [t for t in tokens if t not in self.specials]
        return CharTokenizer(self.chars, [*self.specials, *new])


class SentencePieceTokenizer:
    """A sentencepiece model (BPE or unigram) with byte fallback; specials are user-defined."""

    kind = "sentencepiece"

    def __init__(self, model_proto: bytes):
        import sentencepiece as spm
        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        self.specials = {}
        for i in range(self.sp.get_piece_size()):
            if self.sp.is_control(i) or self.sp.is_unknown(i) or self.sp.is_byte(i):
                continue
            piece = self.sp.id_to_piece(i)
            if piece in SPECIAL_TOKENS:
                self.specials[piece] = i

    @classmethod
    def train(cls, texts: Iterator[str], vocab_size: int, *, model_type: str = "bpe",
              character_coverage: float = 0.9995, user_defined_symbols: Iterable[str] = (),
              max_sentence_length: int = 1 << 16, num_threads: int = 2,
              seed_sentencepiece_size: int = 1_000_000, input_sentence_size: int = 0
              ) -> "SentencePieceTokenizer":
        """Train on an iterator of text lines; specials = SPECIAL_TOKENS + user_defined_symbols.

        Normalisation is the identity and whitespace is kept as written, so that
        decode(encode(text)) == text (cleaning is the prepare stage's job, not the tokenizer's).
        """
        import io

        import sentencepiece as spm
        symbols = list(dict.fromkeys([*SPECIAL_TOKENS, *user_defined_symbols]))
        out = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(texts), model_writer=out, vocab_size=vocab_size,
                model_type=model_type, character_coverage=character_coverage,
                byte_fallback=True, user_defined_symbols=symbols,
                normalization_rule_name="identity", remove_extra_whitespaces=False,
                add_dummy_prefix=False, split_digits=True, allow_whitespace_only_pieces=True,
                max_sentence_length=max_sentence_length, num_threads=num_threads,
                seed_sentencepiece_size=seed_sentencepiece_size,
                input_sentence_size=input_sentence_size, shuffle_input_sentence=False,
                unk_id=0, bos_id=-1, eos_id=-1, pad_id=-1, minloglevel=2)
        except RuntimeError as e:
            msg = str(e).strip()
            need = re.search(r"smaller than required_chars\. \d+ vs (\d+)", msg)
            if need:  # more distinct characters (at this coverage) than the vocabulary holds
                raise GptjaxError(
                    f"a vocabulary of {vocab_size} tokens cannot hold the {need.group(1)} "
                    f"characters and special pieces that character_coverage={character_coverage} "
                    "keeps; raise the tokenizer vocabulary size above that or lower "
                    "character_coverage (rarer characters then use byte fallback)") from None
            if "Vocabulary size is too high" in msg or "vocab_size" in msg:
                raise GptjaxError(
                    f"sentencepiece cannot build {vocab_size} tokens from this corpus ({msg}); "
                    "lower the tokenizer vocabulary size or give it more text") from None
            raise GptjaxError(f"sentencepiece training failed: {msg}") from None
        return cls(out.getvalue())

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        if _SP_SPACE not in text:
            return self.sp.encode(text)
        return self._encode_literal_space(text)

    def _encode_literal_space(self, text: str) -> list[int]:
        byte_ids = [self.sp.piece_to_id(f"<0x{b:02X}>") for b in _SP_SPACE.encode("utf-8")]
        ids: list[int] = []
        for i, part in enumerate(text.split(_SP_SPACE)):
            if i:
                ids.extend(byte_ids)
            if part:
                ids.extend(self.sp.encode(part))
        return ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        out = self.sp.encode(texts, num_threads=os.cpu_count() or 1)
        for i, text in enumerate(texts):
            if _SP_SPACE in text:
                out[i] = self._encode_literal_space(text)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def to_json(self) -> dict:
        return {"type": self.kind, "model_proto": base64.b64encode(self.model_proto).decode()}

    def add_specials(self, tokens: Iterable[str]) -> "SentencePieceTokenizer":
        """Append user-defined pieces at the end of the vocabulary (existing ids keep theirs)."""
        from sentencepiece import sentencepiece_model_pb2 as pb
        proto = pb.ModelProto()
        proto.ParseFromString(self.model_proto)
        have = {p.piece for p in proto.pieces}
        for t in tokens:
            if t not in have:
                proto.pieces.add(piece=t, score=0.0, type=pb.ModelProto.SentencePiece.USER_DEFINED)
        return SentencePieceTokenizer(proto.SerializeToString())


def with_special_tokens(tok: Tokenizer) -> Tokenizer:
    """The tokenizer with every SPECIAL_TOKENS entry, appended at the end where missing."""
    if all(t in tok.specials for t in SPECIAL_TOKENS):
        return tok
    return tok.add_specials(SPECIAL_TOKENS)


def save_tokenizer(tok: Tokenizer, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"  # several processes may write the same file at once
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(tok.to_json(), f, ensure_ascii=False)
    os.replace(tmp, path)


def tokenizer_from_json(spec: dict, where: str = "tokenizer spec") -> Tokenizer:
    kind = spec.get("type")
    if kind == "char":
        return CharTokenizer(spec["chars"], spec.get("specials", ()))
    if kind == "sentencepiece":
        return SentencePieceTokenizer(base64.b64decode(spec["model_proto"]))
    if kind == "hf":  # a Hugging Face tokenizer (GPT-2's), from `convert --from-hf`
        from gptjax.data.hf_tokenizer import HFTokenizer
        return HFTokenizer(spec["tokenizer"])
    raise GptjaxError(f"{where} has unknown tokenizer type {kind!r}")


def load_tokenizer(path: str) -> Tokenizer:
    if not os.path.exists(path):
        raise GptjaxError(f"no tokenizer at {path}: is this a gptjax workdir?")
    try:
        with open(path, encoding="utf-8") as f:
            spec = json.load(f)
    except (ValueError, UnicodeDecodeError) as e:
        raise GptjaxError(f"tokenizer file {path} is not valid JSON ({e}); it is damaged: "
                          "copy it back from the run's data directory") from None
    return tokenizer_from_json(spec, f"tokenizer file {path}")
