"""The one exception type for bad input: entry points print its message and exit non-zero."""


class GptjaxError(Exception):
    """A problem the user can fix; the message names the problem and the fix."""


class TrainingDiverged(GptjaxError):
    """The loss (or the parameters) became NaN/inf; the last good checkpoint is kept."""


class TokenizerCoverageError(GptjaxError):
    """Text holds a character the (char) tokenizer has no id for; data readers skip and count
    such records instead of stopping."""
