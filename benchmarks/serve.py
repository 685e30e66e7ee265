"""Load on `python -m gptjax.serve`: 1, 4, 16, 64 concurrent streaming clients on 127.0.0.1.

    python benchmarks/serve.py --workdir runs/shakespeare_char [--slots 16] [--max_tokens 48]

Starts the real server command on a free port of 127.0.0.1 (its own process, warmed up before
it listens), then for each client count C runs C clients that each send streamed chat
completions one after another (the official `openai` async client, sampling at temperature
0.8 with a seed per request) until C x --rounds requests are done or --level_timeout seconds
pass. Per level: total completion tokens per second of wall time, time to first token and
per-request latency (p50 / p99), requests, errors. With more clients than slots the extra
requests wait for a slot: their wait is in TTFT and latency, not in the errors. Bounded: at
most 64 x --rounds requests per level, every level under --level_timeout, the server stopped
with Ctrl-C (SIGINT) at the end.
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
           "127.0.0.1", "--port", "0", "--slots", str(args.slots), "--log_level", "warning"]
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


async def level(url: str, model: str, clients: int, args) -> dict:
    import openai
    total = clients * args.rounds
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0,
                                timeout=args.level_timeout)
    counter = iter(range(total))
    results: list[dict] = []
    t_end = time.perf_counter() + args.level_timeout

    async def worker():
        for i in counter:
            if time.perf_counter() > t_end:
                return
            results.append(await one_request(client, model, i, args.max_tokens))

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    wall = time.perf_counter() - t0
    await client.close()
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    pct = lambda xs, q: float(np.percentile(xs, q)) if xs else float("nan")  # noqa: E731
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    lat = [r["latency"] for r in ok]
    return dict(clients=clients, requests=len(results), errors=len(errors),
                first_error=errors[0] if errors else None,
                tokens=sum(r["tokens"] for r in ok), wall_s=wall,
                tokens_per_s=sum(r["tokens"] for r in ok) / wall,
                ttft_p50=pct(ttft, 50), ttft_p99=pct(ttft, 99),
                latency_p50=pct(lat, 50), latency_p99=pct(lat, 99))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="a trained gptjax workdir")
    ap.add_argument("--clients", default="1,4,16,64")
    ap.add_argument("--slots", type=int, default=16)
    ap.add_argument("--max_tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=4, help="requests per client and level")
    ap.add_argument("--level_timeout", type=float, default=120.0)
    ap.add_argument("--json", default=None, help="also write the rows to this file")
    args = ap.parse_args()
    proc, url = start_server(args)
    model = os.path.basename(os.path.normpath(args.workdir))
    rows = []
    try:
        asyncio.run(level(url, model, 1, argparse.Namespace(**{**vars(args), "rounds": 2})))
        for c in map(int, args.clients.split(",")):
            row = asyncio.run(level(url, model, c, args))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        with open(f"/proc/{proc.pid}/status") as f:
            rss = next(x for x in f if x.startswith("VmHWM")).split()[1]
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(60)
    base = rows[0]["tokens_per_s"] if rows and rows[0]["clients"] == 1 else None
    print(f"\n{model}: {args.slots} slots, max_tokens {args.max_tokens}, streamed, "
          f"temperature 0.8; server peak RSS {int(rss) / 1024:.0f} MiB; exit code on SIGINT "
          f"{code}\n")
    print("| clients | requests | errors | tokens/s | vs 1 client | TTFT p50 / p99 (ms) | "
          "latency p50 / p99 (ms) |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        speedup = f"{r['tokens_per_s'] / base:.1f}x" if base else "-"
        print(f"| {r['clients']} | {r['requests']} | {r['errors']} | {r['tokens_per_s']:,.0f} | "
              f"{speedup} | {r['ttft_p50'] * 1e3:,.0f} / {r['ttft_p99'] * 1e3:,.0f} | "
              f"{r['latency_p50'] * 1e3:,.0f} / {r['latency_p99'] * 1e3:,.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
