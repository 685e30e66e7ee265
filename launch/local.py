#!/usr/bin/env python3
"""Start N CPU processes of `python -m gptjax.train` over localhost: the multi-host path on one
machine (each process has its own simulated CPU devices; collectives go over gloo/TCP).

    python launch/local.py --num_processes 2 --devices_per_process 2 -- \
        --config configs/tiny.py --workdir runs/tiny_2proc

Everything after `--` goes to every process unchanged. Each process's output is written to
`<workdir>/logs/process_<i>.log` (process 0's is also echoed here). When one process fails the
others are stopped; the exit status is 0 only if every process succeeded.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

GRACE_S = 10  # how long stopped processes get to exit after SIGTERM before SIGKILL


def free_port() -> int:
    """A TCP port nobody listens on now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workdir_of(train_args: list[str]) -> str:
    """The --workdir the training command will use (its default: runs/<config name>)."""
    found = {}
    for i, a in enumerate(train_args):
        for name in ("workdir", "config"):
            if a == f"--{name}" and i + 1 < len(train_args):
                found[name] = train_args[i + 1]
            elif a.startswith(f"--{name}="):
                found[name] = a.split("=", 1)[1]
    if "workdir" in found:
        return found["workdir"]
    if "config" not in found:
        raise SystemExit("launch/local.py: error: pass the training flags after `--`, at least "
                         "--config configs/X.py")
    return os.path.join("runs", os.path.splitext(os.path.basename(found["config"]))[0])


def child_env(devices: int) -> dict[str, str]:
    """This environment with XLA's host device count set to `devices` for one process."""
    env = dict(os.environ)
    flags = re.sub(r"--xla_force_host_platform_device_count=\S+", "", env.get("XLA_FLAGS", ""))
    env["XLA_FLAGS"] = f"{flags.strip()} --xla_force_host_platform_device_count={devices}".strip()
    env["PYTHONUNBUFFERED"] = "1"
    env["JAX_PLATFORMS"] = env.get("JAX_PLATFORMS", "cpu")
    return env


def _pump(pipe, log_path: str, echo: bool) -> None:
    with open(log_path, "w", buffering=1) as log:
        for line in iter(pipe.readline, ""):
            log.write(line)
            if echo:
                sys.stdout.write(line)
                sys.stdout.flush()
    pipe.close()


def _describe(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM every running process, SIGKILL whatever is left after GRACE_S."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + GRACE_S
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(num_processes: int, devices_per_process: int, train_args: list[str],
           port: int | None = None, host: str = "127.0.0.1",
           python: str = sys.executable) -> int:
    """Run the processes to the end; the exit status of the launch (0: all succeeded)."""
    workdir = workdir_of(train_args)
    log_dir = os.path.join(workdir, "logs")
    os.makedirs(log_dir, exist_ok=True)
    address = f"{host}:{port or free_port()}"
    print(f"launch/local.py: {num_processes} processes x {devices_per_process} CPU devices, "
          f"coordinator {address}; logs in {log_dir}/process_<i>.log", flush=True)
    env = child_env(devices_per_process)
    procs, pumps = [], []
    for i in range(num_processes):
        cmd = [python, "-m", "gptjax.train", *train_args, "--coordinator_address", address,
               "--num_processes", str(num_processes), "--process_id", str(i)]
        p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)
        t = threading.Thread(target=_pump, daemon=True,
                             args=(p.stdout, os.path.join(log_dir, f"process_{i}.log"), i == 0))
        t.start()
        procs.append(p)
        pumps.append(t)

    interrupted = []

    def forward(signum, frame):  # Ctrl-C: every process saves a checkpoint and stops
        interrupted.append(signum)
        for p in procs:
            if p.poll() is None:
                p.send_signal(signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    failed = None
    try:
        while failed is None and any(p.poll() is None for p in procs):
            if not interrupted:  # after a forwarded signal, let every process finish its save
                failed = next((i for i, p in enumerate(procs) if p.poll() not in (None, 0)),
                              None)
            time.sleep(0.1)
        if failed is None:
            failed = next((i for i, p in enumerate(procs) if p.returncode != 0), None)
        if failed is not None:
            code = procs[failed].returncode
            running = [i for i, p in enumerate(procs) if p.poll() is None]
            print(f"launch/local.py: process {failed} {_describe(code)}; see "
                  f"{log_dir}/process_{failed}.log"
                  + (f". Stopping processes {running}." if running else ""),
                  file=sys.stderr, flush=True)
            _stop(procs)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    for t in pumps:
        t.join(5)
    if failed is None:
        return 0
    code = procs[failed].returncode
    return 128 - code if code < 0 else code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        cut = argv.index("--")
        own, train_args = argv[:cut], argv[cut + 1:]
    else:
        own, train_args = argv, []
    ap = argparse.ArgumentParser(
        prog="python launch/local.py",
        usage="python launch/local.py --num_processes N [--devices_per_process D] [--port P] "
              "-- --config configs/X.py [--workdir DIR] [training flags ...]",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--num_processes", type=int, required=True)
    ap.add_argument("--devices_per_process", type=int, default=1,
                    help="simulated CPU devices in each process (default 1)")
    ap.add_argument("--port", type=int, default=None, help="coordinator port (default: a free one)")
    args = ap.parse_args(own)
    if args.num_processes < 1 or args.devices_per_process < 1:
        ap.error("--num_processes and --devices_per_process must be at least 1")
    return launch(args.num_processes, args.devices_per_process, train_args, args.port)


if __name__ == "__main__":
    sys.exit(main())
