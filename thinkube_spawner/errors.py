"""Errors that a person sees on the spawn page, on JupyterHub 6 and 5.5 alike."""

from __future__ import annotations

from tornado import web

try:  # JupyterHub 6
    from jupyterhub.spawner import SpawnException
except ImportError:  # JupyterHub 5.5
    SpawnException = None


def spawn_error(message: str, reason: str, status_code: int = 400) -> web.HTTPError:
    """A rejection the hub shows as-is (and re-renders the form with, when it comes quickly)."""
    if SpawnException is not None:
        return SpawnException(message, reason=reason, status_code=status_code)
    error = web.HTTPError(status_code, message)
    error.jupyterhub_message = message  # what JupyterHub 5 shows instead of a generic text
    return error
