"""`thinkube jobs ...` (GPU jobs in the hub's queue), `thinkube train ...` (a fine-tuning job)
and `thinkube token ...` (a person's expiring hub tokens).

Both talk to the hub over HTTP with a hub token from the environment: `THINKUBE_TOKEN`, else
`JUPYTERHUB_API_TOKEN` (set inside a notebook server of the hub). A token is never taken as a
command-line argument, where other people on the machine could read it. Where the hub is:
`--hub URL` or `THINKUBE_HUB_URL` (inside a notebook server, the hub that started it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

import httpx

from thinkube_core import jobs as jobs_api
from thinkube_spawner.runpod.commands import CommandError

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
SERVICE = "thinkube-resources"
JOBS_ADMIN_SCOPE = "custom:thinkube:jobs:admin"


def register(subparsers: argparse._SubParsersAction) -> None:
    _register_jobs(subparsers)
    _register_train(subparsers)
    _register_token(subparsers)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hub",
        metavar="URL",
        help="the hub's address, e.g. https://hub.example.org/ (default: THINKUBE_HUB_URL, "
        "or the hub of this notebook server)",
    )
    parser.add_argument("--json", action="store_true", help="print the service's JSON answer")


def _register_jobs(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("jobs", help="GPU jobs in the hub's queue")
    commands = group.add_subparsers(dest="jobs_command", metavar="COMMAND")
    commands.required = True

    submit = commands.add_parser("submit", help="queue a Python script")
    submit.add_argument("script", help="the script to run, e.g. train.py")
    submit.add_argument(
        "--expected-time", required=True, help="how long it should take: seconds, 10m, 2h"
    )
    submit.add_argument("--gpus", type=int, help="how many GPUs (default 0; on RunPod 1)")
    submit.add_argument(
        "--gpu-model", help="a GPU model as the spawn form names it, e.g. NVIDIA-A100-SXM4-80GB"
    )
    submit.add_argument(
        "--where",
        help="local (this hub's nodes, the default), runpod, or a RunPod offer as the spawn "
        "form names it, e.g. 'cloud:SECURE:NVIDIA GeForce RTX 4090:1'",
    )
    submit.add_argument("--pricing", choices=("on-demand", "spot"), help="on RunPod")
    submit.add_argument("--cpu", help="CPU cores, e.g. 4")
    submit.add_argument("--memory", help="memory, e.g. 16Gi")
    submit.add_argument("--image", help="a catalog image (default: the catalog's GPU default)")
    submit.add_argument("--name", help="a name for the job")
    submit.add_argument("--project", help="a project to file it under")
    submit.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    submit.add_argument(
        "-f", "--follow", action="store_true", help="then print its output until it ends"
    )
    _common(submit)
    submit.set_defaults(func=_submit)

    listing = commands.add_parser("ls", help="your jobs, newest first")
    listing.add_argument("--status", help="queued, running, completed, failed, cancelled, lost")
    listing.add_argument("--project", help="only this project's")
    listing.add_argument("--user", help="another person's (needs the jobs admin scope)")
    _common(listing)
    listing.set_defaults(func=_list)

    for name, helptext, func in (
        ("status", "one job: where it stands", _status),
        ("result", "a finished job's exit code and output", _result),
        ("cancel", "take a queued job out, or end a running one", _cancel),
    ):
        command = commands.add_parser(name, help=helptext)
        command.add_argument("job_id", help="the job's id, e.g. j-1a2b3c4d5e6f")
        _common(command)
        command.set_defaults(func=func)

    logs = commands.add_parser("logs", help="a job's output")
    logs.add_argument("job_id", help="the job's id, e.g. j-1a2b3c4d5e6f")
    logs.add_argument("-f", "--follow", action="store_true", help="as it comes, until it ends")
    _common(logs)
    logs.set_defaults(func=_logs)

    artifacts = commands.add_parser("artifacts", help="the files a finished job wrote")
    artifacts.add_argument("job_id", help="the job's id, e.g. j-1a2b3c4d5e6f")
    artifacts.add_argument(
        "--partial", action="store_true", help="a running job's, as far as it has written them"
    )
    _common(artifacts)
    artifacts.set_defaults(func=_artifacts)

    download = commands.add_parser(
        "download", help="fetch a finished job's files into a folder (resumes, checks sha256)"
    )
    download.add_argument("job_id", help="the job's id, e.g. j-1a2b3c4d5e6f")
    download.add_argument("directory", help="where to put them, e.g. out/ (made if needed)")
    _common(download)
    download.set_defaults(func=_download)

    queue = commands.add_parser("queue", help="the waiting jobs, in the order they will start")
    _common(queue)
    queue.set_defaults(func=_queue)

    nodes = commands.add_parser("nodes", help="per node: GPUs free and busy, jobs, work ahead")
    _common(nodes)
    nodes.set_defaults(func=_nodes)


def _register_train(subparsers: argparse._SubParsersAction) -> None:
    train = subparsers.add_parser(
        "train", help="queue a fine-tuning job (LoRA, QLoRA, DoRA, IA3) from a config file"
    )
    train.add_argument("config", help="the training config, YAML or JSON, e.g. lora.yaml")
    train.add_argument(
        "--dataset", metavar="FILE", help="a JSON Lines (or JSON) dataset to send with the job"
    )
    train.add_argument(
        "--expected-time", required=True, help="how long it should take: seconds, 10m, 2h"
    )
    train.add_argument("--gpus", type=int, default=0, help="how many GPUs (default 0)")
    train.add_argument(
        "--gpu-model", help="a GPU model as the spawn form names it, e.g. NVIDIA-A100-SXM4-80GB"
    )
    train.add_argument("--cpu", help="CPU cores, e.g. 4")
    train.add_argument("--memory", help="memory, e.g. 16Gi")
    train.add_argument(
        "--image", help="a catalog image that can train (default: one the catalog says can)"
    )
    train.add_argument(
        "--where",
        help="a cloud offer as the spawn form names it, e.g. 'cloud:SECURE:NVIDIA "
        "GeForce RTX 4090:1' (default: this hub's queue)",
    )
    train.add_argument("--pricing", choices=("on-demand", "spot"), help="with --where: which price")
    train.add_argument(
        "--metadata", action="append", default=[], metavar="KEY=VALUE", help="repeatable"
    )
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="check it and say where it would run and what it may cost; queue nothing",
    )
    train.add_argument(
        "-f", "--follow", action="store_true", help="then print its progress until it ends"
    )
    _common(train)
    train.set_defaults(func=_train)


def _register_token(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("token", help="your expiring hub tokens for jobs")
    commands = group.add_subparsers(dest="token_command", metavar="COMMAND")
    commands.required = True
    create = commands.add_parser("create", help="a new token; printed once")
    create.add_argument(
        "--expires-in", default="30d", help="its lifetime: seconds, 12h, 30d (default 30d)"
    )
    create.add_argument("--note", default="thinkube jobs", help="what it is for")
    create.add_argument(
        "--admin", action="store_true", help="with the jobs admin scope (if you hold it)"
    )
    _common(create)
    create.set_defaults(func=_token_create)
    listing = commands.add_parser("list", help="your tokens (never their secret)")
    _common(listing)
    listing.set_defaults(func=_token_list)
    revoke = commands.add_parser("revoke", help="delete a token by its id")
    revoke.add_argument("token_id", help="the id `thinkube token list` shows, e.g. a12")
    _common(revoke)
    revoke.set_defaults(func=_token_revoke)


# --- jobs -------------------------------------------------------------------------------------


def _client(args: argparse.Namespace) -> jobs_api.Client:
    url = None
    if args.hub:
        url = args.hub.rstrip("/") + "/" + jobs_api.SERVICE_PATH
    try:
        return jobs_api.Client(url)
    except jobs_api.JobsError as err:
        raise CommandError(str(err)) from None


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except jobs_api.JobsError as err:
        field = f" ({err.field})" if err.field else ""
        raise CommandError(f"{err}{field}") from None


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


def _where(view: dict) -> str:
    if view["status"] == "queued":
        parts = [f"position {view.get('position') or '?'}"]
        if view.get("expected_node"):
            parts.append(f"expected on {view['expected_node']}")
        eta = view.get("eta")
        if eta:
            parts.append(f"starts in about {_seconds(eta['starts_in_seconds'])} (an estimate)")
        return ", ".join(parts)
    if view["status"] == "running":
        return f"on {view.get('node')}"
    code = view.get("exit_code")
    return f"{view.get('reason')}" + (f", exit code {code}" if code is not None else "")


def _seconds(value: float) -> str:
    value = int(value)
    if value < 120:
        return f"{value} s"
    if value < 7200:
        return f"{value // 60} min"
    return f"{value / 3600:.1f} h"


def _metadata(pairs: list[str]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, equals, value = pair.partition("=")
        if not equals:
            raise CommandError(f"--metadata takes KEY=VALUE, not {pair!r}")
        metadata[key] = value
    return metadata


def _job_options(args: argparse.Namespace) -> dict:
    """The options `jobs submit` and `train` share, as the client takes them."""
    return {
        "expected_time": args.expected_time,
        "gpus": args.gpus,
        "gpu_model": args.gpu_model,
        "where": args.where,
        "pricing": args.pricing,
        "cpu": args.cpu,
        "memory": args.memory,
        "image": args.image,
        "metadata": _metadata(args.metadata),
    }


def _submit(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.script):
        raise CommandError(f"no such file: {args.script}")
    client = _client(args)
    job = _call(
        client.submit, args.script, name=args.name, project=args.project, **_job_options(args)
    )
    if args.json:
        _print_json(job.view)
    else:
        print(f"{job.id} {job.status}: {_where(job.view)}")
    if args.follow:
        return _follow(job)
    return 0


def _train(args: argparse.Namespace) -> int:
    for path in (args.config, args.dataset):
        if path is not None and not os.path.isfile(path):
            raise CommandError(f"no such file: {path}")
    client = _client(args)
    answer = _call(
        client.train,
        args.config,
        dataset=args.dataset,
        dry_run=args.dry_run,
        **_job_options(args),
    )
    if args.dry_run:
        if args.json:
            _print_json(answer)
        else:
            print("\n".join(preview_lines(answer)))
        return 0
    job = answer
    if args.json:
        _print_json(job.view)
    else:
        print(f"{job.id} {job.status}: {_where(job.view)}")
    if args.follow:
        return _follow(job)
    return 0


def preview_lines(preview: dict) -> list[str]:
    """What `thinkube train --dry-run` prints: where it would run, with what, at what cost."""
    where = preview["where"]
    line = f"would run: {where['summary']}"
    if where.get("expected_node") and not where.get("node"):
        line += f", expected on {where['expected_node']}"
    if where.get("eta"):
        line += f", starts in about {_seconds(where['eta']['starts_in_seconds'])} (an estimate)"
    config = preview["config"]
    lines = [
        line,
        f"training: {config['algorithm']} on {config['base_model']}, image {preview['image']}, "
        f"{preview['gpus']} GPU(s), expected {_seconds(preview['expected_time'])}",
    ]
    cost = preview.get("cost")
    if cost:
        longest = preview["expected_time"] * cost["deadline_factor"]
        lines.append(
            f"cost: at most ${cost['max_cost_usd']:.2f} ({cost['pricing']} at "
            f"${cost['price_per_hour']:.2f}/h for up to {_seconds(longest)})"
        )
    lines.append("nothing was queued (dry run)")
    return lines


def _follow(job: jobs_api.Job) -> int:
    shown_status = None
    try:
        for stream, text in job.output(follow=True):
            if stream == "status":
                if text != shown_status:
                    print(f"{job.id}: {text}", file=sys.stderr)
                    shown_status = text
                continue
            print(text, file=sys.stderr if stream == "stderr" else sys.stdout, flush=True)
    except jobs_api.JobsError as err:
        raise CommandError(str(err)) from None
    view = _call(job.refresh).view
    print(f"{job.id} {view['status']}: {_where(view)}", file=sys.stderr)
    code = view.get("exit_code")
    return 0 if view["status"] == "completed" else (code if code else 1)


def _list(args: argparse.Namespace) -> int:
    client = _client(args)
    jobs = _call(client.list, status=args.status, project=args.project, user=args.user)
    if args.json:
        _print_json([job.view for job in jobs])
        return 0
    if not jobs:
        print("no jobs")
    for job in jobs:
        name = f" {job.name}" if job.name else ""
        print(f"{job.id}{name}  {job.status:<9}  {job.submitted_at}  {_where(job.view)}")
    return 0


def _status(args: argparse.Namespace) -> int:
    job = _call(_client(args).get, args.job_id)
    if args.json:
        _print_json(job.view)
    else:
        print(f"{job.id} {job.status}: {_where(job.view)}")
    return 0


def _result(args: argparse.Namespace) -> int:
    job = _call(_client(args).get, args.job_id)
    result = _call(job.result)
    if args.json:
        _print_json(result)
        return 0
    if not result["finished"]:
        print(f"{job.id} is {result['status']}: no result yet")
        return 0
    print(f"{job.id} {result['status']} ({result['reason']}), exit code {result['exit_code']}")
    if result["stdout"]:
        print(result["stdout"])
    if result.get("stderr"):
        print(result["stderr"], file=sys.stderr)
    return 0


def _logs(args: argparse.Namespace) -> int:
    job = _call(_client(args).get, args.job_id)
    if args.follow:
        _follow(job)
        return 0
    for _, text in _call(lambda: list(job.output(follow=False))):
        print(text)
    return 0


def _cancel(args: argparse.Namespace) -> int:
    job = _call(_client(args).get, args.job_id)
    job = _call(job.cancel)
    if args.json:
        _print_json(job.view)
    else:
        print(f"{job.id} {job.status}: {_where(job.view)}")
    return 0


def _size(value: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if value >= scale:
            return f"{value / scale:.1f} {unit}"
    return f"{value} B"


def _artifacts(args: argparse.Namespace) -> int:
    job = _call(_client(args).get, args.job_id)
    files = _call(job.artifacts, partial=args.partial)
    if args.json:
        _print_json(files)
        return 0
    for item in files:
        print(f"{item['path']}  {_size(item['size'])}  sha256:{item['sha256'][:16]}")
    total = sum(item["size"] for item in files)
    print(f"{len(files)} file(s), {_size(total)}", file=sys.stderr)
    return 0


def _download(args: argparse.Namespace) -> int:
    job = _call(_client(args).get, args.job_id)

    def told(fetched: jobs_api.Fetched) -> None:
        if not args.json:
            what = {"present": "already there", "resumed": "resumed", "fetched": "fetched"}
            print(f"{what[fetched.how]}: {fetched.path} ({_size(fetched.size)}, sha256 checked)")

    done = _call(job.download, args.directory, told)
    if args.json:
        _print_json(
            [{"path": f.name, "file": str(f.path), "size": f.size, "how": f.how} for f in done]
        )
    else:
        total = sum(f.size for f in done)
        print(f"{len(done)} file(s), {_size(total)} in {args.directory}", file=sys.stderr)
    return 0


def _queue(args: argparse.Namespace) -> int:
    queue = _call(_client(args).queue)
    if args.json:
        _print_json(queue)
        return 0
    print(f"{queue['queued']} queued, {queue['running']} running ({queue['estimate_basis']})")
    for item in queue["jobs"]:
        what = item["id"] or "(someone else's)"
        eta = item.get("eta")
        when = f", in about {_seconds(eta['starts_in_seconds'])}" if eta else ""
        print(f"{item['position']:>4}. {what}  {item['user']}  {item['gpus']} GPU{when}")
    return 0


def _nodes(args: argparse.Namespace) -> int:
    nodes = _call(_client(args).nodes)
    if args.json:
        _print_json(nodes)
        return 0
    for node in nodes:
        gpus = node["gpus"]
        print(
            f"{node['name']}: {gpus['free']}/{gpus['total']} GPUs free, "
            f"{node['running_jobs']} running, {node['queued_jobs']} queued, "
            f"{_seconds(node['work_ahead_seconds'])} of work ahead"
        )
    return 0


# --- tokens ---------------------------------------------------------------------------------


def _hub_api(args: argparse.Namespace) -> httpx.Client:
    hub = args.hub or os.environ.get("THINKUBE_HUB_URL", "")
    if hub:
        api = hub.rstrip("/") + "/hub/api/"
    else:
        api = os.environ.get("JUPYTERHUB_API_URL", "").rstrip("/") + "/"
        if api == "/":
            raise CommandError("Where is the hub? Pass --hub URL or set THINKUBE_HUB_URL.")
    token = os.environ.get("THINKUBE_TOKEN") or os.environ.get("JUPYTERHUB_API_TOKEN", "")
    if not token:
        raise CommandError(
            "No hub token: make one on the hub's Token page (/hub/token) and set THINKUBE_TOKEN."
        )
    return httpx.Client(base_url=api, headers={"Authorization": f"token {token}"}, timeout=30)


def _hub_call(client: httpx.Client, method: str, path: str, **kwargs) -> Any:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as err:
        raise CommandError(f"the hub cannot be reached ({type(err).__name__})") from None
    if response.status_code >= 400:
        try:
            message = response.json().get("message") or response.reason_phrase
        except ValueError:
            message = response.reason_phrase
        raise CommandError(f"the hub refused: {message}")
    return response.json() if response.content else None


def parse_lifetime(text: str) -> int:
    text = text.strip()
    unit = text[-1:] if text[-1:] in DURATION_UNITS else "s"
    number = text[:-1] if text[-1:] in DURATION_UNITS else text
    if not number.isdigit() or int(number) <= 0:
        raise CommandError(f"--expires-in takes a lifetime like 3600, 12h or 30d, not {text!r}")
    return int(number) * DURATION_UNITS[unit]


def _me(client: httpx.Client) -> str:
    return _hub_call(client, "GET", "user")["name"]


def _token_create(args: argparse.Namespace) -> int:
    lifetime = parse_lifetime(args.expires_in)
    with _hub_api(args) as client:
        name = _me(client)
        scopes = [f"access:services!service={SERVICE}"]
        if args.admin:
            scopes.append(JOBS_ADMIN_SCOPE)
        created = _hub_call(
            client,
            "POST",
            f"users/{name}/tokens",
            json={"expires_in": lifetime, "note": args.note, "scopes": scopes},
        )
    if args.json:
        _print_json(created)
        return 0
    print(created["token"])
    print(
        f"token {created['id']} for {name}, expires {created.get('expires_at')}: "
        "shown once; set it as THINKUBE_TOKEN",
        file=sys.stderr,
    )
    return 0


def _token_list(args: argparse.Namespace) -> int:
    with _hub_api(args) as client:
        name = _me(client)
        tokens = _hub_call(client, "GET", f"users/{name}/tokens")["api_tokens"]
    if args.json:
        _print_json(tokens)
        return 0
    now = datetime.now(UTC).isoformat()
    for token in tokens:
        expires = token.get("expires_at") or "never"
        gone = " (expired)" if token.get("expires_at") and token["expires_at"] < now else ""
        print(f"{token['id']}  {token.get('note') or ''}  expires {expires}{gone}")
    return 0


def _token_revoke(args: argparse.Namespace) -> int:
    with _hub_api(args) as client:
        name = _me(client)
        _hub_call(client, "DELETE", f"users/{name}/tokens/{args.token_id}")
    print(f"token {args.token_id} revoked")
    return 0
