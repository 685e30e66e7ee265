"""gptjax.distributed without starting processes: flags, GPTJAX_* variables, cluster detection.
(Real multi-process runs are in test_multihost.py.)"""

import pytest

from conftest import ROOT
from gptjax import distributed
from gptjax.cli import train_args_from_argv
from gptjax.distributed import Options
from gptjax.errors import GptjaxError

TINY = str(ROOT / "configs" / "tiny.py")
SLURM = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "node[001-002]", "SLURM_PROCID": "1",
         "SLURM_LOCALID": "0"}


def test_flags_win_over_environment():
    env = {"GPTJAX_COORDINATOR_ADDRESS": "h:1", "GPTJAX_NUM_PROCESSES": "4",
           "GPTJAX_PROCESS_ID": "3", "GPTJAX_DISTRIBUTED_TIMEOUT": "7"}
    assert distributed.resolve(None, env) == Options("h:1", 4, 3, 7)
    got = distributed.resolve(Options("x:2", 2, 0, None), env)
    assert got == Options("x:2", 2, 0, 7)
    assert distributed.resolve(None, {}) == Options(None, None, None, 60)


@pytest.mark.parametrize("opts, message", [
    (Options("h:1", 2, None), "needs all of"),
    (Options("h:1", 2, 2), "--process_id=2 is outside 0..1"),
    (Options("h:1", 2, -1), "outside 0..1"),
    (Options("h", 2, 0), "lacks a port"),
    (Options("h:1", 2, 0, timeout_s=0), "--distributed_timeout=0"),
])
def test_bad_options_are_refused(opts, message):
    with pytest.raises(GptjaxError, match=message):
        distributed.resolve(opts, {})


def test_cluster_detection():
    assert distributed.cluster_launch({}) is None
    assert distributed.cluster_launch({**SLURM, "SLURM_NTASKS": "16"}) == "SLURM"
    assert distributed.cluster_launch({**SLURM, "SLURM_NTASKS": "1"}) is None  # one task
    assert distributed.cluster_launch({"SLURM_NTASKS": "4"}) is None  # salloc shell, no srun
    assert distributed.cluster_launch({"OMPI_COMM_WORLD_SIZE": "2"}) == "Open MPI"
    assert distributed.cluster_launch({"TPU_WORKER_HOSTNAMES": "a,b"}) == "TPU pod"
    assert distributed.cluster_launch({"TPU_WORKER_HOSTNAMES": "a"}) is None
    assert distributed.cluster_launch({"GPTJAX_DISTRIBUTED": "auto"}) == "auto"
    assert not distributed.is_multiprocess(Options("h:1", 1, 0), {})
    assert distributed.is_multiprocess(Options("h:1", 2, 0), {})


def test_initialize_is_a_no_op_for_one_process(monkeypatch):
    for var in ("GPTJAX_NUM_PROCESSES", "GPTJAX_DISTRIBUTED", "SLURM_NTASKS",
                "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.initialize() is False


def test_cli_parses_the_coordinator_flags():
    config, workdir, opts = train_args_from_argv(
        ["--config", TINY, "--workdir", "w", "--coordinator_address", "h:9",
         "--num_processes", "2", "--process_id", "1", "--distributed_timeout", "5"], "usage")
    assert workdir == "w" and config.model.n_layer == 2
    assert opts == Options("h:9", 2, 1, 5)
    _, _, opts = train_args_from_argv(["--config", TINY], "usage")
    assert opts == Options()
