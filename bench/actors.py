"""Actor runtime benchmarks. Prints one JSON object per figure, each next to a baseline
measured in the same run (so the ratio holds on a noisy machine):

- tell throughput of one actor vs a bare anyio memory object stream;
- ask round trips of one actor vs a bare future round trip (a server task taking
  (request, future) pairs from a queue);
- domain activations: 100,000 fresh keys, each asked once by 100 concurrent
  clients, with max_active=10,000 (activations/s) vs a bare "activation" (a task
  started per key by a task group, answering one future; also shown: a task made
  with loop.create_task alone), in interleaved rounds: the ratio is the median of
  the per-round ratios, and every round is printed. The domain runs as a system runs
  it by default (the garbage collector's youngest threshold raised, ``fiefdom._gc``),
  and also opted out of that (``tune_gc=False``) and under the settings the daemon
  applies once started (start-up frozen too; docs/performance.md);
- peak RSS after touching 1,000,000 distinct keys with max_active=10,000, in a fresh
  process, with the RSS at 100,000 keys to show it stops growing at the cap.

Run: ``.venv/bin/python bench/actors.py`` (uvloop is used when installed: the ``fast``
extra). ``--quick`` runs smaller sizes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import resource
import subprocess
import sys
import time
from typing import Any

import anyio
import msgspec
import structlog

import fiefdom
from fiefdom._gc import tune_gc


def loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


def run(main: Any, *args: Any) -> Any:
    return anyio.run(main, *args, backend_options={"use_uvloop": loop_name() == "uvloop"})


def emit(figure: str, **fields: Any) -> None:
    print(json.dumps({"figure": figure, "loop": loop_name(), **fields}), flush=True)


def best_of(rounds: int, measure: Any, *args: Any) -> float:
    """The best rate of a few rounds: the machine is shared, noise only ever slows."""
    return max(run(measure, *args) for _ in range(rounds))


# -- tell throughput ---------------------------------------------------------------


class Tick(msgspec.Struct):
    n: int


class Count(fiefdom.Request[int]):
    pass


class Counter(fiefdom.Actor[Tick | Count]):
    def __init__(self, key: object = None) -> None:
        self.count = 0

    async def receive(self, msg: Tick | Count) -> int | None:
        if type(msg) is Tick:
            self.count += 1
            return None
        return self.count


async def actor_tells(n: int) -> float:
    async with fiefdom.ActorSystem(name="bench") as system:
        ref = await system.spawn(Counter, name="counter")
        msg = Tick(1)
        tell = ref.tell
        start = time.perf_counter()
        for _ in range(n):
            await tell(msg)
        assert await ref.ask(Count(), timeout=None) == n
        return n / (time.perf_counter() - start)


async def queue_puts(n: int) -> float:
    """For reference: a bare asyncio.Queue of the same capacity."""
    queue: asyncio.Queue[object] = asyncio.Queue(fiefdom.actors.DEFAULT_CAPACITY)
    done = anyio.Event()

    async def consumer() -> None:
        for _ in range(n):
            await queue.get()
        done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        msg = Tick(1)
        start = time.perf_counter()
        for _ in range(n):
            await queue.put(msg)
        await done.wait()
        return n / (time.perf_counter() - start)


async def stream_sends(n: int) -> float:
    send, receive = anyio.create_memory_object_stream[object](fiefdom.actors.DEFAULT_CAPACITY)
    done = anyio.Event()

    async def consumer() -> None:
        count = 0
        async with receive:
            async for _ in receive:
                count += 1
                if count == n:
                    done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        msg = Tick(1)
        start = time.perf_counter()
        async with send:
            for _ in range(n):
                await send.send(msg)
            await done.wait()
        return n / (time.perf_counter() - start)


# -- ask round trips ---------------------------------------------------------------


async def actor_asks(n: int, timeout: float | None) -> float:
    async with fiefdom.ActorSystem(name="bench") as system:
        ref = await system.spawn(Counter, name="counter")
        msg = Count()
        ask = ref.ask
        start = time.perf_counter()
        for _ in range(n):
            await ask(msg, timeout=timeout)
        return n / (time.perf_counter() - start)


async def future_round_trips(n: int) -> float:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[object, asyncio.Future[int]]] = asyncio.Queue(
        fiefdom.actors.DEFAULT_CAPACITY
    )

    async def server() -> None:
        count = 0
        while True:
            _, future = await queue.get()
            count += 1
            future.set_result(count)

    async with anyio.create_task_group() as tg:
        tg.start_soon(server)
        msg = Count()
        start = time.perf_counter()
        for _ in range(n):
            future = loop.create_future()
            await queue.put((msg, future))
            await future
        rate = n / (time.perf_counter() - start)
        tg.cancel_scope.cancel()
    return rate


# -- domain activations ---------------------------------------------------------------


async def domain_asks(
    keys: int, max_active: int, clients: int, tune: bool = True
) -> dict[str, float]:
    async with fiefdom.ActorSystem(name="bench", tune_gc=tune) as system:
        domain = system.domain("keys", Counter, max_active=max_active, idle_timeout=None)
        msg = Count()

        async def client(offset: int) -> None:
            for key in range(offset, keys, clients):
                await domain.ask(key, msg, timeout=None)

        start = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for offset in range(clients):
                tg.start_soon(client, offset)
        elapsed = time.perf_counter() - start
        stats = domain.statistics()
        assert stats.activations == keys, stats
        assert stats.live <= max_active, stats
        return {"asks_per_s": keys / elapsed, "activations_per_s": stats.activations / elapsed}


async def bare_task_activations(keys: int, clients: int) -> float:
    """One task per key made with ``loop.create_task``, answering one future: the
    floor of any activation, without even a task group's bookkeeping."""
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    discard = tasks.discard

    async def key_task(request: asyncio.Future[None], reply: asyncio.Future[int]) -> None:
        await request
        reply.set_result(1)

    async def client(offset: int) -> None:
        for _ in range(offset, keys, clients):
            request: asyncio.Future[None] = loop.create_future()
            reply: asyncio.Future[int] = loop.create_future()
            task = loop.create_task(key_task(request, reply))
            tasks.add(task)
            task.add_done_callback(discard)
            request.set_result(None)
            await reply

    start = time.perf_counter()
    async with anyio.create_task_group() as clients_tg:
        for offset in range(clients):
            clients_tg.start_soon(client, offset)
    rate = keys / (time.perf_counter() - start)
    await asyncio.gather(*tasks)  # each has answered: they end at their next step
    return rate


