#!/usr/bin/env bash
# Run `python -m gptjax.train` on every worker of a Cloud TPU VM pod slice, one process per host.
#
#   launch/tpu_pod.sh TPU_NAME ZONE RUN_NAME --config configs/gpt2_124m.py [--config.a.b=v ...]
#
# Every worker runs the same command from its own checkout (REPO_DIR, default ~/gptjax) with
# GPTJAX_DISTRIBUTED=auto: jax.distributed.initialize() then finds the coordinator, the process
# count and this worker's index from the TPU metadata server. The run's workdir is
# $RUNS_DIR/RUN_NAME; RUNS_DIR must be one folder all workers share (a gcsfuse or NFS mount),
# because orbax writes each checkpoint cooperatively from every host. Each worker's output goes
# to $RUNS_DIR/RUN_NAME/logs/process_<worker>.log (and process 0's also to this terminal).
#
# Environment: RUNS_DIR (required), REPO_DIR, PROJECT (gcloud project), SETUP (a command run
# first on every worker, e.g. "pip install -e '.[tpu]'"), GPTJAX_DISTRIBUTED_TIMEOUT (seconds to
# wait for the other workers, default 60). Untested here: written for gcloud's `tpu-vm ssh`.
set -euo pipefail

if [[ $# -lt 4 ]]; then
  echo "usage: RUNS_DIR=/mnt/shared/runs $0 TPU_NAME ZONE RUN_NAME --config configs/X.py [flags]" >&2
  exit 2
fi
TPU_NAME=$1 ZONE=$2 RUN_NAME=$3
shift 3
: "${RUNS_DIR:?set RUNS_DIR to a folder every TPU worker mounts (gcsfuse or NFS)}"
REPO_DIR=${REPO_DIR:-'~/gptjax'}
WORKDIR="$RUNS_DIR/$RUN_NAME"

# Quote the training flags once for the remote shell.
TRAIN_ARGS=$(printf '%q ' "$@")
WORKER='$(curl -s -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number)'
REMOTE="set -o pipefail; cd $REPO_DIR && ${SETUP:+$SETUP && }mkdir -p $(printf '%q' "$WORKDIR")/logs && \
GPTJAX_DISTRIBUTED=auto GPTJAX_DISTRIBUTED_TIMEOUT=${GPTJAX_DISTRIBUTED_TIMEOUT:-60} PYTHONUNBUFFERED=1 \
python3 -m gptjax.train $TRAIN_ARGS --workdir $(printf '%q' "$WORKDIR") 2>&1 \
| tee $(printf '%q' "$WORKDIR")/logs/process_$WORKER.log"

echo "tpu_pod.sh: $TPU_NAME ($ZONE), run $RUN_NAME; logs in $WORKDIR/logs/process_<worker>.log" >&2
exec gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" ${PROJECT:+--project "$PROJECT"} \
  --worker=all --command "$REMOTE"
