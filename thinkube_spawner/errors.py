"""Errors that a person sees on the spawn page, on JupyterHub 6 and 5.5 alike."""

from __future__ import annotations

from tornado import web

try:  # JupyterHub 6
    from jupyterhub.spawner import SpawnException
except ImportError:  # JupyterHub 5.5
    SpawnException = None


def spawn_error(message: str, reason: str, status_code: int = 400) -> web.HTTPError:
    """A rejection the hub shows as-is (and re-renders the form with, when it comes quickly)."""
    # Names from the catalog or the cluster may hold text that cannot be sent (a lone
    # surrogate): the page showing the message must not fail on it.
    message = message.encode("utf-8", "replace").decode("utf-8")
    if SpawnException is not None:
        error = SpawnException(message, reason=reason, status_code=status_code)
    else:
        error = web.HTTPError(status_code, message)
    # What the hub shows the person: JupyterHub 5 would show a generic text, and 6 the
    # exception's str(), "409 SpawnException(reason=capacity): ...", without it.
    error.jupyterhub_message = message
    return error


def service_unavailable_error(err: Exception) -> web.HTTPError:
    """The availability service could not be asked at start: nothing was started."""
    return spawn_error(
        f"{err} Nothing was started; try again in a moment.",
        reason="availability",
        status_code=503,
    )


def choice_error(err: Exception) -> web.HTTPError:
    """A refused choice (menu.ChoiceError): 409 when it is valid but does not fit now."""
    capacity = bool(getattr(err, "capacity", False))
    return spawn_error(
        str(err),
        reason="capacity" if capacity else "invalid-choice",
        status_code=409 if capacity else 400,
    )


def waiting_redirect(message: str, location: str) -> web.HTTPError:
    """A start that joined the GPU queue instead: the hub re-renders its form with this
    message and answers 303 to `location` (the request's page), which a browser follows."""
    error = spawn_error(message, reason="waiting", status_code=303)
    # JupyterHub sets the headers an exception carries on the answer (its form page and
    # its REST API alike).
    error.headers = {"Location": location}
    return error
