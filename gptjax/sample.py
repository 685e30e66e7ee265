"""`python -m gptjax.sample --workdir DIR --prompt "..." [--num_samples N --temperature T
--top_k K --top_p P --max_new_tokens M --seed S --stream]`: continue a prompt with a trained
model. On a terminal the first sample is printed token by token as it is decoded."""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from gptjax import sampling, workdir as workdir_lib
from gptjax.cli import ArgumentParser, check_sampling_flags, exit_on_user_error
from gptjax.data.tokenizer import EOS
from gptjax.errors import GptjaxError
from gptjax.streaming import TokenPrinter


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = ArgumentParser(prog="python -m gptjax.sample", description=__doc__)
    ap.add_argument("--workdir", required=True, help="a gptjax training workdir")
    ap.add_argument("--prompt", required=True, help="text to continue")
    ap.add_argument("--num_samples", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    ap.add_argument("--top_k", type=int, default=0, help="0 = off")
    ap.add_argument("--top_p", type=float, default=1.0, help="1 = off")
    ap.add_argument("--max_new_tokens", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                    help="print the first sample as its tokens arrive (default: when stdout is "
                    "a terminal)")
    return ap.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.workdir = workdir_lib.model_workdir(args.workdir)  # a pipeline: its last chat stage
    if not args.prompt:
        raise GptjaxError("--prompt is empty: give some text for the model to continue")
    if args.num_samples < 1 or args.max_new_tokens < 1:
        raise GptjaxError(f"--num_samples {args.num_samples} and --max_new_tokens "
                          f"{args.max_new_tokens} must be at least 1")
    check_sampling_flags(args.temperature, args.top_k, args.top_p)
    model = workdir_lib.load(args.workdir)
    ids = model.tokenizer.encode(args.prompt)
    room = model.cfg.block_size - len(ids)
    if room < 1:
        raise GptjaxError(
            f"the prompt is {len(ids)} tokens but the model's context (model.block_size) is "
            f"{model.cfg.block_size}; shorten the prompt to at most "
            f"{model.cfg.block_size - 1} tokens")
    max_new = args.max_new_tokens
    if max_new > room:
        print(f"gptjax: note: --max_new_tokens {max_new} lowered to {room}: prompt + new tokens "
              f"must fit the context of {model.cfg.block_size}", file=sys.stderr)
        max_new = room
    n = args.num_samples
    eos = model.tokenizer.specials.get(EOS)  # a sample ends where its document would end
    prompts = np.tile(np.asarray(ids, np.int32), (n, 1))
    keys = jax.random.split(jax.random.key(args.seed), n)
    stream = sys.stdout.isatty() if args.stream is None else args.stream

    def header(i: int) -> None:
        if n > 1:
            print(f"--- sample {i + 1} (step {model.step}) ---")

    printer = None
    if stream:  # the first sample appears token by token while the others decode beside it
        header(0)
        print(args.prompt, end="", flush=True)
        printer = TokenPrinter(model.tokenizer, stop_id=eos)
    tokens, _, lengths = sampling.generate(
        model.params, model.cfg, prompts, np.full((n,), len(ids), np.int32), keys, max_new,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, eos_id=eos,
        stream=printer)
    tokens, lengths = np.asarray(tokens), np.asarray(lengths)
    for i in range(n):
        row = tokens[i, :lengths[i]].tolist()
        if row and row[-1] == eos:  # a finished document: print it without the marker
            row = row[:-1]
        if i == 0 and printer is not None:
            printer.finish(row)
            continue
        header(i)
        print(args.prompt + model.tokenizer.decode(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
