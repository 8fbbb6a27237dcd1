"""The error a job submission's checks raise (spec, placement): what is wrong, and which
field of the submission it is about."""

from __future__ import annotations

__all__ = ["JobError"]


class JobError(ValueError):
    """A submission that cannot be queued; `field` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
