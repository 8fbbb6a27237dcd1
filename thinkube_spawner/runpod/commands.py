"""`thinkube cloud ...`: cloud GPUs on RunPod from the command line.

    thinkube cloud offers [--min-vram GB] [--max-price USD] [--gpu NAME] [--spot] [--json]
    thinkube cloud colab  [--min-vram GB] [--max-price USD] [--spot] [--max-hours H]
                          [--meta k=v ...] [--json]
    thinkube cloud ls     [--meta k=v ...] [--json]
    thinkube cloud rm     POD_ID ... | --meta k=v [--yes] [--json]

The key comes from RUNPOD_API_KEY, RUNPOD_API_KEY_FILE (or --api-key-file), or
~/.runpod/config.toml; there is deliberately no option that takes the key itself (it would
show in the process list and the shell history), and nothing here prints it. Progress goes to
stderr, results to stdout; errors are one line on stderr and a non-zero exit status.

A pod costs money while it exists, so `colab` never leaves one behind by accident: every pod
it creates carries RunPod's own deadline (`terminateAfter`, --max-hours, 12 by default), and
Ctrl-C, SIGTERM and SIGHUP while it waits terminate the pod before the command ends.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from thinkube_core.runpod.client import RunPodClient
from thinkube_core.runpod.errors import CapacityError, RunPodError
from thinkube_core.runpod.models import Pod, PodRequest, parse_meta
from thinkube_core.runpod.offers import Offer

DEFAULT_IMAGE = "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04"
JUPYTER_PORT = 8888
DEFAULT_MAX_HOURS = 12.0
# Besides Ctrl-C (SIGINT, which asyncio turns into a cancellation by itself): a service
# manager or `kill` (SIGTERM), and a closed terminal or SSH session (SIGHUP).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class CommandError(Exception):
    """A failure to report as one line (exit status `code`)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- arguments ---------------------------------------------------------------------


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must not be negative")
    return value


def _meta_pair(text: str) -> str:
    try:
        parse_meta([text])
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None
    return text


def _connection_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("RunPod connection")
    group.add_argument(
        "--api-url", help="GraphQL endpoint (default: $RUNPOD_API_URL or RunPod's own)"
    )
    group.add_argument(
        "--api-key-file",
        help="file holding the API key (default: $RUNPOD_API_KEY, $RUNPOD_API_KEY_FILE, "
        "~/.runpod/config.toml)",
    )
    group.add_argument(
        "--proxy-url-template",
        help="URL of a pod port (default: $RUNPOD_PROXY_URL_TEMPLATE or "
        "https://{pod_id}-{port}.proxy.runpod.net)",
    )
    common.add_argument("--json", action="store_true", help="machine-readable output")
    return common


