"""What the checkpoint digest costs: save and restore of a train-state-sized pytree, with the
digest's share of each, on the machine at hand.

    python benchmarks/checkpoint_digest.py [--mb 512] [--repeats 3] [--out digest.json]

A sync `gptjax.checkpoint.Checkpointer` saves `--mb` MiB of float32 arrays (the digest is written
inside the save, by orbax's post-finalization hook); then the digest alone is recomputed
(`checkpoint_digest.write` on the committed folder: the hashing part of the save), checked
(`checkpoint_digest.check`: what every restore adds), and the checkpoint restored (which includes
that check). Repeats alternate; the table shows the median of each. GPT-2 124M's train state
(parameters + two Adam moments, float32) is about 1.5 GB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import SingleDeviceSharding

from gptjax import checkpoint_digest as digest
from gptjax.checkpoint import Checkpointer


def state_of(mb: int) -> dict:
    """mb MiB of float32 in 16 arrays (a train state has many, of mixed sizes)."""
    n = mb * 2**20 // 4 // 16
    rng = np.random.default_rng(0)
    return {f"a{i}": jnp.asarray(rng.standard_normal(n, dtype=np.float32)) for i in range(16)}


def once(mb: int) -> dict[str, float]:
    state = state_of(mb)
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(
        a.shape, a.dtype, sharding=SingleDeviceSharding(jax.devices()[0])), state)
    with tempfile.TemporaryDirectory() as wd:
        ckpt = Checkpointer(wd, async_save=False)
        try:
            t0 = time.perf_counter()
            ckpt.save(1, state)
            t1 = time.perf_counter()
            step_dir = ckpt.step_dir(1)
            digest.write(step_dir)
            t2 = time.perf_counter()
            assert digest.check(step_dir, digest.read(step_dir)) is None
            t3 = time.perf_counter()
            jax.block_until_ready(ckpt.restore(1, abstract))
            t4 = time.perf_counter()
        finally:
            ckpt.close()
    return {"save_s": t1 - t0, "digest_write_s": t2 - t1, "digest_check_s": t3 - t2,
            "restore_s": t4 - t3}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    runs = [once(args.mb) for _ in range(args.repeats)]
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    print(f"checkpoint of {args.mb} MiB, median of {args.repeats} (sha256 over every file):")
    print("| step | seconds | MiB/s | share |")
    print("|---|---:|---:|---:|")
    print(f"| save (digest included) | {med['save_s']:.2f} | {args.mb / med['save_s']:.0f} | |")
    print(f"| of which the digest | {med['digest_write_s']:.2f} | "
          f"{args.mb / med['digest_write_s']:.0f} | {med['digest_write_s'] / med['save_s']:.0%} |")
    print(f"| restore (check included) | {med['restore_s']:.2f} | "
          f"{args.mb / med['restore_s']:.0f} | |")
    print(f"| of which the check | {med['digest_check_s']:.2f} | "
          f"{args.mb / med['digest_check_s']:.0f} | "
          f"{med['digest_check_s'] / med['restore_s']:.0%} |")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"mb": args.mb, "runs": runs, "median": med}, f, indent=2)


if __name__ == "__main__":
    main()
