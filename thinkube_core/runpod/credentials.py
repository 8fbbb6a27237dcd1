"""Where the RunPod API key and endpoint come from, and how the key stays secret.

The key is looked up, in order: the explicit value, an explicit key file,
`RUNPOD_API_KEY`, the file named by `RUNPOD_API_KEY_FILE`, then the `api_key` of the `[default]` profile
in `~/.runpod/config.toml` (the file `runpodctl config` and RunPod's SDK write). It is held
in a `Secret`, whose str/repr/format never show it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from .errors import ConfigurationError

DEFAULT_API_URL = "https://api.runpod.io/graphql"
# RunPod's REST API v2 (pods and their logs as Server-Sent Events).
DEFAULT_REST_URL = "https://api.runpod.io/v2"
RUNPOD_CONFIG = Path("~/.runpod/config.toml")
REDACTED = "***"


class Secret:
    """A string that does not print. `reveal()` is the only way to read it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret({REDACTED!r})"

    def __str__(self) -> str:
        return REDACTED

    def __format__(self, spec: str) -> str:
        return REDACTED

    def __bool__(self) -> bool:
        return bool(self._value)

    def __reduce__(self):  # no pickling a key into a state file by accident
        raise TypeError("a Secret cannot be pickled")


def _read_key_file(path: Path) -> str | None:
    try:
        text = path.expanduser().read_text()
    except FileNotFoundError:
        raise ConfigurationError(f"the RunPod API key file {path} does not exist") from None
    except OSError as err:
        raise ConfigurationError(
            f"the RunPod API key file {path} cannot be read: {err.strerror}"
        ) from None
    value = text.strip()
    return value or None


def _key_from_file(path: Path) -> Secret:
    value = _read_key_file(path)
    if not value:
        raise ConfigurationError(f"the RunPod API key file {path} is empty")
    return Secret(value)


def _read_runpod_config(path: Path) -> str | None:
    path = path.expanduser()
    if not path.is_file():
        return None
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    value = (data.get("default") or {}).get("api_key") or data.get("apikey")
    return value.strip() if isinstance(value, str) and value.strip() else None


def resolve_api_key(
    api_key: str | Secret | None = None,
    *,
    key_file: str | os.PathLike | None = None,
    environ: Mapping[str, str] | None = None,
    runpod_config: str | os.PathLike | None = RUNPOD_CONFIG,
) -> Secret:
    """The API key from the first place that has one; ConfigurationError if none does."""
    environ = os.environ if environ is None else environ
    if isinstance(api_key, Secret):
        if api_key:
            return api_key
    elif api_key and api_key.strip():
        return Secret(api_key.strip())
    if key_file:
        return _key_from_file(Path(key_file))
    if environ.get("RUNPOD_API_KEY", "").strip():
        return Secret(environ["RUNPOD_API_KEY"].strip())
    if environ.get("RUNPOD_API_KEY_FILE"):
        return _key_from_file(Path(environ["RUNPOD_API_KEY_FILE"]))
    if runpod_config is not None:
        value = _read_runpod_config(Path(runpod_config))
        if value:
            return Secret(value)
    raise ConfigurationError(
        "no RunPod API key: set RUNPOD_API_KEY, or RUNPOD_API_KEY_FILE to a file holding it"
    )


def resolve_api_url(api_url: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    environ = os.environ if environ is None else environ
    url = (api_url or environ.get("RUNPOD_API_URL") or DEFAULT_API_URL).strip()
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigurationError("the RunPod API URL must be an http(s) URL")
    if any(name.lower() == "api_key" for name, _ in parse_qsl(parts.query)):
        # A key in the URL would end up in every log line that names the URL.
        raise ConfigurationError(
            "the RunPod API URL must not carry the API key; set RUNPOD_API_KEY instead"
        )
    return url


def resolve_rest_url(rest_url: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """REST v2's base URL: `rest_url`, else RUNPOD_REST_URL, else https://api.runpod.io/v2."""
    environ = os.environ if environ is None else environ
    url = (rest_url or environ.get("RUNPOD_REST_URL") or DEFAULT_REST_URL).strip().rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query:
        raise ConfigurationError("the RunPod REST URL must be an http(s) URL without a query")
    return url


__all__ = [
    "DEFAULT_API_URL",
    "DEFAULT_REST_URL",
    "REDACTED",
    "Secret",
    "resolve_api_key",
    "resolve_api_url",
    "resolve_rest_url",
]
