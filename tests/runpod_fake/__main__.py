"""Run the RunPod stand-in standalone:

    python -m tests.runpod_fake --port 8765 [--api-key KEY] [--capacity 'NVIDIA L4=0'] ...

The first line on stdout is `runpod-fake listening on http://127.0.0.1:PORT/graphql`, the
second `runpod-fake REST v2 at http://127.0.0.1:PORT/v2`; point a client at them with
RUNPOD_API_URL, RUNPOD_REST_URL, RUNPOD_API_KEY (the --api-key, default $RUNPOD_API_KEY,
else "runpod-fake-key") and RUNPOD_PROXY_URL_TEMPLATE=http://{ip}:{port}. It serves until
SIGTERM or SIGINT, then ends every pod's process.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from .fake import RunPodFake


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.runpod_fake",
        description="A stand-in for RunPod's GraphQL API and REST API v2.",
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: a free one)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--api-key", default=os.environ.get("RUNPOD_API_KEY") or "runpod-fake-key")
    parser.add_argument(
        "--capacity",
        action="append",
        default=[],
        metavar="GPU_TYPE_ID=N",
        help="GPUs of a type that can be rented (repeatable; default 4 per type and cloud)",
    )
    parser.add_argument("--start-delay", type=float, default=1.0, help="seconds until runtime")
    parser.add_argument("--latency", type=float, default=0.0, help="delay every answer (s)")
    parser.add_argument("--no-processes", action="store_true", help="do not run the pods' commands")
    parser.add_argument(
        "--schema", help="RunPod's schema as SDL (default: runpod.graphql beside the stand-in)"
    )
    parser.add_argument("--log-level", default="INFO")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    fake = RunPodFake(
        api_key=args.api_key,
        start_delay_s=args.start_delay,
        run_processes=not args.no_processes,
        schema_path=args.schema,
    )
    for item in args.capacity:
        gpu_type_id, _, count = item.rpartition("=")
        fake.set_capacity(gpu_type_id, int(count))
    if args.latency:
        fake.inject(delay_s=args.latency, times=-1)
    await fake.start(args.port, args.host)
    print(f"runpod-fake listening on {fake.url}", flush=True)
    print(f"runpod-fake REST v2 at {fake.rest_url}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await fake.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr)
    asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
