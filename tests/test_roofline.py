"""gptjax/roofline.py against XLA's own cost analysis, and the layout benchmark's --topology
without libtpu."""

import importlib.util
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "benchmarks"))
from gptjax import roofline  # noqa: E402
import sharding_layouts  # noqa: E402


def _compiled(f, *shapes):
    args = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
    return jax.jit(f).lower(*args).compile()


def _xla_flops(compiled) -> float:
    ca = compiled.cost_analysis()
    return (ca[0] if isinstance(ca, list) else ca)["flops"]


def test_dot_and_dilated_convolution_flops_match_xla():
    def f(x, w, img, k):
        y = x @ w  # 2 * 8 * 16 * 4 FLOPs
        # strided, padded, dilated on both sides: only some window positions hit real input
        z = jax.lax.conv_general_dilated(img, k, window_strides=(2,), padding=[(3, 1)],
                                         lhs_dilation=(2,), rhs_dilation=(3,))
        return y, z
    compiled = _compiled(f, (8, 4), (4, 16), (2, 3, 11), (5, 3, 4))
    got = roofline.cost(compiled.as_text()).flops
    assert got == _xla_flops(compiled) and got > 2 * 8 * 16 * 4


def test_loop_flops_count_every_iteration():
    def f(x, w):
        return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=4)[0]
    compiled = _compiled(f, (8, 32), (32, 32))
    # XLA's cost analysis visits the while body once; a step runs it 4 times.
    assert roofline.cost(compiled.as_text()).flops == 4 * 2 * 8 * 32 * 32
    assert _xla_flops(compiled) < 2 * 2 * 8 * 32 * 32


def test_estimate_is_the_slowest_of_the_three():
    chip = roofline.CHIPS["TPU v5 lite"]
    t = roofline.estimate(roofline.Cost(flops=197e12, hbm_bytes=819e9 / 2, wire_bytes=0.0),
                          chip, model_flops=98.5e12)
    assert t["t_compute"] == pytest.approx(1.0) and t["t_memory"] == pytest.approx(0.5)
    assert t["t_bound"] == pytest.approx(1.0) and t["mfu_bound"] == pytest.approx(0.5)


def test_topology_without_libtpu_is_one_line_exit_2(monkeypatch, capsys):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "libtpu" else find_spec(name, *a))
    assert sharding_layouts.main(["--aot", "--topology", "v5e:4x4", "--mesh", "1,16,1"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install libtpu" in err and "Traceback" not in err
