"""`python -m gptjax.chat`: turns from stdin, replies on stdout, bad lines survived."""

from conftest import run_cli


def test_chat_replies_to_each_turn_and_quits(trained):
    r = run_cli("gptjax.chat", "--workdir", trained, "--max_new_tokens", "8",
                input="ROMEO:\nJULIET:\n/quit\nnever read\n")
    assert r.returncode == 0, r.stderr
    replies = [line for line in r.stdout.splitlines() if line.startswith("model> ")]
    assert len(replies) == 2


def test_chat_survives_a_line_it_cannot_encode(trained):
    r = run_cli("gptjax.chat", "--workdir", trained, "--max_new_tokens", "8",
                input="caf\u00e9 \u2603\nKING:\n")  # ends at EOF, no /quit
    assert r.returncode == 0, r.stderr
    assert "not in this char tokenizer's vocabulary" in r.stderr
    assert r.stdout.count("model> ") == 1


def test_chat_bad_reply_length(trained):
    r = run_cli("gptjax.chat", "--workdir", trained, "--max_new_tokens", "32", input="")
    assert r.returncode == 2 and "between 1 and 31" in r.stderr
