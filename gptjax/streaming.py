"""Print one row of a decoding batch as its tokens arrive (`sampling.generate(stream=...)`)."""

from __future__ import annotations

import sys
from typing import Any, TextIO


class TokenPrinter:
    """A `stream` callback that writes row `row`'s text as the decoder draws it.

    Each step decodes the row's tokens so far and writes what is new, so pieces that only make
    sense together (a character split over byte-fallback tokens) appear once complete. The row
    stops printing at its first `stop_id`; `finish(tokens)` then writes whatever the stream did
    not show (nothing, normally) so the printed text always equals decode(tokens).
    """

    def __init__(self, tokenizer: Any, stop_id: int | None = None, row: int = 0,
                 out: TextIO = sys.stdout):
        self.tokenizer, self.stop_id, self.row, self.out = tokenizer, stop_id, row, out
        self.ids: list[int] = []
        self.shown = ""
        self.stopped = False

    def __call__(self, step: Any, tokens: Any) -> None:
        if self.stopped:
            return
        tok = int(tokens[self.row])
        if tok == self.stop_id:
            self.stopped = True
            return
        self.ids.append(tok)
        self._show(self.tokenizer.decode(self.ids))

    def _show(self, text: str) -> None:
        # An incomplete UTF-8 sequence decodes to U+FFFD until its last byte arrives; text that
        # rewrites what was shown (it should not) is left for finish().
        if text.startswith(self.shown) and not text.endswith("\ufffd"):
            self.out.write(text[len(self.shown):])
            self.out.flush()
            self.shown = text

    def finish(self, ids: list[int]) -> None:
        """Write the rest of the final text decode(ids) and end the line."""
        text = self.tokenizer.decode(ids)
        if text.startswith(self.shown):
            self.out.write(text[len(self.shown):])
        else:  # cannot happen with gptjax's tokenizers; never leave a wrong text behind
            self.out.write("\n" + text)
        self.out.write("\n")
        self.out.flush()
