"""gptjax.runtime's CPU device choice, and the mesh-shape arithmetic it must agree with
(gptjax.sharding.resolve_mesh_shape / rules_from_config: pure functions, no devices needed)."""

from __future__ import annotations

import pytest

from gptjax.errors import GptjaxError
from gptjax.runtime import choose_cpu_devices
from gptjax.sharding import resolve_mesh_shape, rules_from_config


# --- choose_cpu_devices ------------------------------------------------------------------------

def test_zero_means_xla_default_of_one_device():
    assert choose_cpu_devices(0, batch_per_step=12, cores=8) == 1


def test_explicit_count_is_kept():
    assert choose_cpu_devices(3, batch_per_step=12, cores=8) == 3
    assert choose_cpu_devices(16, batch_per_step=12, cores=2) == 16


@pytest.mark.parametrize("batch,cores,expected", [
    (12, 8, 6),  # divisors of 12 up to 8: 1, 2, 3, 4, 6
    (12, 2, 2),
    (8, 8, 8),
    (7, 4, 1),  # a prime batch larger than the core count: one device
    (9, 16, 9),
    (64, 1, 1),
])
def test_minus_one_is_largest_divisor_of_batch_up_to_cores(batch, cores, expected):
    assert choose_cpu_devices(-1, batch_per_step=batch, cores=cores) == expected


# --- resolve_mesh_shape ------------------------------------------------------------------------

def _mesh(data, fsdp, tensor):
    return {"data": data, "fsdp": fsdp, "tensor": tensor}


@pytest.mark.parametrize("shape,devices,expected", [
    (_mesh(-1, 1, 1), 8, (8, 1, 1)),
    (_mesh(-1, 2, 1), 8, (4, 2, 1)),
    (_mesh(2, -1, 2), 8, (2, 2, 2)),
    (_mesh(1, 1, -1), 1, (1, 1, 1)),
    (_mesh(2, 2, 2), 8, (2, 2, 2)),
])
def test_resolve_mesh_shape(shape, devices, expected):
    assert resolve_mesh_shape(shape, devices) == expected


@pytest.mark.parametrize("shape", [_mesh(-1, -1, 1), _mesh(0, 1, 1), _mesh(-1, 1, 0),
                                   _mesh(-2, 1, 1)], ids=["two-free", "zero", "zero-2", "neg"])
def test_resolve_mesh_shape_invalid(shape):
    with pytest.raises(GptjaxError) as err:
        resolve_mesh_shape(shape, 8)
    msg = str(err.value)
    assert str(shape) in msg  # names the mesh as written
    assert "--config.mesh.data=-1" in msg  # and a fix


def test_resolve_mesh_shape_fixed_axes_do_not_divide_devices():
    with pytest.raises(GptjaxError) as err:
        resolve_mesh_shape(_mesh(-1, 3, 1), 8)
    msg = str(err.value)
    assert str(_mesh(-1, 3, 1)) in msg and "8 devices" in msg and "divides 8" in msg


def test_resolve_mesh_shape_product_must_match_devices():
    with pytest.raises(GptjaxError) as err:
        resolve_mesh_shape(_mesh(2, 2, 1), 8)
    msg = str(err.value)
    assert str(_mesh(2, 2, 1)) in msg and "needs 4 devices but 8" in msg
    assert "-1" in msg  # the fix: make the product 8, or let one axis take the rest
    with pytest.raises(GptjaxError, match="needs 16 devices but 8"):
        resolve_mesh_shape(_mesh(4, 2, 2), 8)


# --- rules_from_config -------------------------------------------------------------------------

def test_rules_from_config():
    rules = rules_from_config([["batch", ["data", "fsdp"]], ["embed", "fsdp"], ["seq", None]])
    assert rules == (("batch", ("data", "fsdp")), ("embed", "fsdp"), ("seq", None))
    with pytest.raises(GptjaxError, match="unknown mesh axes \\['model'\\]"):
        rules_from_config([["heads", "model"]])
    with pytest.raises(GptjaxError, match="unknown mesh axes \\['pipe'\\]"):
        rules_from_config([["batch", ["data", "pipe"]]])
