"""A reply's text as its tokens arrive: safe-to-send deltas and OpenAI `stop` strings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class TextStream:
    """Decode a growing list of token ids into text deltas, ending at the first stop string.

    push(token) returns the text that may be sent now. Text is held back while it ends in an
    incomplete UTF-8 sequence (decoded as U+FFFD until its last byte arrives) or in a prefix of
    a stop string (it may yet become the stop string, which is never sent). Once a stop string
    appears the text is cut before it and `stopped` is set. finish() returns what was held back
    at the end; `text` is then the whole reply (the deltas joined).
    """

    def __init__(self, tokenizer: Any, stop: Sequence[str] = ()):
        self.tokenizer = tokenizer
        self.stop = [s for s in stop if s]
        self.ids: list[int] = []
        self.text = ""  # the reply so far (up to any stop string)
        self.sent = 0  # characters of self.text already returned
        self.stopped = False

    def push(self, token: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(int(token))
        text = self.tokenizer.decode(self.ids)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.text, self.stopped = text[:cut], True
            return self._take(len(self.text))
        self.text = text
        if text.endswith("\ufffd"):
            return ""
        hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])),
                   default=0)
        return self._take(len(text) - hold)

    def finish(self) -> str:
        """The rest of the reply once no token follows."""
        return self._take(len(self.text))

    def _take(self, upto: int) -> str:
        out = self.text[self.sent:upto] if upto > self.sent else ""
        self.sent = max(self.sent, upto)
        return out
