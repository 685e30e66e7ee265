"""The exception types for problems the user can fix: entry points print the message (one line)
and exit with code 2."""


class GptjaxError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class TrainingDiverged(GptjaxError):
    """The loss (or the parameters) became NaN/inf; the newest checkpoint is kept."""


class CorruptCheckpoint(GptjaxError):
    """A saved checkpoint fails its digest or cannot be read; nothing was changed on disk."""

    def __init__(self, message: str, step: int | None = None, reason: str = ""):
        super().__init__(message)
        self.step = step
        self.reason = reason  # e.g. "state/d/ab12 changed since the save"


class CheckpointWriteError(GptjaxError):
    """A checkpoint could not be written (no space, permissions, I/O); earlier ones are intact."""


class TokenizerCoverageError(GptjaxError):
    """Text holds a character the (char) tokenizer has no id for; data readers skip and count
    such records instead of stopping."""
