"""`python -m gptjax.aot --config CONFIG [--topology v5e:2x2] [--only STAGE,...] [--config.a.b=v
...]`: compile every training stage's step ahead of time for the devices of a run, without data,
workdirs or the devices themselves, and print each one's per-device memory and collectives.

For a pipeline config, every stage of its order that trains (pretrain, sft, reward, ppo,
grpo) is compiled with its own config; a single stage config compiles that stage. The model
shape is the config's `model` section (a fine-tuning stage's run takes it from init_from, so give
the shape it will have there, e.g. GPT-2's plus the 4 chat tokens). `--topology` compiles for the
TPU slice that `jax.experimental.topologies` describes (it needs the `libtpu` package, not a TPU;
`pip install "jax[tpu]"`); without it, for this machine's devices. PPO compiles its three
phases (rollout, scoring, update) as the trainer runs them; GRPO the same three around its host
phase (the verifiers, which run on the host and are not compiled).

Per device and step, from `compiled.memory_analysis()`: arguments (the state and the batch),
outputs, temporaries, and code, in MiB; their sum is what a device must hold (against the
chip's HBM for a known TPU). From the compiled program's text (`gptjax.hlo_collectives`,
`gptjax.roofline`, the rules the layout benchmark uses): every collective, count and MiB per
device and step, and a roofline (FLOPs, HBM bytes, ICI bytes over the chip's peak rates; the
step's lower bound is the largest of the three times).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from typing import Any

import ml_collections

from gptjax import config as config_lib
from gptjax.errors import GptjaxError

TRAINING = ("pretrain", "sft", "reward", "ppo", "grpo")


@dataclasses.dataclass
class Compiled:
    stage: str  # the pipeline's name for it
    kind: str
    phase: str
    seconds: float
    argument_mib: float
    output_mib: float
    temp_mib: float
    code_mib: float
    error: str = ""  # what XLA refused (e.g. out of device memory); the numbers are 0 then
    collectives: dict[str, tuple[int, float]] = dataclasses.field(default_factory=dict)
    cost: Any = None  # gptjax.roofline.Cost per device and step (FLOPs, HBM and ICI bytes)
    chip: Any = None  # gptjax.roofline.Chip of a known TPU, else None
    unknown_loops: int = 0  # while loops without a trip count in the HLO, counted once

    @property
    def total_mib(self) -> float:
        return self.argument_mib + self.output_mib + self.temp_mib + self.code_mib

    @property
    def collective_mib(self) -> float:
        return sum(mib for _, mib in self.collectives.values())

    def bound(self) -> dict[str, float]:
        """The roofline times (s) on `chip` and their max, the step's lower bound."""
        from gptjax import roofline
        return roofline.estimate(self.cost, self.chip, 0.0)


class _ShapeTokenizer:
    """Stands in for a tokenizer where only its special ids matter (PPO's stop token)."""

    kind, vocab_size = "shapes only", 0

    def __init__(self, vocab_size: int):
        from gptjax.data.tokenizer import SPECIAL_TOKENS
        # The chat tokens are the last ids of a vocabulary that gained them (finetune.start).
        self.specials = {t: vocab_size - len(SPECIAL_TOKENS) + i
                         for i, t in enumerate(SPECIAL_TOKENS)}

    def decode(self, ids) -> str:
        return ""


