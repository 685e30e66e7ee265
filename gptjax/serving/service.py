"""What the routes ask of a model: prompts from messages, and replies from the engine as events.

A chat model (a workdir past pretraining whose tokenizer has the chat tokens, as
`python -m gptjax.chat` decides) gets the messages rendered with the chat template
(`gptjax.data.chat.render_prompt`) and replies until its end-of-turn token. A pretrained
model continues the conversation as plain text (each system / user message and a newline,
each assistant message as it was) and stops at <|endoftext|>, as `chat` and `sample` do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import AsyncIterator, Sequence
from typing import Any

from gptjax.data.chat import has_chat_tokens, render_prompt
from gptjax.data.tokenizer import END_OF_TURN, EOS
from gptjax.errors import GptjaxError
from gptjax.serving.engine import Engine, Request
from gptjax.serving.protocol import ApiError
from gptjax.serving.text import TextStream


@dataclasses.dataclass(frozen=True)
class Defaults:
    """Sampling used when a request leaves a field out (the server's flags)."""

    temperature: float = 0.8
    top_p: float = 1.0
    max_tokens: int = 256


@dataclasses.dataclass
class Event:
    index: int  # the choice
    text: str  # new text (may be empty)
    finish: str | None = None  # 'stop' | 'length' | 'cancelled' | 'shutdown' | 'error: ...'


class Service:
    """A loaded model, its engine and the rules that turn requests into engine requests."""

    def __init__(self, model: Any, engine: Engine, name: str, chat_template: bool,
                 defaults: Defaults = Defaults()):
        self.model, self.engine, self.name, self.defaults = model, engine, name, defaults
        tok = model.tokenizer
        self.chat_template = chat_template and has_chat_tokens(tok)
        self.context = model.cfg.block_size

    @staticmethod
    def stop_ids(tokenizer: Any, chat_template: bool) -> frozenset[int]:
        """The token that ends a reply: <|end|> for chat models, <|endoftext|> otherwise."""
        if chat_template and has_chat_tokens(tokenizer):
            return frozenset([tokenizer.specials[END_OF_TURN]])
        return frozenset([tokenizer.specials[EOS]]) if EOS in tokenizer.specials else frozenset()

    def check_model(self, requested: str | None) -> None:
        if requested is not None and requested != self.name:
            raise ApiError(400, f"model {requested!r} is not served here; this server serves "
                           f"{self.name!r} (see GET /v1/models)", "model", "model_not_found")

    def chat_prompt(self, messages: Sequence[dict[str, str]]) -> list[int]:
        tok = self.model.tokenizer
        turns = [{"role": "system" if m["role"] == "developer" else m["role"],
                  "content": m["content"]} for m in messages]
        try:
            if self.chat_template:
                return render_prompt(turns, tok)
            roles = {"system", "user", "assistant"}
            for i, t in enumerate(turns):
                if t["role"] not in roles:
                    raise GptjaxError(f"turn {i} has role {t['role']!r}; roles are "
                                      f"{sorted(roles)}")
            text = "".join(t["content"] + ("" if t["role"] == "assistant" else "\n")
                           for t in turns)
            return tok.encode(text)
        except GptjaxError as e:
            raise ApiError(400, f"messages: {e}", "messages") from None

    def text_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, list):
            bad = [t for t in prompt if not 0 <= t < self.model.cfg.vocab_size]
            if bad:
                raise ApiError(400, f"prompt: token ids {bad[:3]} are outside the vocabulary "
                               f"[0, {self.model.cfg.vocab_size})", "prompt")
            return list(prompt)
        if not prompt:
            raise ApiError(400, "prompt: is empty; give some text to continue", "prompt")
        try:
            return self.model.tokenizer.encode(prompt)
        except GptjaxError as e:
            raise ApiError(400, f"prompt: {e}", "prompt") from None

    def reply_length(self, prompt: list[int], asked: int | None, prompt_param: str) -> int:
        """max_tokens of a reply: as asked, or the server's default cut to the room left."""
        room = self.context - len(prompt)
        if room < 1 or (asked is not None and asked > room):
            want = 1 if asked is None else asked
            param = prompt_param if room < 1 or asked is None else "max_tokens"
            raise ApiError(400, f"this model's context is {self.context} tokens, but the "
                           f"request needs {len(prompt) + want} ({len(prompt)} in the "
                           f"{prompt_param}, {want} to generate); shorten the {prompt_param} "
                           "or lower max_tokens", param, "context_length_exceeded")
        return min(self.defaults.max_tokens, room) if asked is None else asked

    def generate(self, prompt: list[int], max_tokens: int, temperature: float | None,
                 top_p: float | None, n: int, seed: int | None,
                 stop: Sequence[str]) -> "Generation":
        d = self.defaults
        seed = secrets.randbits(62) if seed is None else seed
        gen = Generation(self.engine, self.model.tokenizer, n, stop, len(prompt))
        for i in range(n):
            req = Request(prompt, max_tokens, d.temperature if temperature is None
                          else temperature, d.top_p if top_p is None else top_p, seed,
                          on_token=lambda tok, i=i: gen.on_token(i, tok),
                          on_done=lambda reason, i=i: gen.on_done(i, reason),
                          choice=i, choices=n, on_flush=lambda i=i: gen.on_flush(i))
            gen.requests.append(req)
        try:
            for req in gen.requests:
                self.engine.submit(req)
        except RuntimeError as e:
            gen.cancel()
            raise ApiError(503, f"the server cannot take requests: {e}", None,
                           "unavailable", "server_error") from None
        return gen


class Generation:
    """The n choices of one request: engine-thread callbacks in, asyncio events out."""

    def __init__(self, engine: Engine, tokenizer: Any, n: int, stop: Sequence[str],
                 prompt_tokens: int):
        self.engine = engine
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.streams = [TextStream(tokenizer, stop) for _ in range(n)]
        self.pending = [""] * n  # text not yet handed to the event loop, per choice
        self.requests: list[Request] = []
        self.prompt_tokens = prompt_tokens

    # engine thread: text gathers per device call and crosses to the event loop once
    def on_token(self, i: int, tok: int) -> bool:
        self.pending[i] += self.streams[i].push(tok)
        return self.streams[i].stopped

    def on_flush(self, i: int) -> None:
        if self.pending[i]:
            text, self.pending[i] = self.pending[i], ""
            self._put(Event(i, text))

    def on_done(self, i: int, reason: str) -> None:
        text = self.pending[i] + (self.streams[i].finish() if reason in ("stop", "length")
                                  else "")
        self.pending[i] = ""
        self._put(Event(i, text, reason))

    def _put(self, ev: Event) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, ev)
        except RuntimeError:  # the event loop has closed (server shutdown): nobody listens
            pass

    # asyncio side
    async def events(self) -> AsyncIterator[Event]:
        """Every choice's events in arrival order, until each has finished."""
        left = len(self.requests)
        while left:
            ev = await self.queue.get()
            left -= ev.finish is not None
            yield ev

    def cancel(self) -> None:
        for req in self.requests:
            self.engine.cancel(req)

    def completion_tokens(self) -> int:
        return sum(r.generated for r in self.requests)
