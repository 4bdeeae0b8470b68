"""Issue 14's benchmark: `imgclf serve` under load on localhost, one 28x28 PNG per request.

The server (default model trained one epoch on Fashion-MNIST) runs as its own process; the load
generator is an asyncio HTTP/1.1 client in this process with keep-alive connections, pinned to
other cores than the server where the machine has more than one. Measured, taking turns between
micro-batching on (the defaults) and off (--max-batch 1 --max-wait-ms 0), each against a fresh server:
- 1 client: latency p50 and p99;
- 16 and 64 concurrent clients: requests/s, p50/p99, errors;
- overload: requests started at twice the rate the server answered 64 clients at, each on a
  connection of its own (open loop, as new users arrive): only 200 and 503 answers are allowed, and
  the server's resident memory is sampled throughout.
Writes benchmarks/results/serve.{md,json}.

    python benchmarks/serve.py [--seconds 8] [--rounds 3] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
import common  # noqa: E402

BOUNDARY = "imgclfbench"


def request_bytes(host: str, png: bytes) -> bytes:
    body = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + png + f"\r\n--{BOUNDARY}--\r\n".encode()
    head = (f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def _exchange(reader, writer, payload: bytes) -> int:
    writer.write(payload)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    await reader.readexactly(length)
    return status


async def closed_loop(host: str, port: int, payload: bytes, clients: int, seconds: float) -> dict:
    """`clients` connections, each sending its next request when the last one is answered."""
    latencies, statuses = [], {}
    stop = time.perf_counter() + seconds

    async def client():
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < stop:
                start = time.perf_counter()
                status = await _exchange(reader, writer, payload)
                latencies.append(time.perf_counter() - start)
                statuses[status] = statuses.get(status, 0) + 1
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    elapsed = time.perf_counter() - began
    return _figures(latencies, statuses, elapsed)


async def open_loop(host: str, port: int, payload: bytes, rate: float, seconds: float) -> dict:
    """Requests started at `rate` per second whatever the answers, each on a new connection."""
    latencies, statuses, tasks = [], {}, []

    async def one():
        start = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(host, port)
            try:
                status = await asyncio.wait_for(_exchange(reader, writer, payload), 30)
            finally:
                writer.close()
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as err:
            status = f"connection: {type(err).__name__}"
        latencies.append(time.perf_counter() - start)
        statuses[status] = statuses.get(status, 0) + 1

    began = time.perf_counter()
    n = int(rate * seconds)
    for i in range(n):
        delay = began + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one()))
    await asyncio.gather(*tasks)
    return _figures(latencies, statuses, time.perf_counter() - began)


def _figures(latencies: list[float], statuses: dict, elapsed: float) -> dict:
    ms = np.array(latencies) * 1000 if latencies else np.zeros(1)
    ok = statuses.get(200, 0)
    return {"requests": len(latencies), "ok": ok, "requests/s": ok / elapsed, "p50 ms": float(np.percentile(ms, 50)),
            "p99 ms": float(np.percentile(ms, 99)), "statuses": {str(k): v for k, v in sorted(statuses.items(), key=str)}}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def halves(cores: list[int]) -> tuple[list[int], list[int]]:
    """The server's cores and the load generator's: half each (one each on 2 cores); all shared on one."""
    if len(cores) < 2:
        return cores, cores
    return cores[: len(cores) // 2], cores[len(cores) // 2:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="length of each measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--results", type=Path, default=common.RESULTS)
    parser.add_argument("--quick", action="store_true", help="a smoke test: tiny model, short runs, one round")
    args = parser.parse_args()
    import imgclf
    from serving import png_bytes, running_server

    seconds, rounds = (0.4, 1) if args.quick else (args.seconds, args.rounds)
    import gzip

    path = common.fashion_mnist_file("t10k-images-idx3-ubyte")
    data = gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()
    image = np.frombuffer(data, np.uint8, offset=16).reshape(-1, 28, 28)[0].copy()
    png = png_bytes(image)
    variants = {"micro-batching on (--max-batch 64 --max-wait-ms 2)": [],
                "micro-batching off (--max-batch 1 --max-wait-ms 0)": ["--max-batch", "1", "--max-wait-ms", "0"]}
    results: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        source = "digits" if args.quick else "fashion-mnist"
        run = imgclf.train(source, epochs=1, out=str(Path(tmp) / "runs"), device="cpu")
        if args.quick:
            png = png_bytes(np.zeros((8, 8), np.uint8))
        affinity = os.sched_getaffinity(0)
        server_cores, client_cores = halves(sorted(affinity))
        pinning = (f"server on core(s) {server_cores} (torch threads to match), load generator on {client_cores}"
                   if server_cores != client_cores else "one core, shared")
        for r in range(rounds):
            for name, flags in variants.items():
                os.sched_setaffinity(0, server_cores)  # the server inherits it, and sizes its torch threads by it
                with running_server(run.run_dir, *flags, "--max-queue", "256", env={"OMP_NUM_THREADS": None}) as server:
                    os.sched_setaffinity(0, client_cores)
                    host, port = server.url.removeprefix("http://").split(":")
                    payload = request_bytes(host, png)
                    asyncio.run(closed_loop(host, int(port), payload, 4, 0.5))  # warm the connections' code paths
                    row = {"variant": name, "round": r + 1}
                    for clients in (1, 16, 64):
                        row[f"{clients} clients"] = asyncio.run(closed_loop(host, int(port), payload, clients, seconds))
                    idle_rss = rss_mb(server.proc.pid)
                    rate = 2 * row["64 clients"]["requests/s"]
                    samples = []

                    async def overload():
                        async def sample():
                            while True:
                                samples.append(rss_mb(server.proc.pid))
                                await asyncio.sleep(0.25)

                        sampler = asyncio.create_task(sample())
                        try:
                            return await open_loop(host, int(port), payload, rate, seconds)
                        finally:
                            sampler.cancel()

                    row["overload"] = {**asyncio.run(overload()), "offered/s": rate, "rss idle MB": idle_rss,
                                       "rss max MB": max(samples) if samples else idle_rss}
                    results.setdefault(name, []).append(row)
                    print(name, {k: (v["requests/s"], v["p50 ms"], v["p99 ms"]) for k, v in row.items() if isinstance(v, dict)}, flush=True)
        os.sched_setaffinity(0, affinity)

    def med(name: str, what: str, key: str) -> float:
        return statistics.median(r[what][key] for r in results[name])

    on, off = list(variants)
    rows = []
    for name in variants:
        for what in ("1 clients", "16 clients", "64 clients"):
            errors = sum(v for r in results[name] for k, v in r[what]["statuses"].items() if k != "200")
            rows.append({"variant": name, "load": what.replace("1 clients", "1 client"), "requests/s (median)": med(name, what, "requests/s"),
                         "p50 ms": med(name, what, "p50 ms"), "p99 ms": med(name, what, "p99 ms"), "errors": errors,
                         "requests/s per round": " ".join(f"{r[what]['requests/s']:.0f}" for r in results[name])})
    overload_rows = []
    for name in variants:
        for r in results[name]:
            o = r["overload"]
            overload_rows.append({"variant": name, "round": r["round"], "offered/s": o["offered/s"], "answered 200/s": o["requests/s"],
                                  "statuses": " ".join(f"{k}: {v}" for k, v in o["statuses"].items()),
                                  "rss idle MB": o["rss idle MB"], "rss max MB": o["rss max MB"]})
    statuses = {k for name in variants for r in results[name] for k in r["overload"]["statuses"]}
    only_ok_or_503 = statuses <= {"200", "503"}
    p50_1 = med(on, "1 clients", "p50 ms")
    rps16, p99_16 = med(on, "16 clients", "requests/s"), med(on, "16 clients", "p99 ms")
    gain64 = med(on, "64 clients", "requests/s") / med(off, "64 clients", "requests/s")
    gain1 = med(on, "1 clients", "requests/s") / med(off, "1 clients", "requests/s")
    verdict = lambda ok: "met" if ok else "NOT met"  # noqa: E731
    summary = [
        f"Localhost, one 28x28 Fashion-MNIST PNG per request (multipart), the default model trained one epoch; {pinning}; "
        f"{rounds} round(s) of {seconds:g} s per load, the two settings taking turns, each on a fresh server.",
        f"1 client, batching on: p50 {p50_1:.2f} ms (target <= 5 ms: {verdict(p50_1 <= 5)}).",
        f"16 clients, batching on: {rps16:,.0f} requests/s, p99 {p99_16:.1f} ms (target >= 500 requests/s with p99 <= 60 ms: "
        f"{verdict(rps16 >= 500 and p99_16 <= 60)}).",
        f"Micro-batching at 64 clients: {gain64:.2f}x the requests/s of no batching (target >= 1.2x: {verdict(gain64 >= 1.2)}); "
        f"at 1 client {gain1:.2f}x (target: not worse, >= 0.95x: {verdict(gain1 >= 0.95)}).",
        f"Overload (twice the 64-client rate, open loop): answers {', '.join(sorted(statuses))} "
        f"({'only 200 and 503' if only_ok_or_503 else 'NOT only 200 and 503'}); server memory at most "
        f"{max(o['rss max MB'] for o in overload_rows):.0f} MB against {max(o['rss idle MB'] for o in overload_rows):.0f} MB before.",
    ]
    out = common.write("serve", rows, summary, {"results": results, "gain64": gain64, "gain1": gain1},
                       tables={"Overload": overload_rows}, folder=args.results)
    print(out.read_text())


if __name__ == "__main__":
    main()