def stage_and_batch(config: ml_collections.ConfigDict):
    """(the stage's trainer.Stage, the shapes (shape, dtype) of its first phase's global batch)."""
    import jax.numpy as jnp

    from gptjax.loops import pretrain, reward, sft
    from gptjax.model import GPTConfig
    mcfg = GPTConfig(**config.model.to_dict())
    if mcfg.vocab_size <= 0:
        raise GptjaxError("model.vocab_size is 0 (the tokenizer's): give the vocabulary the "
                          "stage will have, e.g. --config.model.vocab_size=50261")
    t = config_lib.seq_len(config)
    rows = config.train.batch_size // config.train.grad_accum
    if config.stage == "pretrain":
        return pretrain.stage(config), {"": ((rows, t + 1), jnp.int32)}
    if config.stage == "sft":
        fields = {"tokens": jnp.int32, "weights": jnp.float32, "segment_ids": jnp.int32,
                  "positions": jnp.int32}  # the packed rows of gptjax.data.sft
        return sft.stage(config, mcfg), {k: ((rows, t + 1), d) for k, d in fields.items()}
    if config.stage == "reward":
        k = 2  # answers per prompt (hh-rlhf's pairs; FineGrainedRLHF has 4)
        return reward.stage(config, mcfg, k), {
            "tokens": ((rows, k, t), jnp.int32), "lengths": ((rows, k), jnp.int32),
            "valid": ((rows, k), jnp.bool_), "pref": ((rows, k, k), jnp.float32)}
    if config.stage == "ppo":
        from gptjax.loops import ppo
        from gptjax.rl import iteration, rollout
        from gptjax.data.tokenizer import END_OF_TURN
        p = config.ppo
        tok = _ShapeTokenizer(mcfg.vocab_size)
        rc = rollout.RolloutConfig.of(p, tok.specials[END_OF_TURN])
        spec = iteration.Spec(mcfg, mcfg, rc, ppo.ppo_hparams(config), p.truncated,
                              p.truncated_penalty, bool(p.normalize_scores),
                              float(p.score_clip), bool(p.center_critic),
                              ptx=bool(p.ptx_coef))  # as ppo.setup builds it
        su = ppo.Setup(spec, tok, None, None, 0.0, [[rc.eos_id]], [], None)
        width, b = ppo.prompt_width(config), int(p.batch_prompts)
        batch = {"prompts": ((b, width), jnp.int32), "lengths": ((b,), jnp.int32)}
        if spec.ptx:
            updates = p.epochs * p.num_minibatches
            batch["ptx"] = ((ppo.ptx_rows(config), updates, t + 1), jnp.int32)
        return ppo.stage(config, su, ""), batch
    if config.stage == "grpo":
        import types

        from gptjax.data.tokenizer import END_OF_TURN
        from gptjax.loops import grpo
        from gptjax.rl import rollout, tasks, verifiers
        g = config.grpo
        tok = _ShapeTokenizer(mcfg.vocab_size)
        weights = verifiers.parse_rewards(g.rewards)
        rc = rollout.RolloutConfig.of(g, tok.specials[END_OF_TURN])
        rm = "reward_model" in weights  # a reward model of the policy's shape (as PPO's above)
        task = types.SimpleNamespace(name="shapes only", marker="")
        one = tasks.Encoded([[0]], ["0"], {})  # the batch's shapes come from the config
        su = grpo.Setup(mcfg, tok, None, weights, mcfg if rm else None, {} if rm else None,
                        task, one, tasks.Encoded([], [], {}), rc, grpo.hparams(config))
        b, width = int(g.batch_prompts) * int(g.oversample), grpo.prompt_width(config)
        return grpo.stage(config, su, ""), {
            "prompts": ((b, width), jnp.int32), "lengths": ((b,), jnp.int32),
            "index": ((b,), jnp.int32)}
    raise GptjaxError(f"stage {config.stage!r} has no training step to compile")


