"""A stand-in for RunPod's GraphQL API and REST API v2 (pods, pod logs as Server-Sent
Events), for thinkube-hub's tests (see fake.py and rest.py).

    async with RunPodFake() as fake:
        client = RunPodClient(fake.api_key, api_url=fake.url,
                              proxy_url_template=fake.proxy_url_template)
        # REST v2 at fake.rest_url (http://127.0.0.1:PORT/v2, as https://api.runpod.io/v2)

or standalone: `python -m tests.runpod_fake --port 8765`.
"""

from .catalog import DEFAULT_GPU_TYPES, GpuTypeSpec
from .fake import (
    CAPACITY_MESSAGE,
    GENERIC_MESSAGE,
    PROXY_URL_TEMPLATE,
    SCHEMA_PATH,
    FakePod,
    Fault,
    RecordedRequest,
    RunPodFake,
    load_schema,
)

__all__ = [
    "CAPACITY_MESSAGE",
    "DEFAULT_GPU_TYPES",
    "GENERIC_MESSAGE",
    "PROXY_URL_TEMPLATE",
    "SCHEMA_PATH",
    "FakePod",
    "Fault",
    "GpuTypeSpec",
    "RecordedRequest",
    "RunPodFake",
    "load_schema",
]