def _offer_filters(parser: argparse.ArgumentParser, gpu_name: bool = True) -> None:
    parser.add_argument("--min-vram", type=_positive_float, metavar="GB", help="GPU memory")
    parser.add_argument(
        "--max-price", type=_positive_float, metavar="USD", help="most per hour (all GPUs)"
    )
    if gpu_name:
        parser.add_argument("--gpu", metavar="NAME", help="GPU name contains NAME (any case)")
    parser.add_argument(
        "--cloud",
        choices=["secure", "community", "all"],
        default="all",
        help="RunPod cloud type (default: all)",
    )
    parser.add_argument(
        "--spot", action="store_true", help="spot (interruptible) prices: cheaper, can be cut"
    )
    parser.add_argument("--gpu-count", type=int, default=1, metavar="N", help="GPUs (default 1)")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add `cloud` and its subcommands to the `thinkube` parser."""
    common = _connection_options()
    cloud = subparsers.add_parser(
        "cloud",
        help="cloud GPUs on RunPod: offers, a notebook anywhere, list and remove pods",
        description="Cloud GPUs on RunPod.",
    )
    commands = cloud.add_subparsers(dest="cloud_command", metavar="COMMAND")
    commands.required = True

    offers = commands.add_parser(
        "offers", parents=[common], help="GPU offers, cheapest first", description="GPU offers."
    )
    _offer_filters(offers)
    offers.set_defaults(func=lambda args: _run(cmd_offers(args)))

    colab = commands.add_parser(
        "colab",
        parents=[common],
        help="start Jupyter on a cloud GPU (for Colab's local runtime, a browser, or SSH)",
        description="Rent the cheapest matching GPU with Jupyter running, wait until it "
        "answers, and print how to connect (a browser URL, an SSH tunnel, the URL for "
        "Colab's 'Connect to a local runtime'). The pod is billed until `thinkube cloud rm`, "
        "or until RunPod ends it at the --max-hours deadline.",
    )
    _offer_filters(colab)
    colab.add_argument("--image", default=DEFAULT_IMAGE, help=f"image (default {DEFAULT_IMAGE})")
    colab.add_argument("--name", help="pod name (default thinkube-colab-<random>)")
    colab.add_argument(
        "--meta", action="append", default=[], type=_meta_pair, metavar="K=V", help="metadata"
    )
    colab.add_argument(
        "--disk", type=int, default=40, metavar="GB", help="container disk (default 40)"
    )
    colab.add_argument(
        "--attempts",
        type=int,
        default=3,
        metavar="N",
        help="offers to try when RunPod has no capacity (default 3)",
    )
    colab.add_argument(
        "--timeout",
        type=_positive_float,
        default=900,
        metavar="S",
        help="seconds to wait for Jupyter (default 900)",
    )
    colab.add_argument(
        "--max-hours",
        type=_positive_float,
        default=DEFAULT_MAX_HOURS,
        metavar="H",
        help="RunPod terminates the pod after H hours, even if it is forgotten and this "
        f"machine is gone (its terminateAfter; default {DEFAULT_MAX_HOURS:g}; 0: no limit)",
    )
    colab.add_argument("--poll-interval", type=_positive_float, default=5.0, help=argparse.SUPPRESS)
    colab.set_defaults(func=lambda args: _run(_stoppable(cmd_colab(args))))

    ls = commands.add_parser("ls", parents=[common], help="list your pods", description="Pods.")
    ls.add_argument(
        "--meta", action="append", default=[], type=_meta_pair, metavar="K=V", help="filter"
    )
    ls.add_argument("--name-prefix", metavar="PREFIX", help="only pods named PREFIX...")
    ls.set_defaults(func=lambda args: _run(cmd_ls(args)))

    rm = commands.add_parser(
        "rm",
        parents=[common],
        help="terminate pods by id or metadata",
        description="Terminate pods (for good: their disks go too).",
    )
    rm.add_argument("pod_ids", nargs="*", metavar="POD_ID")
    rm.add_argument(
        "--meta", action="append", default=[], type=_meta_pair, metavar="K=V", help="select"
    )
    rm.add_argument("--yes", "-y", action="store_true", help="do not ask")
    rm.set_defaults(func=lambda args: _run(cmd_rm(args)))
    return cloud


# -- plumbing ----------------------------------------------------------------------


def _run(coro) -> int:
    try:
        return asyncio.run(coro)
    except RunPodError as err:
        raise CommandError(str(err)) from None


async def _stoppable(coro) -> int:
    """Run a command so that SIGTERM and SIGHUP cancel it as Ctrl-C does (its clean-up runs:
    colab terminates its pod), then end with status 128 + the signal's number. (The other
    commands leave these signals alone: they hold nothing, and rm may wait on a prompt.)
    Signal handlers can only be set in the main thread; elsewhere (tests) it just runs."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    received: list[signal.Signals] = []

    def stop(signum: signal.Signals) -> None:
        if not received and task is not None:  # a second signal must not cut the clean-up
            received.append(signum)
            task.cancel()

    installed = []
    if threading.current_thread() is threading.main_thread():
        for signum in STOP_SIGNALS:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(signum, stop, signum)
                installed.append(signum)
    try:
        return await coro
    except asyncio.CancelledError:
        if not received:
            raise
        if task is not None:
            task.uncancel()
        raise CommandError(f"stopped by {received[0].name}", 128 + received[0]) from None
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)


def _client(args: argparse.Namespace) -> RunPodClient:
    return RunPodClient(
        api_url=args.api_url,
        key_file=args.api_key_file,
        proxy_url_template=args.proxy_url_template,
    )


def _note(message: str) -> None:
    # After a hangup the terminal may be gone: progress is not worth failing for.
    with contextlib.suppress(OSError):
        print(message, file=sys.stderr, flush=True)


