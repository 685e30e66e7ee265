"""Stage `prepare` on classical Chinese: Song ci, Tang poems, the Classic of Poetry, the
Analects, Chu ci, Mencius and the other Four Books, and Dream of the Red Chamber (红楼梦).

The data is ../shared/data (chinese-poetry and hongloumeng, see their SOURCE.md; set GPTJAX_DATA
to another copy). Then pretrain on it with configs/pretrain_chinese_classics.py:

    python -m gptjax.train --config configs/prepare_chinese_classics.py \\
        --workdir runs/prepare_chinese_classics
    python -m gptjax.train --config configs/pretrain_chinese_classics.py

Poems are short and repeat their own lines by design, so the word-level Gopher rules (written
for English web text) are off and the repetition limits are loose; NFKC is off to keep the
full-width Chinese punctuation (，。：？) as written.
"""

import os

from gptjax.config import base_config

DATA = os.environ.get("GPTJAX_DATA", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data"))
POETRY = os.path.join(DATA, "chinese-poetry")


def get_config():
    c = base_config()
    c.stage = "prepare"
    p = c.prepare
    p.inputs = (
        os.path.join(POETRY, "宋词"), os.path.join(POETRY, "全唐诗"), os.path.join(POETRY, "诗经"),
        os.path.join(POETRY, "论语"), os.path.join(POETRY, "楚辞"), os.path.join(POETRY, "四书五经"),
        os.path.join(DATA, "hongloumeng", "input.txt"),
    )
    p.text_field = "paragraphs|content"  # poems: paragraphs; the Classic of Poetry: content
    p.text_unit = "paragraph"  # 红楼梦: blank-line separated paragraphs
    p.clean.nfkc = False
    p.filters.languages = ("zh",)
    p.filters.min_chars = 10
    p.filters.quality = False
    p.repetition.max_dup_line_frac = 0.5
    p.repetition.max_dup_line_char_frac = 0.5
    p.repetition.top_ngram = ((2, 0.3), (3, 0.3), (4, 0.3))  # refrains are a poetic device
    p.repetition.dup_ngram = ((10, 0.5),)  # the Classic of Poetry repeats whole stanzas
    p.val_fraction = 0.02
    p.num_shards = 4
    p.tokenizer.vocab_size = 12000  # the corpus has ~8,500 distinct characters at 0.9995 coverage
    return c
