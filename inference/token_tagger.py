"""Token classification: BIO tags over Qwen2.5 sub-word tokens, the classic recipe beside the generative one.

One module for the three places that use it, so training, evaluation and ``/predict`` cannot disagree:

* **Labels** (:func:`bio_labels`): ``O`` then ``B-X``, ``I-X`` for each corpus label, in registry order.
* **Alignment** (:func:`encode_words`): a text's words (the corpus tokens, or for raw text the data stage's
  :func:`~medner.data.ground.simple_token_offsets`) are encoded one *piece* at a time, a piece being the word
  with the whitespace before it (``" disease"``). So no Qwen2.5 token ever straddles two words (in Chinese,
  where a Qwen2.5 token often covers two characters, each character is encoded on its own) and every word
  boundary, hence every entity boundary, is a token boundary. A word's tag sits on one sub-token
  (``label_subtoken``): ``last`` by default, because Qwen2.5 attends left to right and the last sub-token is
  the first position that has seen the whole word; ``first`` is the BERT convention. The other sub-tokens are
  ignored in the loss (-100).
* **Echo** (``echo: true``): the window is fed twice and the tags are read on the second copy, whose tokens
  attend to the whole first copy: a left-to-right model then sees the words after the one it tags
  ("breast" before "cancer"). Twice the tokens per window.
* **Decoding** (:func:`decode_tags`): ``argmax`` per word, then the repair rule of CoNLL's evaluation
  script: an ``I-X`` that does not continue an ``X`` mention (after ``O``, at the start, or after another
  type) opens one, as ``B-X``. ``viterbi``: the best tag sequence under the BIO transition constraints
  (no ``I-X`` after ``O``/start or after another type) over the per-word log-probabilities.
* **Spans**: tags -> token spans (:func:`medner.data.bio.tags_to_spans`) -> character offsets of the words,
  so every entity slices the input exactly.

Long texts are cut with the data stage's windowing rule (:func:`medner.data.windows.make_windows`, overlapping
windows for raw text, duplicates merged), counted in the sub-tokens this module feeds the model.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

from medner.data.bio import tags_to_spans
from medner.data.ground import simple_token_offsets
from medner.data.records import record_tags
from medner.data.windows import WINDOW_TOKENS, make_windows, merge_window_entities
from medner.inference.models import resolve_model, weights_hash
from medner.inference.runrecord import read_record

log = logging.getLogger(__name__)

FAMILY = "token-classification"
IGNORE = -100


class TokClsError(ValueError):
    pass


def bio_labels(label_names: Sequence[str]) -> list[str]:
    """``["O", "B-X", "I-X", ...]`` for a corpus's labels, in registry order."""
    out = ["O"]
    for name in label_names:
        out += [f"B-{name}", f"I-{name}"]
    return out


def word_pieces(text: str, offsets: Sequence[Sequence[int]]) -> list[str]:
    """Each word with the whitespace before it; joined, they are the text up to the end of the last word."""
    pieces, prev = [], 0
    for _s, e in offsets:
        pieces.append(text[prev:e])
        prev = e
    return pieces


def encode_words(text: str, offsets: Sequence[Sequence[int]], tokenizer, label_subtoken: str = "last") -> tuple[list[int], list[int]]:
    """(input ids, the index of the sub-token that carries each word's tag)."""
    if label_subtoken not in ("first", "last"):
        raise TokClsError(f"label_subtoken must be first or last, not {label_subtoken!r}")
    if not offsets:
        return [], []
    enc = tokenizer(word_pieces(text, offsets), add_special_tokens=False)["input_ids"]
    ids: list[int] = []
    where: list[int] = []
    for piece_ids in enc:
        if not piece_ids:  # cannot happen for a non-empty piece; kept as a guard for exotic tokenizers
            raise TokClsError("a word encoded to no token")
        where.append(len(ids) if label_subtoken == "first" else len(ids) + len(piece_ids) - 1)
        ids += piece_ids
    return ids, where


def sub_token_counter(tokenizer, lang: str):
    """Counts the sub-tokens :func:`encode_words` feeds for a text (the windowing rule's measure)."""

    def count(t: str) -> int:
        offs = simple_token_offsets(t, lang)
        return sum(len(x) for x in tokenizer(word_pieces(t, offs), add_special_tokens=False)["input_ids"]) if offs else 0

    return count


def training_features(record: dict, tokenizer, label2id: dict[str, int], label_subtoken: str, echo: bool) -> dict:
    """One training example from a (windowed) record: input ids and labels on the tag-carrying sub-tokens."""

    ids, where = encode_words(record["text"], record["token_offsets"], tokenizer, label_subtoken)
    tags = record_tags(record)
    labels = [IGNORE] * len(ids)
    for i, tag in zip(where, tags):
        if tag not in label2id:
            raise TokClsError(f"record {record['id']}: tag {tag!r} is not in the label set {list(label2id)}")
        labels[i] = label2id[tag]
    if echo:
        ids, labels = ids + ids, [IGNORE] * len(ids) + labels
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}


