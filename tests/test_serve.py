"""gptjax.serve: batch slots vs `generate`, the OpenAI client against the server, bad input,
disconnects, Ctrl-C.

One tiny random chat model (context 32, two prefill widths) and one server on 127.0.0.1 serve
the module, so the decoder compiles once; the Ctrl-C test runs the real command on a workdir.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import openai
import pytest

from conftest import ROOT
from gptjax.data.chat import render_prompt
from gptjax.data.tokenizer import END_OF_TURN
from gptjax.serving.app import create_app
from gptjax.serving.engine import Engine, Request, request_keys
from gptjax.serving.service import Defaults, Service
from gptjax.serving.slots import SlotDecoder
from gptjax.serving.text import TextStream
from serve_util import (reference, running_server, slow_steps, tiny_chat_model, wait_for,
                        write_workdir)

SLOTS = 4
BLOCK = 32
STEPS = 3  # decode steps per device call: requests end mid-call and join between calls


@pytest.fixture(scope="module")
def model():
    return tiny_chat_model(block_size=BLOCK)


@pytest.fixture(scope="module")
def server(model):
    engine = Engine(model.params, model.cfg, SLOTS, Service.stop_ids(model.tokenizer, True),
                    steps_per_call=STEPS)
    service = Service(model, engine, "tiny-chat", True, Defaults(max_tokens=N_NEW))
    with running_server(create_app(service)) as url:
        yield url, service


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0)


N_NEW = 12  # every reply's max_tokens: prompt width BLOCK - N_NEW = 20 for the references


def _eos(model):
    return model.tokenizer.specials[END_OF_TURN]


def _post(url, body: bytes | dict, path="/v1/chat/completions"):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url + path, data=data,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _health(url):
    with urllib.request.urlopen(url + "/health", timeout=10) as r:
        return json.loads(r.read())


# --- the slots, without HTTP ------------------------------------------------------------------

def test_slots_equal_generate_as_requests_join_and_leave(model):
    """Rows joining and leaving at different steps (and the ring wrapping past the context)
    draw exactly `generate`'s tokens, greedy and sampled, for the same keys."""
    rng = np.random.default_rng(1)
    prompts = [rng.integers(0, 30, n).tolist() for n in (3, 20, 9, 5, 14, 1)]
    dec = SlotDecoder(model.params, model.cfg, SLOTS, steps_per_call=STEPS)
    eos, total_steps = _eos(model), 0
    for temperature, top_p in ((0.0, 1.0), (1.0, 0.9)):
        keys = [request_keys(i, 1)[0] for i in range(len(prompts))]
        want = reference(model, prompts, keys, N_NEW, temperature, top_p, eos)
        got = {i: [] for i in range(len(prompts))}
        rows, queue, steps = {}, list(range(len(prompts))), 0
        while queue or rows:
            free = [r for r in range(SLOTS - 1) if r not in rows]  # 3 of the 4 rows in use
            if queue and free and (steps % 3 == 0 or not rows):  # join at staggered steps
                i = queue.pop(0)
                rows[free[0]] = i
                got[i].append(dec.insert(free[0], prompts[i], keys[i], temperature, top_p))
            tokens = dec.step()  # (STEPS, SLOTS)
            steps += 1
            for row, i in list(rows.items()):
                for tok in tokens[:, row]:
                    got[i].append(int(tok))
                    if len(got[i]) == N_NEW or got[i][-1] == eos:
                        dec.free(row)
                        del rows[row]
                        break
        assert [model.tokenizer.decode(t[:-1] if t[-1] == eos else t)
                for t in got.values()] == want
        assert len(set(want)) > 3  # the rows really differ
        total_steps += steps
    assert total_steps * STEPS > BLOCK  # the ring of cache slots wrapped around


def test_text_stream_holds_back_stop_prefixes_and_partial_characters():
    class Bytes:  # token = one UTF-8 byte
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    s = TextStream(Bytes(), stop=["\nUser:"])
    text = "h\u00e9 \nUs!\nUser: no".encode()
    out = [s.push(b) for b in text]
    assert out[1] == "" and out[2] == "\u00e9"  # the first byte of \u00e9 waits for the second
    assert "".join(out) == "h\u00e9 \nUs!" and s.stopped and s.text == "h\u00e9 \nUs!"
    assert s.finish() == ""
    s = TextStream(Bytes(), stop=["END"])
    assert [s.push(b) for b in b"okEN"] == ["o", "k", "", ""] and s.finish() == "EN"


