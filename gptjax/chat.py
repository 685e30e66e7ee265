"""`python -m gptjax.chat --workdir DIR`: talk to a trained model in the terminal.

A model fine-tuned with stage `sft` speaks in turns: your line becomes a user turn, the prompt
is the conversation rendered with the chat template (gptjax.data.chat) ending in <|assistant|>,
and the reply runs until the model's end-of-turn token. Before SFT (a pretrained model) a turn
is plain continuation: the conversation so far plus your line is the prompt, and the model's
continuation is its reply.
Every turn uses one compiled decoder: the prompt is left-padded to a fixed length (the context
minus --max_new_tokens), keeping the most recent text when the conversation outgrows it.
On a terminal replies appear token by token (--stream / --no-stream to choose).
Type /quit or end the input (Ctrl-D) to leave.
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from gptjax import sampling, workdir as workdir_lib
from gptjax.cli import ArgumentParser, check_sampling_flags, exit_on_user_error
from gptjax.data.chat import has_chat_tokens, render_prompt
from gptjax.data.tokenizer import END_OF_TURN
from gptjax.errors import GptjaxError
from gptjax.streaming import TokenPrinter


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = ArgumentParser(prog="python -m gptjax.chat", description=__doc__,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="a gptjax training workdir")
    ap.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    ap.add_argument("--top_k", type=int, default=0, help="0 = off")
    ap.add_argument("--top_p", type=float, default=1.0, help="1 = off")
    ap.add_argument("--max_new_tokens", type=int, default=0,
                    help="reply length in tokens (default: a quarter of the context)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--system", default="", help="a system turn opening the conversation "
                    "(chat models only)")
    ap.add_argument("--stream", action=argparse.BooleanOptionalAction, default=None,
                    help="print replies as their tokens arrive (default: when stdout is a "
                    "terminal)")
    return ap.parse_args(argv)


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.workdir = workdir_lib.model_workdir(args.workdir)  # a pipeline: its last chat stage
    check_sampling_flags(args.temperature, args.top_k, args.top_p)
    model = workdir_lib.load(args.workdir)
    block = model.cfg.block_size
    new = args.max_new_tokens or max(1, block // 4)
    if not 1 <= new < block:
        raise GptjaxError(f"--max_new_tokens {args.max_new_tokens} must be between 1 and "
                          f"{block - 1} (the context is {block} tokens)")
    width = block - new  # prompt slots: the most recent tokens of the conversation
    history: list[int] = []
    tok = model.tokenizer
    turns = workdir_lib.stage(args.workdir) != "pretrain" and has_chat_tokens(tok)
    conversation = [{"role": "system", "content": args.system}] if args.system else []
    eos = tok.specials[END_OF_TURN] if turns else None
    key = jax.random.key(args.seed)
    interactive = sys.stdin.isatty()
    stream = sys.stdout.isatty() if args.stream is None else args.stream
    mode = "chat template" if turns else "plain continuation"
    print(f"gptjax chat: {args.workdir} (step {model.step}), {mode}; /quit to leave",
          file=sys.stderr)
    while True:
        if interactive:
            print("you> ", end="", flush=True, file=sys.stderr)
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":
            return 0
        try:
            if turns:
                asked = [*conversation, {"role": "user", "content": line.rstrip("\n")}]
                history = render_prompt(asked, tok)[-width:]
            else:
                history = (history + tok.encode(line))[-width:]
        except GptjaxError as e:  # e.g. a character the char tokenizer never saw: try again
            print(f"gptjax: {e}", file=sys.stderr)
            continue
        prompt, prompt_lengths = sampling.left_pad([history], width)
        key, sub = jax.random.split(key)
        printer = None
        if stream:
            print("model> ", end="", flush=True)
            printer = TokenPrinter(tok, stop_id=eos)
        tokens, _, lengths = sampling.generate(
            model.params, model.cfg, prompt, prompt_lengths, sub[None], new,
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, eos_id=eos,
            stream=printer)
        reply = np.asarray(tokens)[0, :int(lengths[0])].tolist()
        if turns:
            if reply and reply[-1] == eos:
                reply = reply[:-1]
            conversation = [*asked, {"role": "assistant", "content": tok.decode(reply)}]
        else:
            history = (history + reply)[-width:]
        if printer is not None:
            printer.finish(reply)
        else:
            print(f"model> {tok.decode(reply)}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
