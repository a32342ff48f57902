"""``medner``: one command, one subcommand per pipeline stage.

    medner data convert|validate      BIO corpora -> records and instruction/JSON pairs
    medner sft train|make-tiny|merge  QLoRA fine-tuning with TRL
    medner tokcls train               token classification (BIO head + LoRA), the classic baseline
    medner serve                      vLLM's OpenAI-compatible server with the adapter
    medner extract                    chat extraction queries against a server
    medner api                        the /v1/extract endpoint
    medner eval run|score|compare     the eval harness

Errors in the input end the command with one clear line on stderr and exit status 1
(set MEDNER_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

from medner.data.bio import BioError, read_bio
from medner.data.formats import read_annotated
from medner.data.records import convert, write_jsonl
from medner.data.registry import get_corpus
from medner.data.stats import format_stats, record_stats
from medner.eval.commands import add_eval_commands
from medner.export import export
from medner.prompts.pairs import records_to_pairs
from medner.pull import pull
from medner.serve.commands import add_serve_commands
from medner.sft.commands import add_sft_commands, add_tokcls_commands
from medner.tokenizer import token_counter


def _data_convert(a: argparse.Namespace) -> int:
    corpus = get_corpus(a.corpus)
    records = convert(corpus, a.split)
    n = write_jsonl(records, a.out)
    count = token_counter() if (a.pairs_out or a.stats) else None
    n_pairs = None
    if a.pairs_out:
        n_pairs = write_jsonl(records_to_pairs(records, corpus, count, max_window_tokens=a.window_tokens), a.pairs_out)
    print(format_stats(corpus.name, a.split, record_stats(records, count), n_pairs))
    print(f"  wrote {n} records to {a.out}" + (f", {n_pairs} pairs to {a.pairs_out}" if a.pairs_out else ""))
    return 0


def _data_validate(a: argparse.Namespace) -> int:
    corpus = get_corpus(a.corpus) if a.corpus else None
    labels = corpus.label_names if corpus else None
    fmt = a.format or (corpus.format if corpus else "bio")
    lang = a.lang or (corpus.lang if corpus else "en")
    bad = 0
    for f in a.files:
        if fmt != "bio":
            try:
                sents, problems = read_annotated(f, fmt, lang, labels, "validate"), []
            except BioError as e:
                sents, problems = [], e.problems
        else:
            sents, problems = read_bio(f, a.scheme, labels)
        for p in problems:
            print(p, file=sys.stderr)
        bad += len(problems)
        if not problems:
            print(f"{f}: ok ({len(sents)} {'sentences, scheme ' + a.scheme if fmt == 'bio' else 'records, format ' + fmt})")
    if bad:
        print(f"{bad} problem(s) found", file=sys.stderr)
    return 1 if bad else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="medner", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    stages = p.add_subparsers(dest="stage", required=True)

    data = stages.add_parser("data", help="BIO corpora -> records and training pairs").add_subparsers(dest="action", required=True)
    c = data.add_parser("convert", help="one split of a registered corpus -> records JSONL (and pairs)")
    c.add_argument("corpus")
    c.add_argument("--split", required=True, choices=["train", "dev", "test"])
    c.add_argument("--out", required=True, help="records JSONL")
    c.add_argument("--pairs-out", help="also write instruction/JSON training pairs here")
    c.add_argument("--window-tokens", type=int, default=256, help="window cap in Qwen2.5 tokens for pairs")
    c.add_argument("--stats", action="store_true", help="also print text lengths in Qwen2.5 tokens")
    c.set_defaults(func=_data_convert)
    v = data.add_parser("validate", help="check BIO files; every problem with file:line")
    v.add_argument("files", nargs="+")
    v.add_argument("--corpus", help="also check labels against this registered corpus")
    v.add_argument("--scheme", default="iob2", choices=["iob2", "iob1", "bioes"])
    v.add_argument("--format", choices=["bio", "labelstudio", "doccano", "brat"], help="file format (default: the corpus's, else bio)")
    v.add_argument("--lang", choices=["en", "zh"], help="tokenization of annotation-tool files (default: the corpus's, else en)")
    v.set_defaults(func=_data_validate)

    add_sft_commands(stages)
    add_tokcls_commands(stages)
    add_serve_commands(stages)
    add_eval_commands(stages)

    pl = stages.add_parser("pull", help="fetch the base model of the shipped adapters (models/), check its sha256, dequantize it")
    pl.add_argument("--from", dest="source", metavar="FILE", help="a local copy of the official GGUF file (offline)")
    pl.set_defaults(func=_pull)

    ex = stages.add_parser("export", help="an adapter merged into its base: a Hugging Face folder with its model card, optionally GGUF")
    ex.add_argument("--adapter", required=True, help="an adapter folder, or the name of one shipped in models/")
    ex.add_argument("--out", required=True, help="the folder to write")
    ex.add_argument("--model", help="the base model (default: the one its run record names)")
    ex.add_argument("--gguf", choices=["f16", "q8_0"], help="also write a GGUF file of that type")
    ex.set_defaults(func=_export)
    return p


def _export(a: argparse.Namespace) -> int:
    written = export(a.adapter, a.out, a.model, a.gguf)
    for path in written.values():
        print(path)
    return 0


def _pull(a: argparse.Namespace) -> int:
    folder = pull(a.source)
    print(f"base model ready; serve a shipped adapter with: medner serve model={folder} adapter=models/chat-qwen2.5-0.5b", file=sys.stderr)
    print(folder)
    return 0


def _exit_on_sigterm() -> None:
    """SIGTERM ends the command as Ctrl-C does: through Python's shutdown, so engines started in-process
    (vLLM's offline engine runs its core in child processes) are shut down with it, not orphaned."""

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if argv is None:  # the command line, not an in-process call (tests)
        _exit_on_sigterm()
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        if os.environ.get("MEDNER_DEBUG"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"error: {msg}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
