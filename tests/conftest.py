"""Test setup: 8 simulated CPU devices (set before JAX starts), and shared helpers."""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()

import importlib.util  # noqa: E402
import pathlib  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


def load_config(name: str):
    """A configs/ file's get_config() (the same loader semantics as the CLI)."""
    path = ROOT / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"configs_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()


def run_cli(*args, env_extra=None, timeout=300, **kw):
    """Run `python -m ...` in a fresh process with XLA's default single CPU device."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout, **kw)


def checkpoint_params(workdir, step):
    """A tiny-config checkpoint's parameters (host numpy), restored onto one device."""
    import jax
    import numpy as np

    from gptjax.checkpoint import Checkpointer
    from gptjax.loops import pretrain
    config = load_config("tiny")
    config.mesh.update(data=1, fsdp=1, tensor=1)
    pieces = pretrain.build(config, jax.devices()[:1])
    ckpt = Checkpointer(str(workdir))
    try:
        state = ckpt.restore(step, pieces.abstract)
    finally:
        ckpt.close()
    return jax.tree.map(np.asarray, state.params)


# The command of the `trained` workdir (tests rerun it to compare against it).
TRAINED_ARGS = ("gptjax.train", "--config", "configs/tiny.py", "--config.train.progress=False",
                "--config.train.steps=30")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A workdir trained for 30 steps with configs/tiny.py (checkpoints 10, 20, 30; metrics every
    5 steps), for the sample and chat commands and as an uninterrupted reference run."""
    wd = tmp_path_factory.mktemp("trained") / "run"
    r = run_cli(*TRAINED_ARGS, "--workdir", str(wd))
    assert r.returncode == 0, r.stderr
    return str(wd)


@pytest.fixture(scope="session")
def small_pipeline(tmp_path_factory, worker_id):
    """The README's first pipeline made small (tests/pipeline_small.py), run once per test
    session through the CLI and shared by every xdist worker: (workdir, its stderr, the JAX
    compilation cache folder later runs may share). Tests that change it work on a copy."""
    import json

    from filelock import FileLock

    import pipeline_small
    root = tmp_path_factory.getbasetemp()
    root = root if worker_id == "master" else root.parent
    base = root / "small_pipeline"
    with FileLock(str(base) + ".lock"):
        done = base / "done.json"
        if not done.exists():
            cache, wd = base / "compile_cache", base / "chatgpt"
            r = run_cli("gptjax.train", "--config", pipeline_small.CONFIG, "--workdir", str(wd),
                        *pipeline_small.flags(compile_cache=str(cache)), timeout=900)
            assert r.returncode == 0, r.stderr[-3000:]
            done.write_text(json.dumps({"workdir": str(wd), "stderr": r.stderr,
                                        "cache": str(cache)}))
        out = json.loads(done.read_text())
    return out["workdir"], out["stderr"], out["cache"]


@pytest.fixture
def tiny_config():
    return load_config("tiny")


def random_params(module, seed: int, scale: float = 0.5):
    """O(0.1..1) random weights for a flax module taking (B, T) tokens (LayerNorm gains around
    1): sharp, row-dependent outputs, so a wrong cache slot, position or mask changes them."""
    import flax.linen as nn
    import jax
    import jax.numpy as jnp
    import numpy as np
    shapes = nn.unbox(jax.eval_shape(module.init, jax.random.key(0),
                                     jnp.zeros((1, 4), jnp.int32)))["params"]
    rng = np.random.default_rng(seed)

    def draw(path, x):
        v = rng.normal(0.0, scale, size=x.shape).astype(np.float32)
        return jnp.asarray(1.0 + v if "scale" in [getattr(k, "key", None) for k in path] else v)
    return jax.tree_util.tree_map_with_path(draw, shapes)


def random_hf_gpt2(**shape):
    """A small transformers GPT2LMHeadModel whose every weight, LayerNorm gain and bias is random
    and O(0.1..1), so that conversion or masking bugs cannot hide under a tolerance."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(**shape, initializer_range=0.2, bos_token_id=None,
                                  eos_token_id=None)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".ln_" in name and name.endswith("weight"):
                p.normal_(1.0, 0.2)  # LayerNorm gains around 1
            elif name.endswith("bias"):
                p.normal_(0.0, 0.2)
    return model


def write_rows(path, rows):
    """Records as a .jsonl, .jsonl.gz or .parquet file (by its name); returns the path."""
    import gzip
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    path = str(path)
    if path.endswith(".parquet"):  # columns: every key of any row (from_pylist reads the first)
        keys = list(dict.fromkeys(k for r in rows for k in r))
        table = pa.Table.from_pylist([{k: r.get(k) for k in keys} for r in rows])
        pq.write_table(table, path, row_group_size=7)  # several row groups
        return path
    data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()
    with open(path, "wb") as f:
        f.write(gzip.compress(data, mtime=0) if path.endswith(".gz") else data)
    return path