def compile_stage(config: ml_collections.ConfigDict, devices: Any, name: str = ""
                  ) -> list[Compiled]:
    """Compile one stage's step (each phase) for `devices`; its memory per device."""
    import jax

    from gptjax import hlo_collectives, roofline, sharding
    from gptjax.loops import trainer
    stage, batch_shapes = stage_and_batch(config)
    c = trainer.compile_stage(config, stage, devices)

    def abstract(shape, dtype):
        return jax.ShapeDtypeStruct(shape, dtype, sharding=c.batch_sharding)
    carry = (abstract(*batch_shapes[""]) if "" in batch_shapes
             else {k: abstract(*v) for k, v in batch_shapes.items()})
    frozen = ()
    if stage.frozen is not None:
        frozen = (trainer.abstract_layout(stage.frozen.init, c.layout)[0],)
    chip = roofline.CHIPS.get(c.mesh.devices.flat[0].device_kind)
    out = []
    with sharding.activated(c.mesh, c.rules):
        for phase, fn in c.phases:
            if isinstance(fn, trainer.HostPhase):  # runs on the host: only its outputs' shapes
                if fn.shapes is None:
                    raise GptjaxError(f"the {config.stage} stage's host phase {phase!r} declares "
                                      "no output shapes (trainer.Phase.shapes), so its later "
                                      "phases cannot be compiled ahead of time")
                made = fn.shapes(carry)
                carry = {**carry, **{k: abstract(v.shape, v.dtype) for k, v in made.items()}}
                continue
            t0 = time.perf_counter()
            lowered = fn.lower(c.abstract, carry, *frozen)
            try:
                compiled = lowered.compile()
            except jax.errors.JaxRuntimeError as e:  # e.g. more memory than the device has
                out.append(Compiled(name or config.stage, config.stage, phase,
                                    time.perf_counter() - t0, 0, 0, 0, 0,
                                    " ".join(str(e).split())[:300]))
            else:
                seconds = time.perf_counter() - t0
                mem, hlo = compiled.memory_analysis(), compiled.as_text()
                coll, unknown = hlo_collectives.count(hlo)
                mib = 1 / 2**20
                out.append(Compiled(
                    name or config.stage, config.stage, phase, seconds,
                    mem.argument_size_in_bytes * mib, mem.output_size_in_bytes * mib,
                    mem.temp_size_in_bytes * mib, mem.generated_code_size_in_bytes * mib,
                    collectives={k: (v.count, v.bytes * mib) for k, v in coll.items()},
                    cost=roofline.cost(hlo, coll), chip=chip, unknown_loops=unknown))
            carry = jax.eval_shape(fn, c.abstract, carry, *frozen)
    return out


def compile_config(config: ml_collections.ConfigDict, devices: Any,
                   only: tuple[str, ...] = ()) -> list[Compiled]:
    """Every training stage of a pipeline config (or those named in `only`), or the one stage of
    a stage config."""
    if config.stage != "pipeline":
        return compile_stage(config, devices)
    unknown = [n for n in only if n not in config.order]
    if unknown:
        raise GptjaxError(f"--only {','.join(unknown)}: not a stage of this pipeline (its stages: "
                          f"{', '.join(config.order)})")
    out, seen = [], {}
    for name in config.order:
        stage_cfg = config.stages[name]
        if stage_cfg.stage not in TRAINING or (only and name not in only):
            continue
        # Stages that differ only in their data and start (reward and judge) share one step.
        key = {k: v for k, v in stage_cfg.to_dict().items() if k not in ("data", "init_from")}
        key = config_lib.to_json(ml_collections.ConfigDict(key))
        if key in seen:
            print(f"{name}: the same step as {seen[key]}", file=sys.stderr)
            continue
        seen[key] = name
        out += compile_stage(stage_cfg, devices, name)
    return out


