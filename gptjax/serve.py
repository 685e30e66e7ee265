"""`python -m gptjax.serve --workdir DIR [--port 8000]`: an OpenAI-compatible server, a chat page.

Serves any workdir `python -m gptjax.chat` reads: POST /v1/chat/completions and
/v1/completions (streamed with "stream": true), GET /v1/models, GET /health, and a chat page
at GET /. Requests share one compiled decoder with --slots batch slots (continuous batching:
a request joins a free slot between two decode steps and leaves at the step that ends it; when
every slot is busy it waits). The sampling flags are the defaults of requests that leave a
field out. Ctrl-C stops cleanly: open streams are given --shutdown_timeout seconds to finish.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

from gptjax import workdir as workdir_lib
from gptjax.cli import exit_on_user_error
from gptjax.data.chat import has_chat_tokens
from gptjax.errors import GptjaxError


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m gptjax.serve", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="a gptjax training workdir")
    ap.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 = all)")
    ap.add_argument("--port", type=int, default=8000, help="0 = any free port (printed)")
    ap.add_argument("--slots", type=int, default=16,
                    help="batch slots: requests decoded together in one step")
    ap.add_argument("--steps_per_call", type=int, default=4,
                    help="decode steps per device call: requests join and leave between calls; "
                    "more amortise the host's work per token, fewer join sooner")
    ap.add_argument("--max_tokens", type=int, default=256,
                    help="default reply length (cut to the room the context leaves)")
    ap.add_argument("--temperature", type=float, default=0.8, help="default; 0 = greedy")
    ap.add_argument("--top_p", type=float, default=1.0, help="default; 1 = off")
    ap.add_argument("--top_k", type=int, default=0,
                    help="for every request (fixed when the decoder compiles); 0 = off")
    ap.add_argument("--model_name", default=None,
                    help="the model id clients name (default: the workdir's folder name)")
    ap.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                    help="compile the step and every prefill shape before listening")
    ap.add_argument("--shutdown_timeout", type=float, default=5.0,
                    help="seconds open requests get to finish after Ctrl-C")
    ap.add_argument("--log_level", default="info", choices=["debug", "info", "warning", "error"])
    return ap.parse_args(argv)


def _check(args: argparse.Namespace) -> None:
    if args.slots < 1:
        raise GptjaxError(f"--slots must be at least 1; got {args.slots}")
    if args.steps_per_call < 1:
        raise GptjaxError(f"--steps_per_call must be at least 1; got {args.steps_per_call}")
    if args.max_tokens < 1:
        raise GptjaxError(f"--max_tokens must be at least 1; got {args.max_tokens}")
    if not 0.0 <= args.temperature <= 2.0:
        raise GptjaxError(f"--temperature must lie in [0, 2]; got {args.temperature}")
    if not 0.0 < args.top_p <= 1.0:
        raise GptjaxError(f"--top_p must lie in (0, 1]; got {args.top_p}")
    if args.top_k < 0:
        raise GptjaxError(f"--top_k must be >= 0 (0 = off); got {args.top_k}")
    if not 0 <= args.port <= 65535:
        raise GptjaxError(f"--port must lie in [0, 65535]; got {args.port}")


def _listen(host: str, port: int) -> socket.socket:
    try:
        return socket.create_server((host, port), reuse_port=False)
    except OSError as e:
        raise GptjaxError(f"cannot listen on {host}:{port} ({e.strerror}); pick another --port "
                          "or --host") from None


@exit_on_user_error
def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    args.workdir = workdir_lib.model_workdir(args.workdir)  # a pipeline: its last chat stage
    _check(args)
    import uvicorn  # the server's own imports wait until the flags are known to be good

    from gptjax.serving.app import create_app
    from gptjax.serving.engine import Engine
    from gptjax.serving.service import Defaults, Service

    # The engine thread needs the GIL for a moment after every device call; with Python's
    # default 5 ms switch interval it waited behind the event loop's streaming work.
    sys.setswitchinterval(0.0005)
    model = workdir_lib.load(args.workdir)
    chat = workdir_lib.stage(args.workdir) != "pretrain" and has_chat_tokens(model.tokenizer)
    name = args.model_name or os.path.basename(os.path.normpath(args.workdir))
    sock = _listen(args.host, args.port)  # before the compile: a port in use fails at once
    engine = Engine(model.params, model.cfg, args.slots, Service.stop_ids(model.tokenizer, chat),
                    args.top_k, args.steps_per_call)
    if args.warmup:
        t0 = time.perf_counter()
        engine.warmup()
        d = engine.decoder
        print(f"gptjax serve: compiled the decode step and the prefill for prompt widths "
              f"{d.widths} x batches {d.batches} in {time.perf_counter() - t0:.1f} s",
              file=sys.stderr, flush=True)
    service = Service(model, engine, name, chat, Defaults(args.temperature, args.top_p,
                                                          args.max_tokens))
    host, port = sock.getsockname()[:2]
    print(f"gptjax serve: {name} (step {model.step}, "
          f"{'chat template' if service.chat_template else 'plain continuation'}, context "
          f"{model.cfg.block_size}, {args.slots} slots) on http://{host}:{port}/",
          file=sys.stderr, flush=True)
    config = uvicorn.Config(create_app(service), log_level=args.log_level,
                            timeout_graceful_shutdown=args.shutdown_timeout)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
