"""Load on `python -m gptjax.serve`: 1, 4, 16, 64 concurrent streaming clients on 127.0.0.1.

    python benchmarks/serve.py --workdir runs/shakespeare_char [--slots 16] [--max_tokens 40]

Starts the real server command on a free port of 127.0.0.1 (its own process, warmed up before
it listens), then for each client count C runs C clients that each send streamed chat
completions one after another (the official `openai` async client, sampling at temperature
0.8 with a seed per request) until C x --rounds requests are done or --level_timeout seconds
pass; the levels alternate over --repeats passes (the machine's load drifts) and tokens/s is
the median pass. Per level: total completion tokens per second of wall time, time to first
token and per-request latency (p50 / p99 over every request), requests, errors. Then the same
load on an in-process engine without HTTP (--no-engine to skip): what the decoder sustains.
With more clients than slots the extra requests wait for a slot: their wait is in TTFT and
latency, not in the errors. Bounded: at most 64 x --rounds requests per level, every level
under --level_timeout, the server stopped with Ctrl-C (SIGINT) at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Lower-case letters and punctuation only, so that any char tokenizer encodes them.
PROMPTS = ["what say you?", "o, speak again", "to be, or not", "who is there?", "my lord,",
           "good night, sweet", "come hither, sir.", "now is the winter"]


def start_server(args) -> tuple[subprocess.Popen, str]:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "-m", "gptjax.serve", "--workdir", args.workdir, "--host",
           "127.0.0.1", "--port", "0", "--slots", str(args.slots), "--steps_per_call",
           str(args.steps_per_call), "--log_level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read():
        for line in proc.stderr:
            lines.append(line)
            sys.stderr.write("  server: " + line)
    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        hit = [x for x in lines if " on http://" in x]
        if hit:
            return proc, hit[0].split(" on ")[-1].strip().rstrip("/")
        time.sleep(0.1)
    proc.kill()
    raise SystemExit("the server did not start:\n" + "".join(lines))


async def one_request(client, model: str, i: int, max_tokens: int) -> dict:
    """One streamed chat completion with the `openai` client: TTFT, latency, tokens."""
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    try:
        stream = await client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
            max_tokens=max_tokens, temperature=0.8, seed=i, stream=True,
            stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content and ttft is None:
                ttft = time.perf_counter() - t0
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
    except Exception as e:  # counted, not raised: the table reports errors
        return dict(error=f"{type(e).__name__}: {e}")
    return dict(ttft=ttft, latency=time.perf_counter() - t0, tokens=tokens)


async def one_request_raw(client, model: str, i: int, max_tokens: int) -> dict:
    """The same request read as plain server-sent events (httpx2, which `openai` uses
    underneath), without building the client's objects for every chunk."""
    t0 = time.perf_counter()
    ttft, tokens = None, 0
    body = dict(model=model, messages=[{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                max_tokens=max_tokens, temperature=0.8, seed=i, stream=True,
                stream_options={"include_usage": True})
    try:
        async with client.stream("POST", "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                return dict(error=f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
            async for line in r.aiter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return dict(error=chunk["error"]["message"])
                if ttft is None and chunk["choices"] and chunk["choices"][0]["delta"].get(
                        "content"):
                    ttft = time.perf_counter() - t0
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
    except Exception as e:
        return dict(error=f"{type(e).__name__}: {e}")
    return dict(ttft=ttft, latency=time.perf_counter() - t0, tokens=tokens)


async def level(url: str, model: str, clients: int, args) -> tuple[list[dict], float]:
    """One load level over HTTP: (per-request results, wall seconds)."""
    if args.client == "openai":
        import openai
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                                    timeout=args.level_timeout)
        send = one_request
    else:
        import httpx2
        client = httpx2.AsyncClient(base_url=url, timeout=args.level_timeout,
                                    limits=httpx2.Limits(max_connections=clients))
        send = one_request_raw
    counter = iter(range(clients * args.rounds))
    results: list[dict] = []
    t_end = time.perf_counter() + args.level_timeout

    async def worker():
        for i in counter:
            if time.perf_counter() > t_end:
                return
            results.append(await send(client, model, i, args.max_tokens))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    await (client.close() if args.client == "openai" else client.aclose())
    return results, wall


def engine_level(engine, prompts: list[list[int]], clients: int, args
                 ) -> tuple[list[dict], float]:
    """The same load on an in-process Engine, no HTTP: what the decoder itself sustains."""
    from gptjax.serving.engine import Request
    counter = iter(range(clients * args.rounds))
    lock = threading.Lock()
    results: list[dict] = []

    def worker():
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            done = threading.Event()
            req = Request(prompts[i % len(prompts)], args.max_tokens, 0.8, 1.0, i,
                          on_token=lambda tok: False, on_done=lambda reason: done.set())
            engine.submit(req)
            done.wait()
            now = time.perf_counter()
            with lock:
                results.append(dict(ttft=req.first_token - req.submitted,
                                    latency=now - req.submitted, tokens=req.generated))

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, time.perf_counter() - t0


def summarize(clients: int, runs: list[tuple[list[dict], float]]) -> dict:
    """Pooled over the repeats of one level; tokens/s is the median of the repeats'."""
    everything = [r for results, _ in runs for r in results]
    ok = [r for r in everything if "error" not in r]
    errors = [r["error"] for r in everything if "error" in r]
    rates = [sum(r.get("tokens", 0) for r in results) / wall for results, wall in runs]
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    lat = [r["latency"] for r in ok]
    return dict(clients=clients, requests=len(everything), errors=len(errors),
                first_error=errors[0] if errors else None, tokens_per_s=float(np.median(rates)),
                tokens_per_s_runs=rates, ttft_p50=pct(ttft, 50), ttft_p99=pct(ttft, 99),
                latency_p50=pct(lat, 50), latency_p99=pct(lat, 99))


def table(title: str, rows: list[dict]) -> None:
    base = next((r["tokens_per_s"] for r in rows if r["clients"] == 1), None)
    print(f"\n{title}\n")
    print("| clients | requests | errors | tokens/s (median; runs) | vs 1 client | "
          "TTFT p50 / p99 (ms) | latency p50 / p99 (ms) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        speedup = f"{r['tokens_per_s'] / base:.1f}x" if base else "-"
        runs = ", ".join(f"{x:,.0f}" for x in r["tokens_per_s_runs"])
        print(f"| {r['clients']} | {r['requests']} | {r['errors']} | "
              f"{r['tokens_per_s']:,.0f} ({runs}) | {speedup} | "
              f"{r['ttft_p50'] * 1e3:,.0f} / {r['ttft_p99'] * 1e3:,.0f} | "
              f"{r['latency_p50'] * 1e3:,.0f} / {r['latency_p99'] * 1e3:,.0f} |")


def run_engine(args, levels: list[int]) -> list[dict]:
    from gptjax import workdir as workdir_lib
    from gptjax.data.tokenizer import EOS
    from gptjax.serving.engine import Engine
    model = workdir_lib.load(args.workdir)
    stop = {model.tokenizer.specials[EOS]} if EOS in model.tokenizer.specials else set()
    engine = Engine(model.params, model.cfg, args.slots, frozenset(stop),
                    steps_per_call=args.steps_per_call)
    engine.warmup()
    engine.start()
    prompts = [model.tokenizer.encode(p + "\n") for p in PROMPTS]
    try:
        runs = {c: [] for c in levels}
        for _ in range(args.repeats):
            for c in levels:
                runs[c].append(engine_level(engine, prompts, c, args))
    finally:
        engine.stop()
    return [summarize(c, runs[c]) for c in levels]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="a trained gptjax workdir")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--max_tokens", type=int, default=40,
                    help="per request (the prompts are <= 18 characters: fits a context of 64)")
    ap.add_argument("--steps_per_call", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=4, help="requests per client and level")
    ap.add_argument("--repeats", type=int, default=3,
                    help="passes over the levels, alternating (a loaded machine drifts)")
    ap.add_argument("--level_timeout", type=float, default=120.0)
    ap.add_argument("--client", choices=["openai", "sse"], default="openai",
                    help="the official client, or plain server-sent events over httpx2 "
                    "(less client CPU on a machine the clients share with the server)")
    ap.add_argument("--engine", action=argparse.BooleanOptionalAction, default=True,
                    help="also run the levels on an in-process engine without HTTP")
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    proc, url = start_server(args)
    model = os.path.basename(os.path.normpath(args.workdir))
    runs: dict[int, list] = {c: [] for c in levels}
    try:
        asyncio.run(level(url, model, 1, argparse.Namespace(**{**vars(args), "rounds": 2})))
        for _ in range(args.repeats):
            for c in levels:
                runs[c].append(asyncio.run(level(url, model, c, args)))
                print(f"  {c} clients: {summarize(c, runs[c][-1:])['tokens_per_s']:,.0f} "
                      "tokens/s", file=sys.stderr, flush=True)
        with open(f"/proc/{proc.pid}/status") as f:
            rss = next(x for x in f if x.startswith("VmHWM")).split()[1]
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    rows = [summarize(c, runs[c]) for c in levels]
    table(f"HTTP, {args.client} clients ({model}: {args.slots} slots, "
          f"{args.steps_per_call} steps per call, "
          f"max_tokens {args.max_tokens}, streamed, temperature 0.8, {args.repeats} "
          f"alternating passes; server peak RSS {int(rss) / 1024:.0f} MiB; exit code on "
          f"Ctrl-C {code})", rows)
    engine_rows = run_engine(args, levels) if args.engine else []
    if engine_rows:
        table("the engine alone (same load, in-process, no HTTP)", engine_rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"http": rows, "engine": engine_rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