# -- decoding -------------------------------------------------------------------------------------
def allowed(prev: str | None, tag: str) -> bool:
    """BIO transition rule: ``I-X`` only after ``B-X`` or ``I-X``."""
    if not tag.startswith("I-"):
        return True
    return prev is not None and prev != "O" and prev[2:] == tag[2:]


def repair(tags: Sequence[str]) -> list[str]:
    """An ``I-X`` that does not continue an ``X`` mention becomes ``B-X`` (CoNLL's rule)."""
    out: list[str] = []
    for t in tags:
        out.append("B-" + t[2:] if t.startswith("I-") and not allowed(out[-1] if out else None, t) else t)
    return out


def viterbi(logprobs: Sequence[Sequence[float]], labels: Sequence[str]) -> list[str]:
    """The most probable tag sequence that obeys :func:`allowed` (per-word log-probabilities, no learned
    transition scores)."""
    if not len(logprobs):
        return []
    n = len(labels)
    score = [lp if allowed(None, labels[j]) else -math.inf for j, lp in enumerate(logprobs[0])]
    back: list[list[int]] = []
    for row in logprobs[1:]:
        new, ptr = [], []
        for j in range(n):
            best, arg = -math.inf, 0
            for i in range(n):
                if score[i] > best and allowed(labels[i], labels[j]):
                    best, arg = score[i], i
            new.append(best + row[j])
            ptr.append(arg)
        score, back = new, back + [ptr]
    j = max(range(n), key=lambda k: score[k])
    path = [j]
    for ptr in reversed(back):
        j = ptr[j]
        path.append(j)
    return [labels[k] for k in reversed(path)]


def decode_tags(logprobs, labels: Sequence[str], decode: str = "argmax") -> list[str]:
    """Per-word log-probabilities (words x labels) -> valid IOB2 tags."""
    if decode == "viterbi":
        return viterbi([list(map(float, r)) for r in logprobs], labels)
    if decode != "argmax":
        raise TokClsError(f"decode must be argmax or viterbi, not {decode!r}")
    return repair([labels[max(range(len(r)), key=lambda k: r[k])] for r in logprobs])


def tags_to_entities(text: str, offsets: Sequence[Sequence[int]], tags: Sequence[str]) -> list[dict]:
    """IOB2 tags on words -> ``[{"text", "type", "start", "end"}]`` with character offsets into ``text``."""

    out = []
    for sp in tags_to_spans(list(tags), "iob2"):
        s, e = offsets[sp.start][0], offsets[sp.end - 1][1]
        out.append({"text": text[s:e], "type": sp.label, "start": s, "end": e})
    return out


# -- the model --------------------------------------------------------------------------------------
def load_token_classifier(
    model_dir: str | Path, labels: Sequence[str], dtype: str = "bfloat16", device: str = "cpu", quantization_config=None
):
    """A Qwen2-family model with a token-classification head (new, randomly initialised) for ``labels``."""
    import torch
    from transformers import AutoModelForTokenClassification

    kwargs: dict = {
        "dtype": getattr(torch, dtype),
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {t: i for i, t in enumerate(labels)},
    }
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    model = AutoModelForTokenClassification.from_pretrained(str(model_dir), **kwargs)
    if quantization_config is None:
        model = model.to(device)
    return model


def read_tokcls_record(adapter_dir: str | Path) -> dict:
    """The run record of a token-classification adapter; refuses a generative one in one line."""

    rec = read_record(adapter_dir)
    if rec is None:
        raise TokClsError(f"{adapter_dir}: no medner_run.json; not an adapter trained by `medner tokcls train`")
    if rec.get("family") != FAMILY:
        raise TokClsError(
            f"{adapter_dir}: a generative (SFT) adapter, not a token-classification run; "
            "use it with the generative backends (vllm, hf, server) or train one with `medner tokcls train`"
        )
    return rec


