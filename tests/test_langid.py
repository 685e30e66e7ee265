"""Language identification: accuracy on the shipped English and Chinese corpora, other scripts."""

from __future__ import annotations

import collections

import pytest

from conftest import SHARED_DATA
from gptjax.data import langid
from gptjax.data.readers import expand_inputs, read_documents

# (language, path under ../shared/data, JSON text field, plain-text unit)
CORPORA = [
    ("en", "llamafactory-pretrain-demo/c4_demo.jsonl", "text", ""),
    ("en", "llamafactory-pretrain-demo/wiki_demo.txt", "", "line"),
    ("en", "tinyshakespeare/input.txt", "", "paragraph"),
    ("en", "gsm8k/test.jsonl", "question", ""),
    ("en", "self-instruct/seed_tasks.jsonl", "instruction", ""),
    ("zh", "hongloumeng/input.txt", "", "paragraph"),
    ("zh", "chinese-poetry/宋词/ci.song.0.json", "paragraphs", ""),
    ("zh", "chinese-poetry/全唐诗/poet.tang.0.json", "paragraphs", ""),  # traditional characters
    ("zh", "chinese-poetry/诗经/shijing.json", "content", ""),
    ("zh", "cvalues-prompts/cvalues_responsibility_prompts.jsonl", "prompt", ""),
]


def accuracy_table():
    """[(path, language, documents, accuracy, confusions)] on the shipped corpora."""
    rows = []
    for lang, rel, field, unit in CORPORA:
        docs = read_documents(expand_inputs([str(SHARED_DATA / rel)]), field or "text",
                              text_unit=unit or "paragraph")
        labels = collections.Counter(langid.identify(d.text) for d in docs)
        n = sum(labels.values())
        rows.append((rel, lang, n, labels[lang] / n, dict(labels)))
    return rows


def test_accuracy_on_the_shipped_corpora():
    rows = accuracy_table()
    total = sum(n for _, _, n, _, _ in rows)
    right = sum(n * acc for _, _, n, acc, _ in rows)
    for rel, lang, n, acc, labels in rows:
        print(f"{rel}: {n} documents, {acc:.4f} {lang} {labels}")
        assert acc >= 0.99, (rel, labels)
    print(f"overall: {right / total:.4f} of {total}")
    assert right / total >= 0.995


@pytest.mark.parametrize("text,label", [
    ("The quick brown fox jumps over the lazy dog, and then it runs into the woods.", "en"),
    ("Le chat est sur la table et il mange une souris dans la maison.", "latin"),
    ("Der Hund läuft schnell über die Straße und die Kinder spielen im Garten.", "latin"),
    ("今日は天気がいいですね。散歩に行きましょう。", "ja"),
    ("满纸荒唐言，一把辛酸泪。", "zh"),
    ("秦川雄帝宅，函谷壯皇居。", "zh"),  # traditional characters are still Chinese
    ("오늘 날씨가 좋네요", "ko"),
    ("Привет, как дела?", "cyrillic"),
    ("مرحبا كيف حالك", "arabic"),
    ("12345 !!! ...", "und"),
    ("", "und"),
    ("OK, thanks!", "en"),  # short ASCII text: English
])
def test_labels(text, label):
    assert langid.identify(text) == label


def test_mixed_text_goes_by_the_majority_script():
    assert langid.identify("《红楼梦》是中国古典小说的巅峰之作 (Dream of the Red Chamber)") == "zh"
    assert langid.identify("The novel Dream of the Red Chamber (红楼梦) is a classic of "
                           "Chinese literature that was written in the 18th century.") == "en"
