"""`python -m gptjax.sample` on a workdir trained by the tiny config."""

import os

import pytest

from conftest import run_cli

from gptjax.data.tokenizer import load_tokenizer


def test_sample_prints_continuations(trained):
    args = ("gptjax.sample", "--workdir", trained, "--prompt", "ROMEO:", "--num_samples", "3",
            "--max_new_tokens", "20", "--seed", "1")
    r = run_cli(*args)
    assert r.returncode == 0, r.stderr
    samples = r.stdout.split("--- sample ")[1:]
    assert len(samples) == 3
    bodies = [s.split("\n", 1)[1].rstrip("\n") for s in samples]
    # 20 new tokens, or fewer when the model ended the document (<|endoftext|>)
    tok = load_tokenizer(os.path.join(trained, "tokenizer.json"))
    n_new = [len(tok.encode(b)) - len("ROMEO:") for b in bodies]
    assert all(b.startswith("ROMEO:") for b in bodies) and max(n_new) <= 20, n_new
    assert len(set(bodies)) > 1  # different keys per sample
    assert run_cli(*args).stdout == r.stdout  # same seed, same text


def test_greedy_samples_agree_and_overflow_is_stated(trained):
    r = run_cli("gptjax.sample", "--workdir", trained, "--prompt", "ROMEO:", "--num_samples",
                "2", "--temperature", "0", "--max_new_tokens", "500")
    assert r.returncode == 0, r.stderr
    assert "lowered to 26" in r.stderr  # block 32 - 6 prompt tokens
    a, b = [s.split("\n", 1)[1] for s in r.stdout.split("--- sample ")[1:]]
    assert a == b


@pytest.mark.parametrize("args, message", [
    (("--prompt", ""), "--prompt is empty"),
    (("--prompt", "a" * 40), "shorten the prompt to at most 31 tokens"),
    (("--prompt", "caf\u00e9 \u2603"), "is not in this char tokenizer's vocabulary"),
])
def test_bad_input(trained, args, message):
    r = run_cli("gptjax.sample", "--workdir", trained, *args)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_unknown_workdir(tmp_path):
    r = run_cli("gptjax.sample", "--workdir", str(tmp_path / "nope"), "--prompt", "x")
    assert r.returncode == 2 and "no such directory" in r.stderr


def test_streamed_output_equals_the_batch_output(trained):
    args = ("gptjax.sample", "--workdir", trained, "--prompt", "ROMEO:", "--num_samples", "2",
            "--max_new_tokens", "20", "--seed", "3")
    streamed = run_cli(*args, "--stream")
    plain = run_cli(*args, "--no-stream")
    assert streamed.returncode == 0 and plain.returncode == 0, streamed.stderr + plain.stderr
    assert streamed.stdout == plain.stdout and streamed.stdout.count("--- sample") == 2


def test_chat_streams_the_same_replies(trained):
    args = ("gptjax.chat", "--workdir", trained, "--max_new_tokens", "8")
    streamed = run_cli(*args, "--stream", input="ROMEO:\nJULIET:\n")
    plain = run_cli(*args, "--no-stream", input="ROMEO:\nJULIET:\n")
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == plain.stdout and streamed.stdout.count("model> ") == 2


class _ByteTokenizer:
    """ids are UTF-8 bytes: one character may take several tokens."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def test_token_printer_waits_for_whole_characters():
    import io

    from gptjax.streaming import TokenPrinter
    out = io.StringIO()
    printer = TokenPrinter(_ByteTokenizer(), stop_id=0, row=1, out=out)
    ids = list("a\u00e9\u2603".encode())  # 1 + 2 + 3 bytes
    shown = []
    for i, t in enumerate(ids + [0, 65]):  # stops at 0: the 65 after it is never shown
        printer(i, [99, t])
        shown.append(out.getvalue())
    assert shown[:6] == ["a", "a", "a\u00e9", "a\u00e9", "a\u00e9", "a\u00e9\u2603"]
    assert shown[-1] == "a\u00e9\u2603"
    printer.finish(ids)
    assert out.getvalue() == "a\u00e9\u2603\n"