class TokenTagger:
    """A token-classification model ready to tag texts: windows, batched forward passes, decoding, offsets."""

    def __init__(
        self,
        model,
        tokenizer,
        labels: Sequence[str],
        lang: str,
        window_tokens: int = WINDOW_TOKENS,
        batch_size: int = 16,
        label_subtoken: str = "last",
        echo: bool = False,
        decode: str = "argmax",
        corpus: str | None = None,
    ):
        self.model, self.tokenizer = model, tokenizer
        self.corpus = corpus
        self.labels = list(labels)
        self.lang = lang
        self.window_tokens = window_tokens
        self.batch_size = batch_size
        self.label_subtoken = label_subtoken
        self.echo = echo
        self.decode = decode
        self.count = sub_token_counter(tokenizer, lang)

    @classmethod
    def load(
        cls,
        adapter_dir: str | Path,
        base: str | Path | None = None,
        corpus: str | None = None,
        batch_size: int = 16,
        decode: str | None = None,
        device: str | None = None,
    ) -> TokenTagger:
        """Base model + adapter from a ``medner tokcls train`` run (checked against its run record), merged
        for speed. ``corpus``: refused unless the run was trained on it."""
        import torch
        from peft import PeftModel
        from transformers import AutoTokenizer

        rec = read_tokcls_record(adapter_dir)
        base_dir = resolve_model(str(base or rec["base_model"]["path"]))
        want = rec["base_model"].get("weights_sha256")
        if want and weights_hash(base_dir) != want:
            raise TokClsError(
                f"{adapter_dir}: trained on base model {rec['base_model'].get('source')!r} (weights {want[:12]}), "
                f"but {base_dir} has other weights; use the base it was trained on"
            )
        name = corpus or rec["corpus"]
        if name != rec["corpus"]:
            raise TokClsError(f"{adapter_dir}: trained on {rec['corpus']!r}, not on {name!r}: its tag set is {rec['labels']}")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_token_classifier(base_dir, rec["labels"], rec.get("dtype", "bfloat16"), device)
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
        model.eval()
        tok = AutoTokenizer.from_pretrained(str(adapter_dir) if (Path(adapter_dir) / "tokenizer_config.json").is_file() else str(base_dir))
        return cls(
            model,
            tok,
            rec["labels"],
            rec["lang"],
            rec.get("window_tokens", 256),
            batch_size,
            rec.get("label_subtoken", "last"),
            rec.get("echo", False),
            decode or rec.get("decode", "argmax"),
            corpus=name,
        )

    # one window -> (ids, tag positions, word offsets relative to the window)
    def _encode(self, text: str, offsets: Sequence[Sequence[int]]) -> tuple[list[int], list[int]]:
        ids, where = encode_words(text, offsets, self.tokenizer, self.label_subtoken)
        if self.echo:
            where = [len(ids) + w for w in where]
            ids = ids + ids
        return ids, where

    def _forward(self, batch: list[list[int]]):
        import torch

        width = max(len(x) for x in batch)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.tensor([x + [pad] * (width - len(x)) for x in batch])  # right padding: positions stay 0..n-1
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch])
        dev = next(self.model.parameters()).device
        with torch.inference_mode():
            logits = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).logits
        return torch.log_softmax(logits.float(), dim=-1).cpu().numpy()

    def tag_records(self, records: Sequence[dict]) -> list[dict]:
        """Records (``{"text", "token_offsets"}``) -> ``{"entities", "windows", "status"}`` each, in order."""

        jobs = []  # (record index, window start, window text, window offsets)
        n_windows = [0] * len(records)
        for k, r in enumerate(records):
            text, offs = r["text"], r["token_offsets"]
            if not offs:
                continue
            for s, e in make_windows(text, offs, self.lang, self.count, self.window_tokens):
                w_offs = [[a - s, b - s] for a, b in offs if s <= a and b <= e]
                if w_offs:
                    jobs.append((k, s, text[s:e], w_offs))
                    n_windows[k] += 1
        encoded = [self._encode(t, o) for _, _, t, o in jobs]
        per_record: list[list[tuple[int, list[dict]]]] = [[] for _ in records]
        order = sorted(range(len(jobs)), key=lambda i: len(encoded[i][0]))  # similar lengths together: less padding
        for b in range(0, len(order), self.batch_size):
            part = order[b : b + self.batch_size]
            logp = self._forward([encoded[i][0] for i in part])
            for row, i in enumerate(part):
                k, s, t, o = jobs[i]
                tags = decode_tags(logp[row][encoded[i][1]], self.labels, self.decode)
                per_record[k].append((s, tags_to_entities(t, o, tags)))
        out = []
        for k, r in enumerate(records):
            ents = merge_window_entities(sorted(per_record[k], key=lambda x: x[0]))
            for e in ents:
                e["text"] = r["text"][e["start"] : e["end"]]
            out.append({"entities": ents, "dropped": [], "status": "ok", "windows": n_windows[k], "output_tokens": 0})
        return out

    def tag_texts(self, texts: Sequence[str]) -> list[dict]:
        """Raw texts (tokenized by the data stage's rule for the run's language) -> results with offsets."""

        return self.tag_records([{"text": t, "token_offsets": [list(o) for o in simple_token_offsets(t, self.lang)]} for t in texts])


# -- backend tokcls -------------------------------------------------------------------------------
class TokclsBackend:
    """A token-classification run as a backend: chunks of records tagged, one result per record."""

    name = "tokcls"
    prompt_version = None

    def __init__(self, cfg, corpus) -> None:
        self.tagger = TokenTagger.load(cfg.adapter, cfg.model, corpus.name, batch_size=cfg.batch_size, decode=cfg.tokcls_decode)
        self.decode = self.tagger.decode
        self.chunk = max(1, 4 * cfg.batch_size)

    def predict(self, records: Sequence[dict], write) -> float:
        if records:
            self.tagger.tag_records(records[:1])  # warm-up, untimed, as every backend gets
        t0 = time.perf_counter()
        for start in range(0, len(records), self.chunk):
            chunk = records[start : start + self.chunk]
            t = time.perf_counter()
            results = self.tagger.tag_records(chunk)
            took = time.perf_counter() - t
            for rec, res in zip(chunk, results):
                write({"id": rec["id"], "text": rec["text"], **res, "latency_s": took})
        return time.perf_counter() - t0