async def bare_activations(keys: int, clients: int) -> float:
    """A task started per key by a task group, answering one future: a bare
    "activation" with the structured concurrency the domain gives its actors (the
    activation goal is set against this one)."""
    loop = asyncio.get_running_loop()

    async def key_task(request: asyncio.Future[None], reply: asyncio.Future[int]) -> None:
        await request
        reply.set_result(1)

    async with anyio.create_task_group() as tg:

        async def client(offset: int) -> None:
            for _ in range(offset, keys, clients):
                request: asyncio.Future[None] = loop.create_future()
                reply: asyncio.Future[int] = loop.create_future()
                tg.start_soon(key_task, request, reply)
                request.set_result(None)
                await reply

        start = time.perf_counter()
        async with anyio.create_task_group() as clients_tg:
            for offset in range(clients):
                clients_tg.start_soon(client, offset)
        return keys / (time.perf_counter() - start)


def with_daemon_gc(main: Any, *args: Any) -> float:
    """The rate under the garbage collector settings ``fiefdom serve`` applies once
    started (``fiefdom._gc.tune_gc``: start-up frozen, young threshold raised)."""
    undo = tune_gc({})
    try:
        return float(run(main, *args)["activations_per_s"])
    finally:
        undo()


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def activation_rounds(keys: int, max_active: int, clients: int, rounds: int) -> dict[str, Any]:
    """Interleaved rounds (the order flips each round), each in a fresh event loop
    after a full collection: the domain, then both baselines."""
    raw: list[dict[str, float]] = []
    for i in range(rounds):
        measures: list[tuple[str, Any]] = [
            ("domain", lambda: run(domain_asks, keys, max_active, clients)["activations_per_s"]),
            (
                "domain_untuned",
                lambda: run(domain_asks, keys, max_active, clients, False)["activations_per_s"],
            ),
            ("domain_daemon_gc", lambda: with_daemon_gc(domain_asks, keys, max_active, clients)),
            ("bare", lambda: run(bare_activations, keys, clients)),
            ("bare_task", lambda: run(bare_task_activations, keys, clients)),
        ]
        if i % 2:
            measures.reverse()
        rates: dict[str, float] = {}
        for name, measure in measures:
            gc.collect()
            rates[name] = measure()
        raw.append(rates)
    ratios = [r["domain"] / r["bare"] for r in raw]
    task_ratios = [r["domain"] / r["bare_task"] for r in raw]
    daemon_ratios = [r["domain_daemon_gc"] / r["bare"] for r in raw]
    untuned_ratios = [r["domain_untuned"] / r["bare"] for r in raw]
    return {
        "activations_per_s": round(median([r["domain"] for r in raw])),
        "baseline_per_s": round(median([r["bare"] for r in raw])),
        "baseline": "a task started per key by an anyio task group, answering one future",
        "ratio": round(median(ratios), 3),
        "goal": 0.6,
        "untuned_gc_activations_per_s": round(median([r["domain_untuned"] for r in raw])),
        "untuned_gc_ratio": round(median(untuned_ratios), 3),
        "daemon_gc_activations_per_s": round(median([r["domain_daemon_gc"] for r in raw])),
        "daemon_gc_ratio": round(median(daemon_ratios), 3),
        "create_task_baseline_per_s": round(median([r["bare_task"] for r in raw])),
        "ratio_to_create_task_baseline": round(median(task_ratios), 3),
        "rounds": [
            {
                "domain_per_s": round(r["domain"]),
                "untuned_gc_domain_per_s": round(r["domain_untuned"]),
                "daemon_gc_domain_per_s": round(r["domain_daemon_gc"]),
                "baseline_per_s": round(r["bare"]),
                "create_task_baseline_per_s": round(r["bare_task"]),
                "ratio": round(r["domain"] / r["bare"], 3),
                "untuned_gc_ratio": round(r["domain_untuned"] / r["bare"], 3),
                "daemon_gc_ratio": round(r["domain_daemon_gc"] / r["bare"], 3),
            }
            for r in raw
        ],
    }