def _out(text: str = "") -> None:
    print(text, flush=True)


def _dump(value: Any) -> None:
    _out(json.dumps(value, indent=2, sort_keys=False))


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:.2f}"


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *rows, strict=False)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def _uptime(seconds: int | None) -> str:
    if seconds is None:
        return "-"
    hours, rest = divmod(int(seconds), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


def _filters_text(args: argparse.Namespace) -> str:
    parts = []
    if args.min_vram is not None:
        parts.append(f"at least {args.min_vram:g} GB")
    if args.max_price is not None:
        parts.append(f"at most ${args.max_price:g}/h")
    if getattr(args, "gpu", None):
        parts.append(f"GPU name containing {args.gpu!r}")
    if args.cloud != "all":
        parts.append(f"{args.cloud} cloud")
    if args.spot:
        parts.append("spot")
    return ", ".join(parts) or "no filters"


async def _find_offers(client: RunPodClient, args: argparse.Namespace) -> list[Offer]:
    if args.gpu_count < 1:
        raise CommandError("--gpu-count must be at least 1", 2)
    return await client.offers(
        gpu_count=args.gpu_count,
        min_vram_gb=args.min_vram,
        max_price_per_hour=args.max_price,
        gpu=getattr(args, "gpu", None),
        cloud_type=args.cloud.upper(),
        spot=args.spot,
    )


# -- offers ------------------------------------------------------------------------


def _gpus(offer: Offer) -> str:
    return (
        offer.display_name if offer.gpu_count == 1 else f"{offer.gpu_count}x {offer.display_name}"
    )


async def cmd_offers(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        offers = await _find_offers(client, args)
    if args.json:
        _dump([o.to_dict() for o in offers])
        return 0
    if not offers:
        _out(f"No cloud GPU offers match ({_filters_text(args)}).")
        return 0
    rows = [
        [
            _gpus(o),
            f"{o.vram_gb} GB" if o.vram_gb else "-",
            o.cloud_type.lower(),
            _money(o.price_per_hour),
            _money(o.spot_price_per_hour),
            o.stock.lower() if o.in_stock and o.stock else "none",
            o.gpu_type_id,
        ]
        for o in offers
    ]
    _out(_table(["GPU", "VRAM", "CLOUD", "ON DEMAND/H", "SPOT/H", "STOCK", "GPU TYPE ID"], rows))
    return 0


# -- colab -------------------------------------------------------------------------


async def _terminate_quietly(client: RunPodClient, pod_id: str) -> str:
    try:
        await asyncio.wait_for(client.terminate_pod(pod_id), 60)
    except (RunPodError, TimeoutError) as err:
        return (
            f"and terminating pod {pod_id} failed too ({err}): remove it with "
            f"`thinkube cloud rm {pod_id}` or in RunPod's console"
        )
    return f"pod {pod_id} was terminated"


def _deadline_text(terminate_after: datetime | None) -> str:
    if terminate_after is None:
        return "no time limit (--max-hours 0)"
    return f"RunPod terminates it at {terminate_after:%Y-%m-%d %H:%M} UTC"


def _in_stock_first(offers: list[Offer], spot: bool) -> list[Offer]:
    """The offers RunPod reports in stock, in their order. Each out-of-stock offer that
    sorts before the first one in stock is named on stderr (it is why a dearer one is
    tried); trying it would only spend an attempt on a certain capacity error."""
    kept = [o for o in offers if o.in_stock]
    for offer in offers:
        if offer.in_stock:
            break
        _note(
            f"Skipping {_gpus(offer)} ({offer.cloud_type.lower()} cloud, "
            f"{_money(offer.price(spot))}/h): RunPod reports it out of stock"
        )
    return kept


async def cmd_colab(args: argparse.Namespace) -> int:
    meta = {"purpose": "colab", **parse_meta(args.meta)}
    password = secrets.token_urlsafe(24)
    name = args.name or f"thinkube-colab-{secrets.token_hex(3)}"
    # RunPod's own dead-man switch: the pod ends then even if everything here is gone.
    terminate_after = (
        (datetime.now(UTC) + timedelta(hours=args.max_hours)).replace(microsecond=0)
        if args.max_hours
        else None
    )
    async with _client(args) as client:
        offers = await _find_offers(client, args)
        if not offers:
            raise CommandError(f"no cloud GPU offer matches ({_filters_text(args)})")
        offers = _in_stock_first(offers, args.spot)
        if not offers:
            raise CommandError(
                f"every matching cloud GPU offer is out of stock ({_filters_text(args)}); "
                "try again later or wider filters"
            )

        def make_request(offer: Offer) -> PodRequest:
            return PodRequest(
                name=name,
                image_name=args.image,
                gpu_type_id=offer.gpu_type_id,
                gpu_count=offer.gpu_count,
                cloud_type=offer.cloud_type,
                ports=f"{JUPYTER_PORT}/http,22/tcp",
                start_jupyter=True,
                start_ssh=True,
                support_public_ip=True,
                container_disk_in_gb=args.disk,
                env={"JUPYTER_PASSWORD": password},
                meta=meta,
                terminate_after=terminate_after,
            )

        try:
            pod, chosen = await client.create_first_available(
                offers,
                make_request,
                spot=args.spot,
                attempts=args.attempts,
                on_try=lambda o: _note(f"Trying {o.label()} ({o.cloud_type.lower()} cloud)"),
                on_capacity=lambda o, e: _note(
                    "  no capacity for it right now; trying the next offer"
                ),
            )
        except CapacityError as err:
            raise CommandError(
                f"{err}; try again later, --attempts more, or wider filters"
            ) from None
        _note(
            f"Pod {pod.id} ({pod.name}) created; {_deadline_text(terminate_after)}; "
            "waiting for it to run..."
        )
        deadline = time.monotonic() + args.timeout
        try:
            pod = await client.wait_for_pod(
                pod.id,
                port=JUPYTER_PORT,
                timeout_s=args.timeout,
                interval_s=args.poll_interval,
            )
            url = client.proxy_url(pod, JUPYTER_PORT)
            if not url:
                raise CommandError("the pod's Jupyter port has no URL (check --proxy-url-template)")
            _note("Container running; waiting for Jupyter to answer...")
            await client.wait_for_http(
                f"{url}/api/status",
                headers={"Authorization": f"token {password}"},
                timeout_s=max(1.0, deadline - time.monotonic()),
                interval_s=min(2.0, args.poll_interval),
                pod_id=pod.id,
            )
        except BaseException as err:  # also Ctrl-C, SIGTERM, SIGHUP (a cancelled task), timeouts
            outcome = await _terminate_quietly(client, pod.id)
            if isinstance(err, KeyboardInterrupt | asyncio.CancelledError):
                _note(f"thinkube: interrupted; {outcome}")
                raise
            raise CommandError(f"{err}; {outcome}") from None
    _print_colab(args, pod, chosen, url, password, terminate_after)
    return 0


def _print_colab(
    args: argparse.Namespace,
    pod: Pod,
    offer: Offer,
    url: str,
    password: str,
    terminate_after: datetime | None,
) -> None:
    jupyter_url = f"{url}/?token={password}"
    ssh = pod.ssh_command(JUPYTER_PORT, JUPYTER_PORT)
    local_url = f"http://localhost:{JUPYTER_PORT}/?token={password}"
    if args.json:
        _dump(
            {
                "pod_id": pod.id,
                "name": pod.name,
                "gpu": offer.display_name,
                "gpu_type_id": offer.gpu_type_id,
                "gpu_count": offer.gpu_count,
                "cloud_type": offer.cloud_type,
                "spot": bool(args.spot),
                "price_per_hour": pod.cost_per_hr,
                "jupyter_url": jupyter_url,
                "ssh_command": ssh,
                "colab_url": local_url,
                "terminate_after": (
                    terminate_after.isoformat().replace("+00:00", "Z") if terminate_after else None
                ),
                "meta": pod.meta,
            }
        )
        return
    price = _money(pod.cost_per_hr)
    kind = "spot" if args.spot else "on demand"
    _out(f"Jupyter is ready on pod {pod.id} ({offer.display_name}, {price}/h {kind}).")
    _out()
    _out(f"  In a browser:   {jupyter_url}")
    if ssh:
        _out(f"  SSH tunnel:     {ssh}")
        _out(f"  Colab:          {local_url}")
        _out("                  (start the SSH tunnel, then in Colab choose Connect >")
        _out("                   'Connect to a local runtime' and paste this URL)")
    else:
        _out("  SSH tunnel:     not available (the pod has no public 22/tcp port)")
    _out()
    if terminate_after is None:
        _out("The pod has no time limit (--max-hours 0).")
        _out(f"It is billed until you remove it:  thinkube cloud rm {pod.id}")
    else:
        _out(
            f"{_deadline_text(terminate_after)} (--max-hours {args.max_hours:g}); it is billed "
            "until then,"
        )
        _out(f"or until you remove it:  thinkube cloud rm {pod.id}")


# -- ls and rm ---------------------------------------------------------------------


def _pod_rows(pods: list[Pod]) -> str:
    rows = [
        [
            p.id,
            p.name,
            p.desired_status
            + ("" if p.has_runtime or p.desired_status != "RUNNING" else " (starting)"),
            p.gpu_display_name or "-",
            _money(p.cost_per_hr),
            _uptime(p.uptime_seconds),
            ",".join(f"{k}={v}" for k, v in sorted(p.meta.items())) or "-",
        ]
        for p in pods
    ]
    return _table(["ID", "NAME", "STATUS", "GPU", "$/H", "UPTIME", "META"], rows)


async def cmd_ls(args: argparse.Namespace) -> int:
    meta = parse_meta(args.meta)
    async with _client(args) as client:
        pods = await client.list_pods(name_prefix=args.name_prefix, meta=meta)
    if args.json:
        _dump([p.summary() for p in pods])
    elif not pods:
        _out("No pods." if not meta and not args.name_prefix else "No pods match.")
    else:
        _out(_pod_rows(pods))
    return 0


def _confirm(count: int) -> None:
    stdin = sys.stdin
    if stdin is None or not stdin.isatty():
        raise CommandError(
            f"refusing to terminate {count} pod(s) without confirmation: standard input is "
            "not a terminal; pass --yes"
        )
    _note(f"Terminate {count} pod(s)? Their disks are deleted too. [y/N] ")
    answer = stdin.readline().strip().lower()
    if answer not in ("y", "yes"):
        raise CommandError("nothing terminated", 1)


async def cmd_rm(args: argparse.Namespace) -> int:
    if args.pod_ids and args.meta:
        raise CommandError("give pod ids or --meta, not both", 2)
    if not args.pod_ids and not args.meta:
        raise CommandError("nothing to remove: give pod ids or --meta k=v", 2)
    terminated: list[str] = []
    gone: list[str] = []
    async with _client(args) as client:
        if args.meta:
            targets = await client.list_pods(meta=parse_meta(args.meta))
            unknown: list[str] = []
            if not targets and not args.json:
                _out("No pods match.")
                return 0
        else:
            targets, unknown = await _pods_by_id(client, list(dict.fromkeys(args.pod_ids)))
        if targets and not args.yes:
            if not args.json:
                _note(_pod_rows(targets))
            _confirm(len(targets))
        for pod in targets:
            if await client.terminate_pod(pod.id):
                terminated.append(pod.id)
            else:
                gone.append(pod.id)  # it ended meanwhile: what was asked is done
    if args.json:
        _dump({"terminated": terminated, "already_gone": gone, "not_found": unknown})
    else:
        for pod_id in terminated:
            _out(f"terminated {pod_id}")
        for pod_id in gone:
            _out(f"{pod_id}: already gone")
    if unknown:
        raise CommandError(_no_pods(unknown))
    return 0


async def _pods_by_id(client: RunPodClient, ids: list[str]) -> tuple[list[Pod], list[str]]:
    """The account's pods with these ids (one that is terminating included), and the ids
    RunPod knows no pod by: a typo, or another account's pod, must not pass as removed."""
    listed = {p.id: p for p in await client.list_pods()}
    found, unknown = [], []
    for pod_id in ids:
        pod = listed.get(pod_id) or await client.get_pod(pod_id)
        if pod is None:
            unknown.append(pod_id)
        else:
            found.append(pod)
    return found, unknown


def _no_pods(ids: list[str]) -> str:
    return f"no pod {ids[0]}" if len(ids) == 1 else f"no pods {', '.join(ids)}"