# --- the OpenAI client ------------------------------------------------------------------------

def test_openai_client_gets_generates_greedy_reply_streamed_and_not(server, client, model):
    _, service = server
    messages = [{"role": "system", "content": "be nice"},  # 16 tokens with the chat markers
                {"role": "user", "content": "who?"}]
    prompt = render_prompt(messages, model.tokenizer)
    want = reference(model, [prompt], request_keys(0, 1), N_NEW, eos=_eos(model))[0]
    r = client.chat.completions.create(model="tiny-chat", messages=messages, temperature=0,
                                       max_tokens=N_NEW)
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.prompt_tokens == len(prompt)
    chunks = list(client.chat.completions.create(
        model="tiny-chat", messages=messages, temperature=0, max_tokens=N_NEW, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert chunks[-2].choices[0].finish_reason == r.choices[0].finish_reason
    assert chunks[-1].usage.total_tokens == r.usage.total_tokens
    assert [m.id for m in client.models.list()] == ["tiny-chat"]


def test_concurrent_requests_share_the_slots_and_match_generate(server, client, model):
    """Nine requests at once on four slots (seeded sampling, n=2, greedy): all served, each
    equal to `generate` with the same keys, decoded in shared steps."""
    url, service = server
    asks = [("say a", 0.0, 0, 1), ("bb", 1.0, 7, 1), ("ccc", 1.0, 8, 2), ("d, e", 0.0, 0, 1),
            ("what?", 1.0, 9, 1), ("x y z", 0.7, 10, 1), ("ok.", 0.7, 11, 2), ("hi", 0.0, 0, 1),
            ("bye", 1.0, 12, 1)]

    def ask(a):
        text, temp, seed, n = a
        r = client.chat.completions.create(model="tiny-chat", temperature=temp, seed=seed, n=n,
                                           max_tokens=N_NEW, top_p=0.9 if temp else None,
                                           messages=[{"role": "user", "content": text}])
        return [c.message.content for c in sorted(r.choices, key=lambda c: c.index)]

    before = service.engine.stats()
    with concurrent.futures.ThreadPoolExecutor(len(asks)) as pool:
        got = dict(zip(asks, pool.map(ask, asks)))
    after = service.engine.stats()
    for temp in (0.0, 0.7, 1.0):  # one reference call per temperature
        group = [a for a in asks if a[1] == temp]
        prompts, keys = [], []
        for text, _, seed, n in group:
            prompts += [render_prompt([{"role": "user", "content": text}], model.tokenizer)] * n
            keys += list(request_keys(seed, n))
        want = reference(model, prompts, keys, N_NEW, temp, 0.9 if temp else 1.0, _eos(model))
        assert [reply for a in group for reply in got[a]] == want, temp
    tokens, steps = after["tokens"] - before["tokens"], after["steps"] - before["steps"]
    assert steps < tokens / 2  # many requests advanced in each step
    assert after["active"] == after["waiting"] == 0


def test_completions_endpoint_and_stop_strings(server, client, model):
    prompt = "the cat sat on"
    full = reference(model, [model.tokenizer.encode(prompt)], request_keys(0, 1), N_NEW,
                     eos=_eos(model))[0]
    r = client.completions.create(model="tiny-chat", prompt=prompt, temperature=0,
                                  max_tokens=N_NEW)
    assert r.choices[0].text == full and r.choices[0].finish_reason == "length"
    stop = full[3:5]  # a stop string from the middle of the greedy reply
    r = client.completions.create(model="tiny-chat", prompt=prompt, temperature=0,
                                  max_tokens=N_NEW, stop=[stop])
    assert r.choices[0].text == full[:full.index(stop)] and r.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny-chat", prompt=prompt, temperature=0, max_tokens=N_NEW, stop=stop,
        stream=True))
    assert streamed == r.choices[0].text


# --- bad input --------------------------------------------------------------------------------

LONG = "abc " * 10  # 40 characters: more than the context of 32

