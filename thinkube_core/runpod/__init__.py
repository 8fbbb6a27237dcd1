"""RunPod: an async GraphQL client, offers, and the models they share.

The spawner and the `thinkube cloud` CLI compose these; nothing here exits the process.
"""

from .client import PodWaitTimeout, RunPodClient
from .credentials import (
    DEFAULT_API_URL,
    DEFAULT_REST_URL,
    Secret,
    resolve_api_key,
    resolve_api_url,
    resolve_rest_url,
)
from .errors import (
    AuthError,
    CapacityError,
    ConfigurationError,
    InvalidRequestError,
    LogStreamCut,
    NotFoundError,
    RunPodError,
    UnavailableError,
)
from .models import (
    CREATE_ID_ENV,
    DEFAULT_PROXY_URL_TEMPLATE,
    Pod,
    PodLogEvent,
    PodRequest,
    PortMapping,
    meta_env,
    meta_env_key,
    parse_meta,
)
from .offers import Offer, filter_offers, offers_from_gpu_types, select_offers, sort_offers

__all__ = [
    "CREATE_ID_ENV",
    "DEFAULT_API_URL",
    "DEFAULT_PROXY_URL_TEMPLATE",
    "DEFAULT_REST_URL",
    "AuthError",
    "CapacityError",
    "ConfigurationError",
    "InvalidRequestError",
    "LogStreamCut",
    "NotFoundError",
    "Offer",
    "Pod",
    "PodLogEvent",
    "PodRequest",
    "PodWaitTimeout",
    "PortMapping",
    "RunPodClient",
    "RunPodError",
    "Secret",
    "UnavailableError",
    "filter_offers",
    "meta_env",
    "meta_env_key",
    "offers_from_gpu_types",
    "parse_meta",
    "resolve_api_key",
    "resolve_api_url",
    "resolve_rest_url",
    "select_offers",
    "sort_offers",
]
