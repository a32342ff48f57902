"""Windowing of long texts (data/windows.py)."""

from medner.data.detok import join_tokens
from medner.data.windows import entities_in_window, make_windows, merge_window_entities


def chars(text):
    return len(text)  # a stand-in token counter: 1 token per character (exact and easy to reason about)


def zh(text):
    toks = list(text)
    return text, [(i, i + 1) for i in range(len(toks))]


def test_short_text_is_one_window():
    text, offs = zh("头痛。发热。")
    assert make_windows(text, offs, "zh", chars, 100, []) == [(0, 6)]


def test_windows_cover_text_at_sentence_boundaries_within_cap():
    text, offs = zh("头痛三天。发热两天。咳嗽一周。")
    wins = make_windows(text, offs, "zh", chars, 10, [])
    assert wins == [(0, 10), (10, 15)]
    assert "".join(text[s:e] for s, e in wins) == text
    assert all(e - s <= 10 for s, e in wins)


def test_annotated_windows_never_cut_an_entity_containing_a_sentence_ender():
    text, offs = zh("患者有甲。乙病史。发热。")
    ent = {"text": "甲。乙病", "type": "disease", "start": 3, "end": 7}
    wins = make_windows(text, offs, "zh", chars, 6, [ent])
    assert any(s <= 3 and 7 <= e for s, e in wins)
    assert "".join(text[s:e] for s, e in wins) == text


def test_long_sentence_cut_at_token_boundaries_outside_entities():
    tokens = [f"w{i}" for i in range(30)]
    text, offs = join_tokens(tokens, "en")
    ent = {"start": offs[9][0], "end": offs[11][1], "type": "D", "text": text[offs[9][0] : offs[11][1]]}
    wins = make_windows(text, offs, "en", chars, 30, [ent])
    assert len(wins) > 1
    assert "".join(text[s:e] for s, e in wins) == text
    assert any(s <= ent["start"] and ent["end"] <= e for s, e in wins)


def test_raw_windows_overlap_and_duplicates_merge():
    text, offs = zh("头痛三天。发热两天。咳嗽一周。")
    wins = make_windows(text, offs, "zh", chars, 10, None)
    assert wins[0][1] > wins[1][0]  # overlapping
    per_window = []
    for s, e in wins:
        ents = (
            [{"text": "发热", "type": "symptom", "start": text.index("发热") - s, "end": text.index("发热") + 2 - s}]
            if s <= 5 and 7 <= e
            else []
        )
        per_window.append((s, ents))
    merged = merge_window_entities(per_window)
    assert merged == [{"text": "发热", "type": "symptom", "start": 5, "end": 7}]


def test_entities_in_window_are_relative():
    ents = [{"start": 5, "end": 7, "type": "x", "text": "ab"}, {"start": 12, "end": 14, "type": "x", "text": "cd"}]
    assert entities_in_window(ents, 4, 10) == [{"start": 1, "end": 3, "type": "x", "text": "ab"}]


def test_real_cmedqaner_long_texts_windowed_with_qwen_tokens(registry):
    from medner.data.records import convert
    from medner.prompts.pairs import record_to_pairs
    from medner.tokenizer import token_counter

    count = token_counter()
    corpus = registry["cmedqaner"]
    records = [r for r in convert(corpus, "train") if len(r["text"]) > 600]
    assert records
    for rec in records:
        pairs = record_to_pairs(rec, corpus, count, max_window_tokens=256)
        assert len(pairs) > 1
        spans = [tuple(p["window"]) for p in pairs]
        assert "".join(rec["text"][s:e] for s, e in spans) == rec["text"]
        covered = sum(p["completion"][0]["content"].count('"type"') for p in pairs)
        assert covered == len(rec["entities"])  # no entity lost or cut
