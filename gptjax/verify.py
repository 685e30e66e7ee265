"""`python -m gptjax.verify --workdir DIR`: check every checkpoint of a workdir against its digest.

One line per checkpoint, oldest first (see gptjax/checkpoint_digest.py for the digest):

    step 10: ok (14 files, 1.3 MB)
    step 20: FAILED: state/ocdbt.process_0/d/ab12 changed since the save
    step 30: not verified: no sha256sums.txt (saved by an older gptjax or another tool)

then the partial saves a stopped run left (`<step>.orbax-checkpoint-tmp`: never resumed from)
and the checkpoints moved aside (`DIR/corrupt_checkpoints/`). Exit code 0 when no checkpoint
fails, 1 when one does (train with --config.train.resume=previous to resume from the newest
one that verifies), 2 for bad input. Reads files only: no JAX, no devices.
"""

from __future__ import annotations

import os
import sys

from gptjax import checkpoint_digest as digest
from gptjax.cli import ArgumentParser, exit_on_user_error
from gptjax.errors import GptjaxError

TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax's name for a step folder being written
CORRUPT_DIR = "corrupt_checkpoints"  # (gptjax.checkpoint.CORRUPT_DIR, without importing JAX)


def verify_step(step_dir: str) -> tuple[bool, str]:
    """(passed, one-line report) for one step folder; no digest counts as passed, unverified."""
    try:
        expected = digest.read(step_dir)
    except digest.BadDigestFile as e:
        return False, f"FAILED: {e}"
    if expected is None:
        return True, (f"not verified: no {digest.DIGEST_FILE} (saved by an older gptjax or "
                      "another tool)")
    bad = digest.check(step_dir, expected)
    if bad is not None:
        return False, f"FAILED: {bad.file} {bad.reason}"
    size = sum(os.path.getsize(os.path.join(step_dir, *rel.split("/"))) for rel in expected)
    return True, f"ok ({len(expected)} files, {size / 2**20:.1f} MB)"


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    ap = ArgumentParser(prog="python -m gptjax.verify", description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", required=True, help="a gptjax training workdir")
    args = ap.parse_args(sys.argv[1:] if argv is None else argv)
    workdir = args.workdir
    if not os.path.isdir(workdir):
        what = "is a file, not a directory" if os.path.exists(workdir) else "no such directory"
        raise GptjaxError(f"--workdir {workdir}: {what}; pass the workdir of a gptjax run")
    directory = os.path.join(workdir, "checkpoints")
    steps = digest.committed_steps(directory)
    if not steps:
        raise GptjaxError(f"--workdir {workdir} holds no checkpoint ({directory} has none); pass "
                          "the workdir of a run that saved one")
    failed = 0
    for step in steps:
        ok, report = verify_step(os.path.join(directory, str(step)))
        failed += not ok
        print(f"step {step}: {report}", flush=True)
    partial = sorted(n for n in os.listdir(directory) if n.endswith(TMP_SUFFIX))
    if partial:
        print(f"partial saves (never resumed from): {', '.join(partial)}")
    aside = os.path.join(workdir, CORRUPT_DIR)
    if os.path.isdir(aside) and os.listdir(aside):
        print(f"moved aside earlier: {', '.join(sorted(os.listdir(aside)))} in {aside}")
    if failed:
        print(f"gptjax: {failed} of {len(steps)} checkpoints fail their digest; train with "
              "--config.train.resume=previous to resume from the newest one that verifies",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
