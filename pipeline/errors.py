"""Errors for bad user input.

The pipeline must never stop because one video or one manifest line is bad: each stage turns
such an input into an :class:`InputError`, the job step records ``as_row()`` in the error table
and goes on with the next input. ``reason`` is a short, stable phrase (it is grouped and counted
in reports), ``detail`` carries whatever the underlying library said and is only for humans.
"""

from __future__ import annotations

STAGES = ("manifest", "probe", "plan", "decode", "text")


class InputError(Exception):
    """One bad input: which one (``input``, optionally ``id``), where (``stage``), why (``reason``)."""

    def __init__(self, input: str, stage: str, reason: str, *, id: str | None = None, detail: str = ""):
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; expected one of {STAGES}")
        self.input = str(input)
        self.stage = stage
        self.reason = reason
        self.id = id
        self.detail = detail
        super().__init__(self._message())

    def _message(self) -> str:
        who = f"{self.input} (id {self.id})" if self.id is not None else self.input
        tail = f" [{self.detail}]" if self.detail else ""
        return f"{who}: {self.stage}: {self.reason}{tail}"

    def __str__(self) -> str:  # reflects a later ``err.id = ...`` set by the caller
        return self._message()

    def __reduce__(self):
        # Exceptions pickle through ``self.args``; ours take keyword arguments, so spell them out
        # (errors cross process boundaries in Ray workers).
        return (_rebuild, (type(self), self.input, self.reason, self.stage, self.id, self.detail))

    def as_row(self) -> dict:
        """The row of the error table."""
        return {"id": self.id, "input": self.input, "stage": self.stage, "reason": self.reason}


def _rebuild(cls, input, reason, stage, id, detail):
    err = cls.__new__(cls)
    InputError.__init__(err, input, stage, reason, id=id, detail=detail)
    return err


class _StageError(InputError):
    """An InputError whose stage is fixed by the subclass."""

    STAGE = ""

    def __init__(self, input: str, reason: str, *, id: str | None = None, detail: str = ""):
        super().__init__(input, self.STAGE, reason, id=id, detail=detail)


class ManifestError(_StageError):
    """A manifest line or a sidecar file that does not describe a usable sample."""

    STAGE = "manifest"


class ProbeError(_StageError):
    """A video file that cannot be opened or fails the sanity limits."""

    STAGE = "probe"


class PlanError(_StageError):
    """A video that cannot be fitted into the token budget (overflow="refuse")."""

    STAGE = "plan"


class DecodeError(_StageError):
    """A video that probed fine but failed while its frames were decoded."""

    STAGE = "decode"


class TextError(_StageError):
    """A tokenizer file or a conversation that cannot be tokenized."""

    STAGE = "text"
