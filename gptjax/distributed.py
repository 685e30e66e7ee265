"""Joining JAX's multi-controller runtime (one process per host) before any backend starts.

A run is multi-process when the coordinator flags or GPTJAX_* variables say so, or when the
environment is a multi-task cluster launch that `jax.distributed.initialize()` detects by itself
(SLURM with more than one task, Open MPI, a Cloud TPU pod: set GPTJAX_DISTRIBUTED=auto there).
Otherwise nothing happens and the run is the single-process case of the same code path.

Every wait is bounded by one timeout (`--distributed_timeout`, default 60 s): joining the run,
noticing that a peer died (the coordination service's heartbeat) and the shutdown barrier.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import threading
from collections.abc import Mapping

from gptjax.errors import GptjaxError

DEFAULT_TIMEOUT_S = 60
ENV = {"coordinator_address": "GPTJAX_COORDINATOR_ADDRESS",
       "num_processes": "GPTJAX_NUM_PROCESSES",
       "process_id": "GPTJAX_PROCESS_ID",
       "timeout_s": "GPTJAX_DISTRIBUTED_TIMEOUT"}
AUTO_ENV = "GPTJAX_DISTRIBUTED"  # "auto": let jax detect the cluster (TPU pods)


@dataclasses.dataclass(frozen=True)
class Options:
    """How this process joins a multi-process run; all None = decide from the environment."""

    coordinator_address: str | None = None  # host:port of process 0
    num_processes: int | None = None
    process_id: int | None = None
    timeout_s: int | None = None  # None: GPTJAX_DISTRIBUTED_TIMEOUT or DEFAULT_TIMEOUT_S


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise GptjaxError(f"{name}={raw!r} is not an integer; set it to a whole number or unset "
                          "it") from None


def resolve(opts: Options | None = None, env: Mapping[str, str] | None = None) -> Options:
    """Flags first, then GPTJAX_* environment variables; checks what can be checked alone."""
    env = os.environ if env is None else env
    opts = opts or Options()
    timeout = opts.timeout_s
    if timeout is None:
        timeout = _env_int(env, ENV["timeout_s"])
    timeout = DEFAULT_TIMEOUT_S if timeout is None else timeout
    out = Options(
        coordinator_address=opts.coordinator_address or env.get(ENV["coordinator_address"]) or None,
        num_processes=(opts.num_processes if opts.num_processes is not None
                       else _env_int(env, ENV["num_processes"])),
        process_id=(opts.process_id if opts.process_id is not None
                    else _env_int(env, ENV["process_id"])),
        timeout_s=timeout)
    if out.timeout_s < 1:
        raise GptjaxError(f"--distributed_timeout={out.timeout_s}: give a positive number of "
                          "seconds (default 60)")
    given = [out.coordinator_address is not None, out.num_processes is not None,
             out.process_id is not None]
    if any(given) and not all(given):
        raise GptjaxError(
            "a multi-process run needs all of --coordinator_address HOST:PORT, --num_processes N "
            "and --process_id I (or GPTJAX_COORDINATOR_ADDRESS, GPTJAX_NUM_PROCESSES, "
            f"GPTJAX_PROCESS_ID); got {_describe(out)}. Give all three, or none for one process.")
    if out.num_processes is not None:
        if out.num_processes < 1:
            raise GptjaxError(f"--num_processes={out.num_processes}: must be at least 1")
        if not 0 <= out.process_id < out.num_processes:
            raise GptjaxError(
                f"--process_id={out.process_id} is outside 0..{out.num_processes - 1} for "
                f"--num_processes={out.num_processes}: number the processes 0, 1, ..., N-1.")
        if ":" not in out.coordinator_address:
            raise GptjaxError(f"--coordinator_address={out.coordinator_address!r} lacks a port: "
                              "give HOST:PORT of process 0, e.g. 10.0.0.1:1234")
    return out


def _describe(o: Options) -> str:
    return (f"coordinator_address={o.coordinator_address}, num_processes={o.num_processes}, "
            f"process_id={o.process_id}")


def cluster_launch(env: Mapping[str, str] | None = None) -> str | None:
    """The cluster launcher that started this process as one of several, if any."""
    env = os.environ if env is None else env
    if env.get(AUTO_ENV, "").lower() == "auto":
        return "auto"
    slurm = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
    if all(k in env for k in slurm) and (_env_int(env, "SLURM_NTASKS") or 1) > 1:
        return "SLURM"
    if (_env_int(env, "OMPI_COMM_WORLD_SIZE") or 1) > 1:
        return "Open MPI"
    for var in ("TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES"):  # multi-host TPU on GKE
        if len([h for h in env.get(var, "").split(",") if h]) > 1:
            return "TPU pod"
    return None


def is_multiprocess(opts: Options | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Whether the flags or the environment ask for more than one process."""
    o = resolve(opts, env)
    return (o.num_processes or 1) > 1 or cluster_launch(env) is not None


def initialize(opts: Options | None = None) -> bool:
    """Join the multi-process run the flags or the environment describe (True), else do nothing
    (False). Call before anything starts a JAX backend; a second call is a no-op."""
    import jax

    o = resolve(opts)
    cluster = cluster_launch()
    if (o.num_processes or 1) <= 1 and cluster is None:
        return False
    if jax.distributed.is_initialized():
        return True
    from jax._src import xla_bridge
    if xla_bridge.backends_are_initialized():
        raise GptjaxError(
            "JAX started its devices before the distributed runtime: call "
            "gptjax.train.run (or gptjax.distributed.initialize) before any other JAX "
            "computation in this process, e.g. in a fresh notebook kernel.")
    # CPU processes exchange collectives over TCP (gloo); ignored by GPU and TPU backends.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    what = (f"process {o.process_id} of {o.num_processes} (coordinator "
            f"{o.coordinator_address})" if o.num_processes is not None
            else f"the {cluster} launch")
    hint = ("Check that the coordinator (process 0) is running and reachable at that "
            "address, that all processes were started with the same --coordinator_address and "
            "--num_processes, and raise --distributed_timeout if hosts start slowly."
            if o.num_processes is not None else
            "Check that every task of the job started (under SLURM: one process per task, "
            "started by srun), or raise --distributed_timeout.")
    # jax aborts the process (a C++ fatal error) when joining times out, so a watchdog gives
    # the clear message first: jax's own deadline is set a little later than ours.
    done = threading.Event()

    def watchdog():
        if not done.wait(o.timeout_s):
            print(f"gptjax: error: could not join the distributed run as {what} within "
                  f"{o.timeout_s} s. {hint}", file=sys.stderr, flush=True)
            os._exit(2)

    threading.Thread(target=watchdog, name="gptjax-distributed-init", daemon=True).start()
    try:
        jax.distributed.initialize(
            coordinator_address=o.coordinator_address, num_processes=o.num_processes,
            process_id=o.process_id, initialization_timeout=o.timeout_s + 10,
            heartbeat_timeout_seconds=o.timeout_s, shutdown_timeout_seconds=o.timeout_s)
    except (ValueError, RuntimeError) as e:  # auto-detection found nothing usable
        raise GptjaxError(f"could not join the distributed run as {what}: {e}. {hint}") from None
    finally:
        done.set()
    return True
