"""benchmarks/sharding_layouts.py on configs/tiny.py over the 8 simulated devices, and its HLO
collective counter on a hand-written module whose counts and bytes are known."""

import sys

import jax
import pytest

from conftest import ROOT, load_config

sys.path.insert(0, str(ROOT / "benchmarks"))
from gptjax import hlo_collectives  # noqa: E402
import layout_report  # noqa: E402
import sharding_layouts  # noqa: E402

# A module with every case the counter must get right: a tuple all-reduce (f32[8] + bf16[4,4]:
# 32 + 32 bytes), an async all-gather pair (counted once, 64 floats = 256 bytes), a while loop
# of known trip count 3 around an all-reduce of f32[16] (3 x 64 bytes), a reduce-scatter wrapped
# in async-start/done (sized by its f32[64] operand: 256 bytes), a plain and an async
# collective-permute of f32[8] (32 bytes each), an all-to-all of two s32[2,2] (32 bytes) inside
# a called computation, and an add reducer that must not count as anything. XLA:TPU's forms:
# a collective-permute of f32[16] in a windowed-einsum reduce-scatter loop of 2 iterations (a
# reduce-scatter, 2 x 64 bytes), and an all-gather split over two async collective fusions (its
# start and a continuation clone: one all-gather of 256 bytes).
HLO = """\
HloModule m, is_scheduled=true

%add (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %s = f32[] add(%x, %y)
}

%body (p: (s32[], f32[16])) -> (s32[], f32[16]) {
  %p = (s32[], f32[16]{0}) parameter(0)
  %i = s32[] get-tuple-element(%p), index=0
  %g = f32[16]{0} get-tuple-element(%p), index=1
  %ar = f32[16]{0} all-reduce(%g), channel_id=1, replica_groups={{0,1}}, to_apply=%add
  ROOT %t = (s32[], f32[16]{0}) tuple(%i, %ar)
}

%cond (q: (s32[], f32[16])) -> pred[] {
  %q = (s32[], f32[16]{0}) parameter(0)
  %j = s32[] get-tuple-element(%q), index=0
  %n = s32[] constant(3)
  ROOT %lt = pred[] compare(%j, %n), direction=LT
}

%rs_comp (a: f32[64]) -> f32[8] {
  %a = f32[64]{0} parameter(0)
  ROOT %rs = f32[8]{0} reduce-scatter(%a), replica_groups=[1,8]<=[8], to_apply=%add
}

%windowed_dot_general_body_rs.3 (wp: (s32[], f32[16])) -> (s32[], f32[16]) {
  %wp = (s32[], f32[16]{0}) parameter(0)
  %wi = s32[] get-tuple-element(%wp), index=0
  %wg = f32[16]{0} get-tuple-element(%wp), index=1
  %wcp = f32[16]{0} collective-permute(%wg), channel_id=9, source_target_pairs={{0,1},{1,0}}
  ROOT %wt = (s32[], f32[16]{0}) tuple(%wi, %wcp)
}

%wcond (wq: (s32[], f32[16])) -> pred[] {
  %wq = (s32[], f32[16]{0}) parameter(0)
  %wj = s32[] get-tuple-element(%wq), index=0
  %wn = s32[] constant(2)
  ROOT %wlt = pred[] compare(%wj, %wn), direction=LT
}

%acf_start (s: f32[8]) -> f32[64] {
  %s = f32[8]{0} parameter(0)
  ROOT %agf = f32[64]{0} all-gather(%s), channel_id=12, dimensions={0}, ACF-1
}

%acf_cont (s2: f32[8]) -> f32[64] {
  %s2 = f32[8]{0} parameter(0)
  ROOT %agc = f32[64]{0} all-gather(%s2), channel_id=12, dimensions={0}, ACF2
}

%called (u: s32[2,2], v: s32[2,2]) -> (s32[2,2], s32[2,2]) {
  %u = s32[2,2]{1,0} parameter(0)
  %v = s32[2,2]{1,0} parameter(1)
  ROOT %a2a = (s32[2,2]{1,0}, s32[2,2]{1,0}) all-to-all(%u, %v), replica_groups={{0,1}}
}

ENTRY %main (a: f32[8], b: bf16[4,4], c: f32[16], d: f32[64], e: s32[2,2]) -> f32[8] {
  %a = f32[8]{0} parameter(0)
  %b = bf16[4,4]{1,0} parameter(1)
  %c = f32[16]{0} parameter(2)
  %d = f32[64]{0} parameter(3)
  %e = s32[2,2]{1,0} parameter(4)
  %tar = (f32[8]{0}, bf16[4,4]{1,0}) all-reduce(%a, %b), replica_groups={{0,1}}, to_apply=%add
  %ags = (f32[8]{0}, f32[64]{0}) all-gather-start(%a), replica_groups=[1,8]<=[8], dimensions={0}
  %agd = f32[64]{0} all-gather-done(%ags)
  %zero = s32[] constant(0)
  %init = (s32[], f32[16]{0}) tuple(%zero, %c)
  %w = (s32[], f32[16]{0}) while(%init), condition=%cond, body=%body, TRIP
  %rss = ((f32[64]{0}), f32[8]{0}, u32[]) async-start(%d), calls=%rs_comp
  %rsd = f32[8]{0} async-done(%rss), calls=%rs_comp
  %cp = f32[8]{0} collective-permute(%a), channel_id=6, source_target_pairs={{0,1},{1,0}}
  %cps = (f32[8]{0}, f32[8]{0}, u32[], u32[]) collective-permute-start(%a), pairs={{0,1}}
  %cpd = f32[8]{0} collective-permute-done(%cps)
  %call = (s32[2,2]{1,0}, s32[2,2]{1,0}) call(%e, %e), to_apply=%called
  %w2 = (s32[], f32[16]{0}) while(%init), condition=%wcond, body=%windowed_dot_general_body_rs.3
  %f1 = f32[64]{0} fusion(%a), kind=kLoop, calls=%acf_start
  %f2 = f32[64]{0} fusion(%a), kind=kLoop, calls=%acf_cont
  ROOT %out = f32[8]{0} add(%cp, %cpd)
}
""".replace("TRIP", 'backend_config={"known_trip_count":{"n":"3"}}').replace(  # as XLA prints
    "ACF-1", 'backend_config={"async_collective_fusion_config":{"flag_start":"-1","flag_end":"-1"}}'
).replace("ACF2", 'backend_config={"async_collective_fusion_config":{"flag_start":"2","flag_end":'
          '"15"}}')


