"""CPU per node-to-node RPC call, client and server in one process (no wrk, no HTTP).

    .venv/bin/python bench/rpc_calls.py [--calls 20000] [--window 32] [--repeats 5]

One `RpcServer` answering `Ping` at once and one `PeerClient` on uvloop over
loopback TCP, `--window` calls kept in flight through `start_call` (the
coordinator's path). Prints the process CPU time (user + system, both ends and
the kernel's loopback work) per call, best and median of `--repeats`. On a
shared machine the best of several is the figure to compare: other tenants add
time, never remove it. To compare two trees, run it once with
`PYTHONPATH=<other tree>/src` in front.

Every wait is bounded (a call's own timeout, 5 s); the server and client are
closed in `finally`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import uvloop

from dynakv.net.messages import Message, Ping, Pong
from dynakv.net.rpc import PeerClient, RpcServer

SECRET = b"bench cluster secret, 32 bytes!!"


def _answer(message: Message, sender: str) -> Message:
    assert isinstance(message, Ping)
    return Pong(sender=message.sender)


async def _measure(calls: int, window: int) -> float:
    """Process CPU seconds per call for ``calls`` calls, ``window`` in flight."""
    server = RpcServer(_answer, host="127.0.0.1", port=0, secret=SECRET, node_id="n2")
    await server.start()
    client = PeerClient(
        f"127.0.0.1:{server.bound_port}", secret=SECRET, node_id="n1", expected_node_id="n2"
    )
    try:
        await client.call(Ping(sender="warm"), 5000)
        message = Ping(sender="n1")
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        counts = {"sent": 0, "answered": 0}

        def on_answer(future: asyncio.Future[Message]) -> None:
            # A callback pump (no asyncio.wait): the harness costs little next to a call.
            future.result()
            counts["answered"] += 1
            if counts["sent"] < calls:
                send()
            elif counts["answered"] == calls and not finished.done():
                finished.set_result(None)

        def send() -> None:
            counts["sent"] += 1
            client.start_call(message, 5000).add_done_callback(on_answer)

        started = time.process_time()
        for _ in range(min(window, calls)):
            send()
        await asyncio.wait_for(finished, 5 + calls / 1000)
        return (time.process_time() - started) / calls
    finally:
        await client.close()
        await server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    assert 1 <= args.calls <= 10_000_000 and 1 <= args.window <= 4096 and 1 <= args.repeats <= 50
    results = [uvloop.run(_measure(args.calls, args.window)) * 1e6 for _ in range(args.repeats)]
    print(
        f"rpc call, {args.window} in flight: best {min(results):.1f} us CPU/call, "
        f"median {statistics.median(results):.1f} (each: "
        + ", ".join(f"{r:.1f}" for r in results)
        + ")"
    )


if __name__ == "__main__":
    main()
