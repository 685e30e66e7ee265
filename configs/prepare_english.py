"""Stage `prepare` on English web and encyclopedia text shipped inside the package.

300 C4 documents (JSONL, gzip) and 30 Wikipedia articles (plain text, one a line, gzip):
cleaned, Gopher-filtered, deduplicated, then a 4,000-token sentencepiece BPE. Seconds on a CPU:

    python -m gptjax.train --config configs/prepare_english.py --workdir runs/prepare_english

Your own data: --config.prepare.inputs="('corpus/*.jsonl.gz',)" (and prepare.text_field).
"""

from gptjax.config import base_config
from gptjax.data.lm import embedded_path


def get_config():
    c = base_config()
    c.stage = "prepare"
    p = c.prepare
    p.inputs = (embedded_path("c4_demo.jsonl.gz"), embedded_path("wiki_demo.txt.gz"))
    p.text_field = "text"
    p.text_unit = "line"  # wiki_demo.txt holds one article a line
    p.filters.languages = ("en",)
    p.num_shards = 2
    p.tokenizer.vocab_size = 4000
    return c