BAD = {
    "malformed JSON": (b'{"messages": [', None, None),
    "not an object": (b"[1, 2]", None, None),
    "missing messages": ({"model": "tiny-chat"}, "messages", None),
    "empty messages": ({"messages": []}, "messages", None),
    "prompt longer than the context": ({"messages": [{"role": "user", "content": LONG}]},
                                       "messages", "context_length_exceeded"),
    "prompt plus max_tokens too long": ({"messages": [{"role": "user", "content": "hi"}],
                                         "max_tokens": 30}, "max_tokens",
                                        "context_length_exceeded"),
    "max_tokens < 1": ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0},
                       "max_tokens", None),
    "unknown model": ({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]},
                      "model", "model_not_found"),
    "unknown role": ({"messages": [{"role": "robot", "content": "hi"}]}, "messages", None),
    "character outside the vocabulary": ({"messages": [{"role": "user", "content": "\u2603"}]},
                                         "messages", None),
    "temperature out of range": ({"messages": [{"role": "user", "content": "hi"}],
                                  "temperature": 5}, "temperature", None),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_400_and_the_server_keeps_serving(server, case):
    url, _ = server
    body, param, code = BAD[case]
    status, reply = _post(url, body)
    assert status == 400, reply
    err = reply["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    assert err["param"] == param and err["code"] == code
    status, reply = _post(url, {"messages": [{"role": "user", "content": "hi"}],
                                "max_tokens": 2})
    assert status == 200 and reply["choices"][0]["message"]["role"] == "assistant"


def test_unknown_path_and_bad_completion_prompt(server):
    url, _ = server
    status, reply = _post(url, {"prompt": "x"}, path="/v1/nothing")
    assert status == 404 and reply["error"]["message"]
    status, reply = _post(url, {"prompt": ["a", "b"]}, path="/v1/completions")
    assert status == 400 and reply["error"]["param"] == "prompt"


def test_a_failing_listener_ends_only_its_request(server):
    url, service = server
    ended: dict[str, str] = {}

    def boom(tok):
        raise KeyError(tok)

    for name, on_token in (("bad", boom), ("good", lambda tok: False)):
        service.engine.submit(Request([1, 2, 3], 5, 0.0, 1.0, 0, on_token=on_token,
                                      on_done=lambda reason, name=name: ended.update(
                                          {name: reason})))
    wait_for(lambda: len(ended) == 2)
    assert ended["bad"].startswith("error: the reply could not be built (KeyError")
    assert ended["good"] in ("length", "stop")
    assert _health(url)["status"] == "ok"


# --- disconnects and shutdown -----------------------------------------------------------------

def test_client_disconnecting_mid_stream_frees_its_slot(server):
    url, service = server
    undo = slow_steps(service.engine, 0.3)  # 24 tokens would take 8 calls, 2.4 s
    try:
        before = service.engine.stats()
        conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
        conn.request("POST", "/v1/chat/completions", json.dumps({
            "messages": [{"role": "user", "content": "story"}], "stream": True,
            "max_tokens": 24, "temperature": 0}), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        while True:  # read until the reply's first text has arrived
            line = resp.readline()
            assert line, "the stream ended before any text"
            if line.startswith(b"data: {") and json.loads(line[6:])["choices"][0][
                    "delta"].get("content"):
                break
        assert service.engine.stats()["active"] == 1
        conn.sock.shutdown(2)  # the client goes away mid-stream
        conn.close()
        after = wait_for(lambda: (s := service.engine.stats())["active"] == 0 and s)
        assert after["finished"].get("cancelled", 0) == before["finished"].get("cancelled",
                                                                               0) + 1
        assert after["tokens"] - before["tokens"] < 24  # it ended early, at a call boundary
    finally:
        undo()
    assert _health(url)["active"] == 0


def test_ctrl_c_stops_the_server_cleanly(tmp_path, model):
    wd = write_workdir(str(tmp_path / "chat"), model)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # one CPU device
    env["PYTHONUNBUFFERED"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "gptjax.serve", "--workdir", wd, "--port",
                             "0", "--slots", "2", "--no-warmup", "--log_level", "warning"],
                            cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        line = wait_for(lambda: next((x for x in lines if " on http://" in x), None), 120, 0.1)
        url = line.split(" on ")[-1].strip().rstrip("/")
        # The command serves the workdir's model (a reply would only add a compile: the
        # in-process server above answers those).
        with urllib.request.urlopen(url + "/v1/models", timeout=30) as r:
            card = json.loads(r.read())["data"][0]
        assert card["id"] == "chat" and card["context_length"] == BLOCK
        assert card["chat_template"] is True and _health(url)["slots"] == 2
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    err = "".join(lines)
    assert "gptjax: interrupted" in err and "Traceback" not in err, err
    with pytest.raises(OSError):
        urllib.request.urlopen(url + "/health", timeout=5)
