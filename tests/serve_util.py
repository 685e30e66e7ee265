"""Helpers for the server tests: a tiny chat model built in-process, a server on a free port."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import time

import numpy as np

from conftest import random_params
from gptjax.data.tokenizer import CharTokenizer
from gptjax.model import GPT, GPTConfig
from gptjax.workdir import TrainedModel

CHARS = "abcdefghijklmnopqrstuvwxyz .,!?\n"


def tiny_chat_model(block_size: int = 64, seed: int = 0) -> TrainedModel:
    """A random 2-layer char model whose tokenizer has the chat tokens (an 'SFT' model)."""
    tok = CharTokenizer.train(CHARS)
    cfg = GPTConfig(vocab_size=tok.vocab_size, vocab_multiple=64, block_size=block_size,
                    n_layer=2, n_head=2, n_embd=32)
    params = random_params(GPT(cfg), seed=seed, scale=0.3)
    return TrainedModel(cfg, params, tok, step=0)


def write_workdir(path: str, model: TrainedModel, stage: str = "sft") -> str:
    """A workdir `gptjax.workdir.load` reads: config.json, tokenizer.json, one checkpoint."""
    from gptjax.checkpoint import Checkpointer
    from gptjax.data.tokenizer import save_tokenizer
    os.makedirs(path, exist_ok=True)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"stage": stage, "model": dataclasses.asdict(model.cfg)}, f)
    save_tokenizer(model.tokenizer, os.path.join(path, "tokenizer.json"))
    ckpt = Checkpointer(path, async_save=False)
    try:
        ckpt.save(model.step, {"params": model.params})
        ckpt.wait()
    finally:
        ckpt.close()
    return path


@contextlib.contextmanager
def running_server(app):
    """Serve `app` with uvicorn on 127.0.0.1 (a port the OS picks) in a thread; yield its URL."""
    import uvicorn
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning",
                                           timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs=dict(sockets=[sock]), daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()


def slow_steps(engine, seconds: float):
    """Make every decode step of `engine` take at least `seconds` (a stand-in for a big model,
    so a test can act while a reply is still being generated). Returns the undo function."""
    step = engine.decoder.step

    def slow():
        time.sleep(seconds)
        return step()
    engine.decoder.step = slow
    return lambda: setattr(engine.decoder, "step", step)


def wait_for(predicate, timeout: float = 20.0, interval: float = 0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("timed out waiting for a condition")


def reference(model: TrainedModel, prompts: list[list[int]], key_data: list[np.ndarray],
              n_new: int, temperature: float = 0.0, top_p: float = 1.0,
              eos: int | None = None, width: int | None = None, rows: int = 16) -> list[str]:
    """The replies `sampling.generate` gives each prompt with its key, as text cut before EOS.

    All prompts go in one call, left-padded to `width` (default: the room n_new leaves) and
    the batch padded to `rows`, so every reference of a test module shares one compile (a row
    does not depend on the rows beside it or on its padding: tests/test_sampling.py).
    """
    import jax
    from gptjax import sampling
    width = model.cfg.block_size - n_new if width is None else width
    assert len(prompts) <= rows
    fill = [[0]] * (rows - len(prompts))
    tokens, lengths = sampling.left_pad([*prompts, *fill], width)
    keys = np.stack([*key_data, *[key_data[0]] * len(fill)])
    out, _, n = sampling.generate(model.params, model.cfg, tokens, lengths,
                                  jax.random.wrap_key_data(keys), n_new,
                                  temperature=temperature, top_p=top_p, eos_id=eos)
    replies = []
    for row, length in zip(np.asarray(out)[:len(prompts)], np.asarray(n)):
        row = row[:length].tolist()
        replies.append(model.tokenizer.decode(row[:-1] if row and row[-1] == eos else row))
    return replies