# -- memory at a million keys ------------------------------------------------------------


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def touch_keys(keys: int, max_active: int, checkpoints: list[int]) -> dict[str, Any]:
    rss: dict[str, int] = {"before_kib": rss_kib()}
    async with fiefdom.ActorSystem(name="bench") as system:
        domain = system.domain("keys", Counter, max_active=max_active, idle_timeout=None)
        msg = Tick(1)
        start = time.perf_counter()
        for key in range(keys):
            await domain.tell(key, msg)
            if key + 1 in checkpoints:
                # Let the activations catch up before reading the RSS.
                await domain.ask(key, Count(), timeout=None)
                gc.collect()
                rss[f"at_{key + 1}_keys_kib"] = rss_kib()
        elapsed = time.perf_counter() - start
        stats = domain.statistics()
    return {
        "keys": keys,
        "max_active": max_active,
        "live_at_end": stats.live,
        "activations": stats.activations,
        "tells_per_s": round(keys / elapsed),
        **rss,
        "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
    }


def rss_figure(keys: int, max_active: int) -> None:
    checkpoints = sorted({max_active, 2 * max_active, keys // 10, keys // 2, keys})
    result = run(touch_keys, keys, max_active, checkpoints)
    at_tenth = result[f"at_{keys // 10}_keys_kib"]
    at_all = result[f"at_{keys}_keys_kib"]
    emit(
        "domain_rss",
        **result,
        baseline_rss_kib=result["before_kib"],
        growth_from_10pct_to_all_keys_kib=at_all - at_tenth,
    )


# -- main ------------------------------------------------------------------------------


def main() -> None:
    # Only the JSON figures go to stdout: the runtime's info logs are dropped.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--only", choices=["tell", "ask", "domain", "rss"], action="append")
    parser.add_argument("--rounds", type=int, default=5, help="domain activation rounds")
    parser.add_argument("--rss-keys", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    scale = 10 if args.quick else 1
    only = set(args.only or ["tell", "ask", "domain", "rss"])

    if args.rss_keys is not None:  # the child process of the rss figure
        rss_figure(args.rss_keys, 10_000)
        return

    if "tell" in only:
        n = 300_000 // scale
        actor = best_of(3, actor_tells, n)
        baseline = best_of(3, stream_sends, n)
        queue = best_of(3, queue_puts, n)
        emit(
            "tell_throughput",
            messages=n,
            actor_per_s=round(actor),
            baseline_per_s=round(baseline),
            baseline="anyio memory object stream",
            ratio=round(actor / baseline, 3),
            goal=0.5,
            asyncio_queue_per_s=round(queue),
            ratio_to_asyncio_queue=round(actor / queue, 3),
        )
    if "ask" in only:
        n = 100_000 // scale
        with_deadline = best_of(3, actor_asks, n, fiefdom.actors.DEFAULT_ASK_TIMEOUT)
        without_deadline = best_of(3, actor_asks, n, None)
        baseline = best_of(3, future_round_trips, n)
        emit(
            "ask_round_trips",
            asks=n,
            actor_per_s=round(with_deadline),
            actor_no_deadline_per_s=round(without_deadline),
            baseline_per_s=round(baseline),
            baseline="server task taking (request, future) pairs from an asyncio.Queue",
            ratio=round(with_deadline / baseline, 3),
            ratio_no_deadline=round(without_deadline / baseline, 3),
            goal=0.6,
        )
    if "domain" in only:
        keys, max_active, clients = 100_000 // scale, 10_000 // scale, 100
        result = activation_rounds(keys, max_active, clients, args.rounds)
        # Diagnostic: how much of an activation is left to the cyclic garbage collector
        # (it scans every live actor on each full collection).
        gc.collect()
        gc.disable()
        try:
            without_gc = run(domain_asks, keys, max_active, clients)["activations_per_s"]
        finally:
            gc.enable()
        emit(
            "domain_activations",
            keys=keys,
            max_active=max_active,
            concurrent_clients=clients,
            **result,
            activations_per_s_gc_disabled=round(without_gc),
        )
    if "rss" in only:
        # A fresh process: the peak RSS must not include the figures above.
        keys = 1_000_000 // scale
        subprocess.run([sys.executable, __file__, "--rss-keys", str(keys)], check=True)


if __name__ == "__main__":
    main()