def table(rows: list[Compiled]) -> str:
    """Memory per device and phase; then, for those that compiled, collectives and roofline."""
    chip = next((r.chip for r in rows if r.chip is not None), None)
    hbm = f" | of {chip.name} HBM" if chip else ""
    lines = ["| stage | phase | compile s | argument MiB | output MiB | temp MiB | code MiB | "
             f"total MiB{hbm} |", "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * bool(chip)]
    for r in rows:
        if r.error:
            lines.append(f"| {r.stage} ({r.kind}) | {r.phase} | {r.seconds:.1f} | "
                         f"does not compile: {r.error} |||||" + "|" * bool(chip))
        else:
            share = f" | {r.total_mib * 2**20 / chip.hbm_bytes:.0%}" if chip else ""
            lines.append(f"| {r.stage} ({r.kind}) | {r.phase} | {r.seconds:.1f} | "
                         f"{r.argument_mib:,.1f} | {r.output_mib:,.1f} | {r.temp_mib:,.1f} | "
                         f"{r.code_mib:,.1f} | {r.total_mib:,.1f}{share} |")
    done = [r for r in rows if not r.error]
    if not done:
        return "\n".join(lines)
    from gptjax import hlo_collectives
    kinds = hlo_collectives.KINDS
    times = (" | t compute s | t memory s | t network s | step s >=" if chip else "")
    lines += ["", "| stage | phase | " + " | ".join(f"{k} n / MiB" for k in kinds) +
              " | collectives MiB | TFLOP | HBM GiB | ICI GiB" + times + " |",
              "|---|---|" + "---:|" * (len(kinds) + 4 + 4 * bool(chip))]
    for r in done:
        cells = [f"{n} / {mib:,.1f}" for n, mib in (r.collectives.get(k, (0, 0.0))
                                                    for k in kinds)]
        line = (f"| {r.stage} ({r.kind}) | {r.phase} | " + " | ".join(cells) +
                f" | {r.collective_mib:,.1f} | {r.cost.flops / 1e12:,.3f} | "
                f"{r.cost.hbm_bytes / 2**30:,.2f} | {r.cost.wire_bytes / 2**30:,.3f}")
        if chip:
            t = r.bound()
            line += (f" | {t['t_compute']:.4f} | {t['t_memory']:.4f} | {t['t_network']:.4f} | "
                     f"{t['t_bound']:.4f}")
        lines.append(line + " |")
    loops = [f"{r.stage} {r.phase} ({r.unknown_loops})" for r in done if r.unknown_loops]
    if loops:
        lines += ["", "Counted once per step, though they run more often: the work inside while "
                  "loops without a fixed trip count (a rollout's decode loop, which stops when "
                  "every answer has ended; at most max_new_tokens passes) in " +
                  ", ".join(loops) + "."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from gptjax.cli import config_from_argv, exit_on_user_error

    @exit_on_user_error
    def _main(argv: list[str]) -> int:
        ap = argparse.ArgumentParser(add_help=False)
        ap.add_argument("--topology", default="", help="a TPU slice, e.g. v5e:2x2 (needs libtpu)")
        ap.add_argument("--only", default="", help="a pipeline's stages to compile, e.g. ppo")
        args, rest = ap.parse_known_args(argv)
        config, _ = config_from_argv(rest, "usage: python -m gptjax.aot --config CONFIG "
                                           "[--topology v5e:2x2] [--only STAGE,...] "
                                           "[--config.a.b=v ...]")
        import jax
        devices = None
        if args.topology:
            from jax.experimental import topologies
            try:
                devices = topologies.get_topology_desc(args.topology, "tpu").devices
            except Exception as e:  # no libtpu, or a name libtpu does not know
                raise GptjaxError(f"--topology {args.topology}: {type(e).__name__}: "
                                  f"{' '.join(str(e).split())[:300]} (give a TPU slice such "
                                  "as v5e:2x2; it needs the libtpu package: pip install "
                                  "\"jax[tpu]\")") from None
        dev = devices or jax.devices()
        print(f"## {len(dev)} x {dev[0].device_kind}\n")
        rows = compile_config(config, devices, tuple(filter(None, args.only.split(","))))
        print(table(rows))
        failed = [f"{r.stage} {r.phase}" for r in rows if r.error]
        if failed:
            print(f"gptjax aot: {len(failed)} step(s) do not compile for these devices: "
                  f"{', '.join(failed)}", file=sys.stderr)
        return 1 if failed else 0
    return _main(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
