"""Errors the model layer raises; the transport maps them to status codes."""

# How an input too long for the model ends its message; the CLI says it with its own flag.
TRUNCATE_HINT = "send truncate='left' or 'right' to cut it"


class InputError(ValueError):
    """A request item the model cannot score. `field` names the offending part of the
    item (e.g. `input_ids`, `steps[2]`) so the caller can be told exactly what to fix."""

    def __init__(self, field: str | None, message: str, code: str = "invalid_input"):
        super().__init__(message)
        self.field = field
        self.message = message
        self.code = code


class ModelLoadError(RuntimeError):
    """A model directory that cannot be served as configured."""