def test_hlo_counter_on_a_hand_written_module():
    got = {k: (c.count, c.bytes, c.permutes)
           for k, c in hlo_collectives.count_collectives(HLO).items()}
    assert got == {
        "all-reduce": (1 + 3, 32 + 32 + 3 * 64, 0),
        "all-gather": (1 + 1, 256 + 256, 0),
        "reduce-scatter": (1 + 2, 256 + 2 * 64, 2),
        "collective-permute": (2, 64, 0),
        "all-to-all": (1, 32, 0),
    }
    assert hlo_collectives.unknown_trip_counts(HLO) == 0
    # Without XLA's known_trip_count the loop condition's `i < 3` gives the count ...
    no_trip = HLO.replace('"known_trip_count":{"n":"3"}', "")
    assert hlo_collectives.count_collectives(no_trip)["all-reduce"].count == 4
    assert hlo_collectives.unknown_trip_counts(no_trip) == 0
    # ... and a loop of unknown count is counted once, and reported.
    unknown = no_trip.replace("direction=LT", "direction=NE")
    assert hlo_collectives.count_collectives(unknown)["all-reduce"].count == 2
    assert hlo_collectives.unknown_trip_counts(unknown) == 2  # and the windowed loop
    assert hlo_collectives.shape_bytes("(f32[2,3]{1,0}, bf16[4], pred[], token[])") == 24 + 8 + 1


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    assert jax.device_count() == 8
    config = load_config("tiny")
    # Compile only for dp; fsdp also runs one timed step (the measuring path end to end).
    rows = [dict(layout=name, **sharding_layouts.measure(config, sharding_layouts.mesh_of(name),
                                                         steps))
            for name, steps in (("dp", 0), ("fsdp", 1))]
    out = tmp_path_factory.mktemp("layouts")
    paths = layout_report.write_outputs(rows, str(out), "tiny")
    return {r["layout"]: r for r in rows}, paths


def _reductions(r):
    # XLA:CPU has no reduce-scatter creator: sharded gradients are all-reduced whole, then
    # sliced, so the gradient reduction is all-reduce + reduce-scatter bytes.
    return r["all-reduce bytes"] + r["reduce-scatter bytes"]


def test_dp_reduces_the_gradient_once(rows):
    dp = rows[0]["dp"]
    p = dp["param_bytes"]
    assert dp["all-gather bytes"] == 0 and dp["all-reduce n"] >= 1
    # One all-reduce of every parameter's gradient (the tied embedding's two contributions are
    # reduced separately on CPU: 128 x 64 x 4 extra bytes, 7% of this tiny model).
    assert abs(_reductions(dp) / p - 1) < 0.1
    analytic = dp["all-reduce analytic"] + dp["reduce-scatter analytic"]
    assert abs(_reductions(dp) / analytic - 1) < 0.1


def test_fsdp_gathers_parameters_and_scatters_gradients(rows):
    fsdp = rows[0]["fsdp"]
    p = fsdp["param_bytes"]
    assert abs(fsdp["all-gather bytes"] / p - 1) < 0.1
    assert abs(_reductions(fsdp) / p - 1) < 0.1
    assert abs(fsdp["all-gather bytes"] / fsdp["all-gather analytic"] - 1) < 0.1
    # 8-way sharded state: the argument bytes (params, Adam moments, batch) are 0.13 of dp's.
    assert fsdp["argument"] <= rows[0]["dp"]["argument"] / 6
    assert fsdp["step_s"] > 0 and fsdp["live_peak"] is None  # CPU reports no live peak


def test_outputs_written(rows):
    csv_path, png_path = rows[1]
    text = open(csv_path).read()
    assert text.startswith("layout,") and "fsdp" in text
    assert open(png_path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    table = layout_report.tables(list(rows[0].values()))
    assert "| dp | 8x1x1 |" in table and "| fsdp | 1x8x1 |" in table
