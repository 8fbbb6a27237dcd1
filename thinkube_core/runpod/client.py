"""A small async client for RunPod's GraphQL API (httpx).

    async with RunPodClient() as runpod:          # key from RUNPOD_API_KEY, ...
        offers = await runpod.offers(min_vram_gb=24, max_price_per_hour=1.0)
        pod = await runpod.create_pod(PodRequest(name=..., image_name=..., gpu_type_id=...))
        pod = await runpod.wait_for_pod(pod.id, port=8888, timeout_s=600)
        async for event in runpod.pod_log_events(pod.id, source="container"):
            print(event.line)                        # REST v2, Server-Sent Events
        await runpod.terminate_pod(pod.id)           # idempotent

Requests carry `Authorization: Bearer <key>` and GraphQL variables (values are never put
into query text). Transient failures (HTTP 5xx and 429, network errors, timeouts) are
retried with exponential backoff and jitter; RunPod's answers about the request itself
(validation, auth, capacity, not found) are not. Errors are typed (see `errors`), and their
messages are redacted: the API key, and the env values of a pod being created, never
appear in an exception, a log line or a repr.

Creating a pod is not idempotent, so the client marks each create request with a unique
env entry (`THINKUBE_CREATE_ID`). When an answer is lost (a 5xx or a timeout after the
request went out), it looks for a pod with that mark before trying again, and returns it
instead of renting a second one.

Hub code composes this client; it never exits the process and holds no global state.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import os
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import httpx

from . import queries
from .credentials import REDACTED, Secret, resolve_api_key, resolve_api_url, resolve_rest_url
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
    ENDED_STATUSES,
    Pod,
    PodLogEvent,
    PodRequest,
)
from .offers import Offer, select_offers

log = logging.getLogger("thinkube.runpod")

CAPACITY_CODES = {"SUPPLY_CONSTRAINT"}
INVALID_CODES = {"GRAPHQL_VALIDATION_FAILED", "GRAPHQL_PARSE_FAILED", "BAD_USER_INPUT"}
AUTH_CODES = {"UNAUTHENTICATED", "FORBIDDEN", "UNAUTHORIZED"}
CAPACITY_MESSAGES = re.compile(
    r"no longer any instances available|no instances (?:are )?(?:currently )?available"
    r"|does not have the resources to deploy",
    re.IGNORECASE,
)
AUTH_MESSAGES = re.compile(r"unauthori[sz]ed|forbidden|invalid api key|permission denied", re.I)
NOT_FOUND_MESSAGES = re.compile(r"not found|does not exist|no such pod", re.IGNORECASE)
USER_AGENT = "thinkube-hub-runpod/0.1"


class PodWaitTimeout(RunPodError, TimeoutError):
    """A pod, or a server in it, was not ready within the time allowed."""


class _Transient(Exception):
    """One failed attempt that may succeed when repeated."""

    def __init__(self, reason: str, *, maybe_processed: bool, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.maybe_processed = maybe_processed
        self.retry_after = retry_after


class RunPodClient:
    """Talks to RunPod's GraphQL endpoint. See the module docstring.

    api_key: the key (str or Secret); else `key_file`, `RUNPOD_API_KEY`,
    `RUNPOD_API_KEY_FILE`, `~/.runpod/config.toml` (see credentials.resolve_api_key).
    api_url: else `RUNPOD_API_URL`, else https://api.runpod.io/graphql.
    rest_url: REST v2 (pod logs); else `RUNPOD_REST_URL`, else https://api.runpod.io/v2.
    proxy_url_template: how a pod port is reached over HTTP; else
    `RUNPOD_PROXY_URL_TEMPLATE`, else `https://{pod_id}-{port}.proxy.runpod.net`.
    """

    def __init__(
        self,
        api_key: str | Secret | None = None,
        *,
        api_url: str | None = None,
        rest_url: str | None = None,
        key_file: str | None = None,
        proxy_url_template: str | None = None,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        max_attempts: int = 4,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 8.0,
        retry_after_max_s: float = 30.0,
        poll_interval_s: float = 5.0,
        environ: Mapping[str, str] | None = None,
        runpod_config: str | None = "~/.runpod/config.toml",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        env = os.environ if environ is None else environ
        self._key = resolve_api_key(
            api_key, key_file=key_file, environ=env, runpod_config=runpod_config
        )
        self.api_url = resolve_api_url(api_url, env)
        self.rest_url = resolve_rest_url(rest_url, env)
        self.proxy_url_template = (
            proxy_url_template or env.get("RUNPOD_PROXY_URL_TEMPLATE") or DEFAULT_PROXY_URL_TEMPLATE
        )
        if max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_max_s = backoff_max_s
        self.retry_after_max_s = retry_after_max_s
        self.poll_interval_s = poll_interval_s
        self.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self._transport = transport
        self._http: httpx.AsyncClient | None = None
        self._random = random.Random()

    # -- plumbing ----------------------------------------------------------------

    def __repr__(self) -> str:
        return f"RunPodClient(api_url={self.api_url!r}, api_key={REDACTED!r})"

    async def __aenter__(self) -> RunPodClient:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=self.timeout,
                transport=self._transport,
                headers={"User-Agent": USER_AGENT},
                follow_redirects=False,
            )
        return self._http

    def redact(self, text: str, secrets: Iterable[str] = ()) -> str:
        """`text` with the API key and the given secrets replaced by ***."""
        values = {self._key.reveal(), *secrets}
        for value in sorted((v for v in values if v), key=len, reverse=True):
            text = text.replace(value, REDACTED)
        return text

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        ceiling = min(self.backoff_max_s, self.backoff_base_s * (2**attempt))
        delay = ceiling / 2 + self._random.uniform(0, ceiling / 2)  # "equal jitter"
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max_s))
        return delay

    async def _attempt(self, payload: dict[str, Any], field: str, secrets: list[str]) -> dict:
        headers = {
            "Authorization": f"Bearer {self._key.reveal()}",
            "Content-Type": "application/json",
            "Accept": "application/json",
        }
        try:
            response = await self._client().post(self.api_url, json=payload, headers=headers)
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as err:
            # The request never reached RunPod.
            raise _Transient(self._describe(err, secrets), maybe_processed=False) from None
        except httpx.TransportError as err:
            raise _Transient(self._describe(err, secrets), maybe_processed=True) from None
        status = response.status_code
        if status == 429:
            raise _Transient(
                "HTTP 429 (rate limited)",
                maybe_processed=False,
                retry_after=_retry_after(response.headers.get("Retry-After")),
            )
        if status >= 500:
            raise _Transient(f"HTTP {status}", maybe_processed=True)
        try:
            body = response.json()
        except ValueError:
            body = None
        errors = body.get("errors") if isinstance(body, dict) else None
        if status in (401, 403):
            message = _first_message(errors) or "Unauthorized"
            raise AuthError(
                self.redact(f"RunPod refused the API key (HTTP {status}): {message}", secrets),
                status=status,
                field=field,
            )
        if errors:
            raise self._classify(errors, status, field, secrets)
        if status >= 400:
            cls = InvalidRequestError if status in (400, 404, 405, 413, 415, 422) else RunPodError
            raise cls(f"RunPod answered HTTP {status} to {field}", status=status, field=field)
        if not isinstance(body, dict) or not isinstance(body.get("data"), dict):
            raise RunPodError(
                f"RunPod answered {field} with no data (HTTP {status})", status=status, field=field
            )
        return body["data"]

    def _describe(self, err: Exception, secrets: list[str]) -> str:
        text = str(err) or type(err).__name__
        return self.redact(f"{type(err).__name__}: {text}", secrets)

    def _classify(self, errors: list, status: int, field: str, secrets: list[str]) -> RunPodError:
        first = errors[0] if isinstance(errors[0], dict) else {"message": str(errors[0])}
        code = ((first.get("extensions") or {}).get("code") or None) if first else None
        messages = [
            str(e.get("message", "")) if isinstance(e, dict) else str(e) for e in errors[:3]
        ]
        message = self.redact("; ".join(m for m in messages if m) or "unknown error", secrets)
        path = first.get("path") or []
        where = str(path[0]) if path else field
        if code in CAPACITY_CODES or CAPACITY_MESSAGES.search(message):
            cls: type[RunPodError] = CapacityError
        elif code in INVALID_CODES or status == 400:
            cls = InvalidRequestError
        elif code in AUTH_CODES or AUTH_MESSAGES.search(message):
            cls = AuthError
        elif code == "NOT_FOUND" or NOT_FOUND_MESSAGES.search(message):
            cls = NotFoundError
        else:
            cls = RunPodError
        return cls(message, code=code, status=status, field=where)

    async def execute(
        self,
        query: str,
        variables: Mapping[str, Any] | None = None,
        *,
        field: str,
        secrets: Iterable[str] = (),
        max_attempts: int | None = None,
        on_ambiguous: Callable[[], Awaitable[dict | None]] | None = None,
    ) -> dict[str, Any]:
        """Send one GraphQL document; return its `data`. `field` names the root field (for
        messages). `secrets` are extra values to redact from errors. `on_ambiguous`, for
        requests that are not idempotent, is asked after a failure that may have been
        processed; data it returns is used instead of sending the request again."""
        operation = _operation_name(query)
        payload: dict[str, Any] = {"query": query, "variables": dict(variables or {})}
        if operation:
            payload["operationName"] = operation
        secret_list = list(secrets)
        attempts = max_attempts or self.max_attempts
        last: _Transient | None = None
        for attempt in range(attempts):
            if attempt and last is not None and last.maybe_processed and on_ambiguous:
                try:
                    found = await on_ambiguous()
                except RunPodError as err:
                    log.warning("RunPod %s: could not check for a lost answer: %s", field, err)
                    found = None
                if found is not None:
                    log.info("RunPod %s: the lost answer was found; not sending it again", field)
                    return found
            started = time.monotonic()
            try:
                data = await self._attempt(payload, field, secret_list)
            except _Transient as err:
                last = err
                if attempt + 1 >= attempts:
                    break
                delay = self._backoff(attempt, err.retry_after)
                log.warning(
                    "RunPod %s failed (%s); retry %d of %d in %.1fs",
                    field,
                    err.reason,
                    attempt + 1,
                    attempts - 1,
                    delay,
                )
                await asyncio.sleep(delay)
                continue
            except RunPodError as err:
                log.debug("RunPod %s: %s", field, err)
                raise
            log.debug("RunPod %s answered in %.2fs", field, time.monotonic() - started)
            return data
        if last is not None and last.maybe_processed and on_ambiguous:
            try:
                found = await on_ambiguous()
            except RunPodError:
                found = None
            if found is not None:
                return found
        reason = last.reason if last else "no answer"
        raise UnavailableError(
            f"RunPod did not answer {field} after {attempts} attempt(s): {reason}", field=field
        )

    # -- reading -----------------------------------------------------------------

    async def check(self) -> str:
        """Validate the key: the account id, or AuthError."""
        data = await self.execute(queries.MYSELF, field="myself")
        myself = data.get("myself")
        if not myself:
            raise AuthError("RunPod did not recognise the API key", field="myself")
        return str(myself.get("id") or "")

    async def gpu_types(
        self, gpu_count: int = 1, gpu_type_ids: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Raw `gpuTypes`, with `secureLowestPrice` / `communityLowestPrice` for gpu_count."""
        variables: dict[str, Any] = {"gpuCount": gpu_count}
        if gpu_type_ids:
            variables["filter"] = {"ids": list(gpu_type_ids)}
        data = await self.execute(queries.GPU_TYPES, variables, field="gpuTypes")
        return [g for g in data.get("gpuTypes") or [] if g]

    async def offers(
        self,
        *,
        gpu_count: int = 1,
        min_vram_gb: float | None = None,
        max_price_per_hour: float | None = None,
        gpu: str | None = None,
        cloud_type: str | None = None,
        spot: bool = False,
    ) -> list[Offer]:
        """Offers matching the filters, cheapest first (see offers.select_offers)."""
        gpu_types = await self.gpu_types(gpu_count)
        return select_offers(
            gpu_types,
            gpu_count=gpu_count,
            min_vram_gb=min_vram_gb,
            max_price_per_hour=max_price_per_hour,
            gpu=gpu,
            cloud_type=cloud_type,
            spot=spot,
        )

    async def get_pod(self, pod_id: str) -> Pod | None:
        """The pod, or None when RunPod has no such pod (any more)."""
        try:
            data = await self.execute(queries.POD, {"input": {"podId": pod_id}}, field="pod")
        except NotFoundError:
            return None
        raw = data.get("pod")
        return Pod.from_api(raw) if raw else None

    async def list_pods(
        self,
        *,
        name_prefix: str | None = None,
        meta: Mapping[str, str] | None = None,
        max_attempts: int | None = None,
    ) -> list[Pod]:
        """This account's pods (`myself.pods`), optionally only those whose name starts
        with `name_prefix` and whose metadata has every `meta` key=value."""
        data = await self.execute(queries.MY_PODS, field="myself", max_attempts=max_attempts)
        pods = [Pod.from_api(p) for p in ((data.get("myself") or {}).get("pods") or []) if p]
        if name_prefix:
            pods = [p for p in pods if p.name.startswith(name_prefix)]
        if meta:
            pods = [p for p in pods if p.matches(meta)]
        return pods

    async def pod_log_events(
        self,
        pod_id: str,
        *,
        source: str | None = None,
        tail: int | None = None,
        since: str | None = None,
        last_event_id: str | None = None,
        read_timeout_s: float = 60.0,
        duration_s: float | None = None,
    ) -> AsyncIterator[PodLogEvent]:
        """The pod's log from REST v2 (`GET {rest_url}/pods/{id}/logs`, Server-Sent Events):
        first what RunPod backfills (the lines after `last_event_id`; else those from
        `since`; else the last `tail`, RunPod's default 100), then lines as they come, until
        the stream ends (the pod stopped) or, with `duration_s`, until that long has passed
        (a poll: what is there now, then done). `source`: `container` or `system` (both
        when None).

        Not retried here: LogStreamCut when the connection drops mid-stream or nothing comes
        for `read_timeout_s` (resume with the last event's id); NotFoundError for a pod the
        account does not have (any more); AuthError; InvalidRequestError (HTTP 400);
        UnavailableError for 5xx, 429 and network errors."""
        params: dict[str, str] = {}
        if source is not None:
            params["source"] = source
        if tail is not None:
            params["tail"] = str(tail)
        if since is not None:
            params["since"] = since
        headers = {
            "Authorization": f"Bearer {self._key.reveal()}",
            "Accept": "text/event-stream",
        }
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        url = f"{self.rest_url}/pods/{pod_id}/logs"
        timeout = httpx.Timeout(self.timeout.connect, read=read_timeout_s)
        end = None if duration_s is None else time.monotonic() + duration_s
        try:
            async with self._client().stream(
                "GET", url, params=params, headers=headers, timeout=timeout
            ) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise self._rest_error(response, "getPodLogs")
                lines = response.aiter_lines()
                event_id: str | None = None
                data: list[str] = []
                while True:
                    try:
                        if end is None:
                            line = await anext(lines)
                        else:
                            remaining = end - time.monotonic()
                            if remaining <= 0:
                                return
                            async with asyncio.timeout(remaining):
                                line = await anext(lines)
                    except StopAsyncIteration:
                        return
                    except TimeoutError:
                        return  # a poll's time is up
                    if line == "":
                        if data:
                            event = _log_event(event_id, "\n".join(data))
                            if event is not None:
                                yield event
                        event_id, data = None, []
                    elif line.startswith(":"):
                        continue  # a keep-alive comment
                    elif line.startswith("id:"):
                        event_id = line[3:].removeprefix(" ")
                    elif line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as err:
            raise UnavailableError(self._describe(err, []), field="getPodLogs") from None
        except (httpx.ReadTimeout, httpx.ReadError, httpx.RemoteProtocolError) as err:
            raise LogStreamCut(
                f"the log stream of pod {pod_id} was cut ({type(err).__name__})",
                field="getPodLogs",
            ) from None
        except httpx.TransportError as err:
            raise UnavailableError(self._describe(err, []), field="getPodLogs") from None

    def _rest_error(self, response: httpx.Response, operation: str) -> RunPodError:
        """A REST v2 error answer (problem+json, or an edge's HTML page) as a typed error."""
        status = response.status_code
        detail = ""
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            detail = str(body.get("detail") or body.get("title") or "")
        message = self.redact(
            f"RunPod answered HTTP {status} to {operation}" + (f": {detail}" if detail else "")
        )
        if status in (401, 403):
            return AuthError(message, status=status, field=operation)
        if status == 404:
            return NotFoundError(message, status=status, field=operation)
        if status == 429 or status >= 500:
            return UnavailableError(message, status=status, field=operation)
        if status == 400:
            return InvalidRequestError(message, status=status, field=operation)
        return RunPodError(message, status=status, field=operation)

    # -- creating ----------------------------------------------------------------

    async def create_pod(self, request: PodRequest) -> Pod:
        """An on-demand pod (`podFindAndDeployOnDemand`). CapacityError when RunPod has no
        machine for it: try the next offer."""
        return await self._create(
            "podFindAndDeployOnDemand", queries.DEPLOY_ON_DEMAND, request.to_input(), request
        )

    async def create_spot_pod(self, request: PodRequest, bid_per_gpu: float) -> Pod:
        """A spot (interruptible) pod (`podRentInterruptable` with `bidPerGpu`)."""
        if not request.gpu_type_id:
            raise ValueError("a spot pod needs gpu_type_id")
        values = request.to_input(spot=True)
        values["bidPerGpu"] = float(bid_per_gpu)
        return await self._create(
            "podRentInterruptable", queries.RENT_INTERRUPTABLE, values, request
        )

    async def create_first_available(
        self,
        offers: Sequence[Offer],
        make_request: Callable[[Offer], PodRequest],
        *,
        spot: bool = False,
        attempts: int = 3,
        on_try: Callable[[Offer], Any] | None = None,
        on_capacity: Callable[[Offer, CapacityError], Any] | None = None,
    ) -> tuple[Pod, Offer]:
        """Try `offers` in order (cheapest first, as `offers()` returns them), at most
        `attempts` of them, moving to the next one on a capacity error, as established
        brokers do. `make_request(offer)` builds each request; with `spot` the pod is
        rented at the offer's minimum bid. The callbacks (plain or async) report progress.
        Returns the pod and the offer it came from; CapacityError if none had capacity.
        Any other error is raised at once."""
        tried = list(offers)[: max(1, attempts)]
        if not tried:
            raise ValueError("no offers to try")
        for offer in tried:
            await _call(on_try, offer)
            request = make_request(offer)
            try:
                if spot:
                    bid = offer.bid_per_gpu()
                    if bid is None:
                        raise ValueError(f"offer {offer.key} has no spot price")
                    pod = await self.create_spot_pod(request, bid)
                else:
                    pod = await self.create_pod(request)
            except CapacityError as err:
                await _call(on_capacity, offer, err)
                continue
            return pod, offer
        raise CapacityError(
            f"none of the {len(tried)} cheapest matching offer(s) had capacity",
            code="SUPPLY_CONSTRAINT",
        )

    async def _create(
        self, field: str, query: str, values: dict[str, Any], request: PodRequest
    ) -> Pod:
        create_id = uuid.uuid4().hex
        values = dict(values)
        values["env"] = [*values.get("env", []), {"key": CREATE_ID_ENV, "value": create_id}]
        secrets = request.secret_values()

        async def find_created() -> dict | None:
            for pod in await self.list_pods(max_attempts=1):
                if pod.env.get(CREATE_ID_ENV) == create_id:
                    return {field: pod.raw}
            return None

        try:
            data = await self.execute(
                query, {"input": values}, field=field, secrets=secrets, on_ambiguous=find_created
            )
        except (CapacityError, InvalidRequestError, AuthError):
            raise
        except asyncio.CancelledError:
            # Cancelled (a user gave up, the hub is stopping) while the request may have
            # reached RunPod: do not leave a paid pod behind.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._remove_stray(find_created, field), 30)
            raise
        except RunPodError as err:
            # A generic error, or no answer at all: make sure no pod was left behind.
            await self._remove_stray(find_created, field)
            raise err from None
        raw = data.get(field)
        if not raw or not raw.get("id"):
            await self._remove_stray(find_created, field)
            raise RunPodError(f"RunPod answered {field} without a pod", field=field)
        pod = Pod.from_api(raw)
        log.info("RunPod pod %s (%s) created", pod.id, pod.name)
        return pod

    async def _remove_stray(self, find: Callable[[], Awaitable[dict | None]], field: str) -> None:
        try:
            found = await find()
        except RunPodError as err:
            log.warning("RunPod %s failed and the pod list cannot be read: %s", field, err)
            return
        if found:
            pod_id = found[field]["id"]
            log.warning("RunPod %s failed but made pod %s; terminating it", field, pod_id)
            try:
                await self.terminate_pod(pod_id)
            except RunPodError as err:
                log.error("could not terminate stray pod %s: %s", pod_id, err)

    # -- ending ------------------------------------------------------------------

    async def terminate_pod(self, pod_id: str) -> bool:
        """End the pod for good. True if it was terminated now, False if it was already
        gone ("pod not found to terminate" counts as done)."""
        try:
            await self.execute(
                queries.TERMINATE, {"input": {"podId": pod_id}}, field="podTerminate"
            )
        except NotFoundError:
            # "pod not found to terminate": terminated before, by us or anyone.
            log.info("RunPod pod %s was already terminated", pod_id)
            return False
        log.info("RunPod pod %s terminated", pod_id)
        return True

    async def stop_pod(self, pod_id: str) -> Pod | None:
        """Stop the pod (its volume stays, and is still billed). NotFoundError if none."""
        data = await self.execute(queries.STOP, {"input": {"podId": pod_id}}, field="podStop")
        raw = data.get("podStop")
        return Pod.from_api(raw) if raw else None

    # -- waiting -----------------------------------------------------------------

    def proxy_url(self, pod: Pod, port: int) -> str | None:
        """The HTTP URL of the pod's `port` by this client's proxy_url_template."""
        return pod.proxy_url(port, self.proxy_url_template)

    @staticmethod
    def _check_alive(pod_id: str, pod: Pod | None) -> Pod:
        if pod is None:
            raise NotFoundError(f"pod {pod_id} disappeared while starting", field="pod")
        if pod.desired_status in ENDED_STATUSES:
            raise RunPodError(
                f"pod {pod_id} ended while starting (desiredStatus {pod.desired_status})",
                field="pod",
            )
        return pod

    async def wait_for_pod(
        self,
        pod_id: str,
        *,
        port: int | None = None,
        timeout_s: float = 600.0,
        interval_s: float | None = None,
        on_poll: Callable[[Pod], Any] | None = None,
    ) -> Pod:
        """Poll until the pod runs (RunPod reports its `runtime`) and, with `port`, until
        that port shows in `runtime.ports`. NotFoundError if the pod disappears,
        RunPodError if it ends, PodWaitTimeout after `timeout_s`."""
        interval = self.poll_interval_s if interval_s is None else interval_s
        deadline = time.monotonic() + timeout_s
        while True:
            pod = self._check_alive(pod_id, await self.get_pod(pod_id))
            await _call(on_poll, pod)
            if pod.is_running and (port is None or pod.port(port) is not None):
                return pod
            if time.monotonic() + interval > deadline:
                raise PodWaitTimeout(
                    f"pod {pod_id} was not running"
                    + (f" with port {port}" if port else "")
                    + f" within {timeout_s:.0f}s",
                    field="pod",
                )
            await asyncio.sleep(interval)

    async def wait_for_http(
        self,
        url: str,
        *,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 300.0,
        interval_s: float = 2.0,
        expect: Iterable[int] = (200,),
        request_timeout_s: float = 10.0,
        pod_id: str | None = None,
    ) -> int:
        """Poll `url` (a server in a pod, usually through its proxy URL) until it answers
        one of `expect`. The RunPod key is never sent there. Put a server token in
        `headers` (`Authorization: token ...`), not in the URL, so that no log shows it.
        With `pod_id`, stop early (NotFoundError / RunPodError) if that pod disappears or
        ends meanwhile. PodWaitTimeout after `timeout_s`."""
        wanted = set(expect)
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        async with httpx.AsyncClient(timeout=request_timeout_s, follow_redirects=False) as http:
            while True:
                try:
                    response = await http.get(url, headers=dict(headers or {}))
                    if response.status_code in wanted:
                        return response.status_code
                    last = f"HTTP {response.status_code}"
                except httpx.HTTPError as err:
                    last = type(err).__name__
                if pod_id is not None:
                    self._check_alive(pod_id, await self.get_pod(pod_id))
                if time.monotonic() + interval_s > deadline:
                    raise PodWaitTimeout(
                        f"the server did not answer within {timeout_s:.0f}s (last: {last})"
                    )
                await asyncio.sleep(interval_s)


async def _call(callback: Callable[..., Any] | None, *args: Any) -> None:
    if callback is not None:
        result = callback(*args)
        if inspect.isawaitable(result):
            await result


def _log_event(event_id: str | None, data: str) -> PodLogEvent | None:
    """One event of the log stream (`{"ts", "source", "line"}`); None for one that is not."""
    try:
        payload = json.loads(data)
    except ValueError:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("line"), str):
        return None
    return PodLogEvent(
        event_id, str(payload.get("ts") or ""), str(payload.get("source") or ""), payload["line"]
    )


def _operation_name(query: str) -> str | None:
    match = re.search(r"^\s*(?:query|mutation)\s+([A-Za-z_][A-Za-z0-9_]*)", query, re.MULTILINE)
    return match.group(1) if match else None


def _first_message(errors: Any) -> str | None:
    if isinstance(errors, list) and errors and isinstance(errors[0], dict):
        return str(errors[0].get("message") or "") or None
    return None


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


__all__ = ["PodWaitTimeout", "RunPodClient"]
