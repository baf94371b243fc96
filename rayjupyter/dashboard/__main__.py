"""``python -m rayjupyter.dashboard --address rayjupyter://SECRET@HOST:PORT``: serve a
cluster's dashboard (bokeh pages and the JSON API) until stdin closes.

It prints one line on stdout: ``RAYJUPYTER_DASHBOARD_READY <port>`` once it listens, or
``RAYJUPYTER_DASHBOARD_ERROR <why>`` if it cannot start. Stdin closing means the parent
died (``--detach``: ignore stdin). It also stops when the cluster goes away.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys

from rayjupyter.dashboard.launch import ERROR_LINE, READY_LINE, url_host

log = logging.getLogger("rayjupyter.dashboard")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rayjupyter.dashboard",
        description="Serve a rayjupyter cluster's web dashboard and JSON API.",
    )
    parser.add_argument(
        "--address",
        required=True,
        help="rayjupyter://SECRET@HOST:PORT, or HOST:PORT with RAYJUPYTER_SECRET set",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (loopback)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: any free)")
    parser.add_argument("--prefix", default="", help="serve everything under this URL path")
    parser.add_argument(
        "--detach", action="store_true", help="keep running when stdin closes (parent exits)"
    )
    return parser


async def serve(args: argparse.Namespace) -> int:
    from rayjupyter.core.api import _parse_address
    from rayjupyter.core.client import Client
    from rayjupyter.dashboard import discovery_record
    from rayjupyter.dashboard.auth import dashboard_token, session_signing_key
    from rayjupyter.dashboard.feed import ClusterFeed

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    try:
        hostport, secret = _parse_address(args.address)
        client = Client(hostport, secret, kind="observer", timeout=10.0)
    except Exception as error:  # a bad address or an unreachable cluster: one line, exit 1
        print(f"{ERROR_LINE} {error}", flush=True)
        return 1

    def gone(reason: str) -> None:
        print(f"rayjupyter dashboard: stopping: {reason}", file=sys.stderr, flush=True)
        loop.call_soon_threadsafe(stop.set)

    client.liveness = discovery_record.node_liveness(client.session, hostport)
    feed = ClusterFeed(client, address=hostport, on_gone=gone)
    try:
        feed.start()
        from rayjupyter.dashboard.server import DashboardServer

        server = DashboardServer(
            feed,
            token=dashboard_token(secret),
            session_key=session_signing_key(secret),
            host=args.host,
            port=args.port,
            prefix=args.prefix,
        )
    except Exception as error:  # the port is taken, say
        feed.close()
        print(f"{ERROR_LINE} {type(error).__name__}: {error}", flush=True)
        return 1
    server.start()
    url = f"http://{url_host(args.host)}:{server.port}{server.prefix}/"
    record = discovery_record.register(client.session, hostport, url)
    print(f"{READY_LINE} {server.port}", flush=True)
    os.dup2(2, 1)  # nothing else goes to the parent's pipe, which it may have closed

    if not args.detach:
        stdin = sys.stdin.fileno()
        os.set_blocking(stdin, False)

        def on_stdin() -> None:
            try:
                data = os.read(stdin, 4096)
            except BlockingIOError:
                return
            if not data:  # the parent is gone, however it died
                loop.remove_reader(stdin)
                stop.set()

        loop.add_reader(stdin, on_stdin)
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        if record:
            discovery_record.unregister(client.session, url)
        server.stop()
        feed.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="rayjupyter dashboard: %(message)s")
    logging.getLogger("tornado.access").setLevel(logging.ERROR)  # no line per refused request
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
