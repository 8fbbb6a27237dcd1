"""Typed errors of the RunPod client.

Every message is redacted before it is stored: the API key (and any other secret the
client knows about) never reaches an exception's text, args or repr.
"""

from __future__ import annotations


class RunPodError(Exception):
    """Any failure talking to RunPod. The generic case ("Something went wrong...")."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code  # the GraphQL `extensions.code`, when RunPod sent one
        self.status = status  # the HTTP status
        self.field = field  # the root field (query or mutation) that failed

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        parts = [repr(self.message)]
        if self.code:
            parts.append(f"code={self.code!r}")
        if self.status:
            parts.append(f"status={self.status}")
        if self.field:
            parts.append(f"field={self.field!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


class CapacityError(RunPodError):
    """No machine with the requested GPU is free (`SUPPLY_CONSTRAINT`): try another offer."""


class InvalidRequestError(RunPodError):
    """RunPod rejected the request itself (HTTP 400, `GRAPHQL_VALIDATION_FAILED`,
    `BAD_USER_INPUT`). Retrying the same request cannot help."""


class AuthError(RunPodError):
    """The API key is missing, wrong (HTTP 401/403) or lacks the right for this call."""


class NotFoundError(RunPodError):
    """The pod (or other object) does not exist."""


class UnavailableError(RunPodError):
    """RunPod did not answer usefully (5xx, 429, network errors, timeouts) even after the
    client's retries."""


class LogStreamCut(UnavailableError):
    """A pod's log stream stopped before its end: the connection dropped, or nothing came
    for longer than the client waits. Resume it after the last event received."""


class ConfigurationError(RunPodError):
    """The client is not configured (no API key found, bad endpoint)."""


__all__ = [
    "AuthError",
    "CapacityError",
    "ConfigurationError",
    "InvalidRequestError",
    "LogStreamCut",
    "NotFoundError",
    "RunPodError",
    "UnavailableError",
]
