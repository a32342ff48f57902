"""``make demo``: a trained model when one can run here, else the whole pipeline on a random tiny model.

With a base model (``medner pull``, or ``MEDNER_BASE_MODEL=PATH``): the shipped adapter (models/) behind a real
vLLM server -> entities highlighted for English and Chinese sentences -> a chat-style question and its answer ->
strict F1 on the first 100 test records of each vendored corpus.

Without one: tiny local Qwen2 model -> SFT on vendored NCBI-disease -> real vLLM server with the adapter ->
``medner extract`` on one sentence -> ``medner eval run`` on 20 test records -> report.md. The tiny model has
random weights, so its scores are near zero, and the first and last lines say so.
``python -m medner.demo --out DIR --limit N --steps N``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from medner import procs
from medner.data.registry import get_corpus
from medner.inference.runrecord import read_record, trained_types
from medner.inference.server_client import ExtractClient
from medner.prompts.contract import task_for
from medner.pull import pulled_base
from medner.serve.chat import answer_content, ground, normalise, plan_chat

ROOT = Path(__file__).resolve().parents[1]


def medner(*args: str) -> None:
    print("+ medner " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "medner.cli", *args], check=True)


RANDOM = "these scores are those of a random tiny model, not a trained one; get the real one with: medner pull"
SHIPPED = ROOT / "models" / "chat-qwen2.5-0.5b"
SENTENCES = (
    ("ncbi-disease", "Familial adenomatous polyposis is an inherited cancer syndrome."),
    ("bc5cdr", "Lidocaine-induced cardiac asystole was reversed after the infusion of naloxone."),
    ("cmedqaner", "宝宝出水痘了，需要吃阿昔洛韦吗？"),
)
QUESTION = "Which diseases and drugs are mentioned here? Aspirin was stopped because of gastric ulcer bleeding."


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/demo")
    ap.add_argument("--limit", type=int, default=None, help="test records to evaluate (100 with a base model, 20 on the tiny one)")
    ap.add_argument("--steps", type=int, default=12, help="SFT steps (tiny model)")
    a = ap.parse_args()
    base = pulled_base()
    if base is not None and (SHIPPED / "adapter_config.json").is_file():
        return real_demo(base, a)
    print(f"medner demo: no base model found (medner pull, or MEDNER_BASE_MODEL=PATH): {RANDOM}", flush=True)
    tiny_demo(a)
    print(f"medner demo: {RANDOM}")
    return 0


def highlighted(text: str, entities: list[dict]) -> str:
    """The text with each entity in reverse video and its type after it (ANSI, for a terminal)."""
    out, at = [], 0
    for e in sorted(entities, key=lambda e: e["start"]):
        if e["start"] < at:
            continue
        out.append(text[at : e["start"]] + f"\033[7m{text[e['start'] : e['end']]}\033[0m[{e['type']}]")
        at = e["end"]
    return "".join(out) + text[at:]


def real_demo(base: Path, a: argparse.Namespace) -> int:
    """The shipped adapter on the base: entities, a chat answer, strict F1 on 100 test records per corpus."""

    out = Path(a.out) / "real"
    out.mkdir(parents=True, exist_ok=True)
    limit = a.limit or 100
    asked = ["Chemical", "Disease"]
    known = trained_types(read_record(SHIPPED))["labels"]  # decoded as `medner api` does: every trained type, the asked kept
    print(f"medner demo: the shipped adapter {SHIPPED.name} on the base model {base} (real entities, real scores)", flush=True)
    with procs.medner_server(ROOT / "serve/configs/default.yaml", [f"model={base}", f"adapter={SHIPPED}"], log=out / "serve.log") as url:
        client = ExtractClient(url, "ner")
        client.check_server()
        for corpus, text in SENTENCES:
            task = task_for(get_corpus(corpus), prompt_version=client.task_version(None, str(SHIPPED)))
            res = client.extract([text], task)[0]
            print(f"  [{corpus}] {highlighted(text, res['entities'])}")
        msgs = normalise([{"role": "user", "content": QUESTION}])
        plan = plan_chat(msgs, asked, None, 4000, known)
        body = {
            "model": "ner",
            "messages": msgs,
            "temperature": 0,
            "max_tokens": plan["max_tokens"],
            "structured_outputs": {"grammar": plan["grammar"]},
        }
        reply = asyncio.run(_post(httpx, f"{url}/chat/completions", body))
        grounded = ground(plan, reply["choices"][0]["message"]["content"], reply["choices"][0]["finish_reason"], asked)
        print(f"  chat> {QUESTION}\n  model> {answer_content(reply['choices'][0]['message']['content'], grounded)}")
        print(f"  grounded: {json.dumps(grounded['entities'], ensure_ascii=False)}")
        scores = []
        for corpus, _ in SENTENCES:
            run = out / f"eval-{corpus}"
            medner(
                "eval",
                "run",
                "--config",
                str(ROOT / "eval/configs/default.yaml"),
                f"url={url}",
                f"corpus={corpus}",
                f"limit={limit}",
                f"out={run}",
                "resume=false",
            )
            rep = json.loads((run / "report.json").read_text())
            scores.append(f"{corpus} {rep['seqeval']['micro']['f1']:.3f}")
    print(f"medner demo: strict F1 of the shipped adapter on the first {limit} test records: {', '.join(scores)}")
    return 0


async def _post(httpx, url: str, body: dict) -> dict:
    async with httpx.AsyncClient(timeout=600) as http:
        r = await http.post(url, json=body)
        r.raise_for_status()
        return r.json()


def tiny_demo(a: argparse.Namespace) -> None:
    out = Path(a.out)
    a.limit = a.limit or 20
    for old in (out / "sft", out / "eval"):  # a demo starts over (the tiny model is kept)
        shutil.rmtree(old, ignore_errors=True)
    tiny = out / "tiny-qwen2"
    if not (tiny / "config.json").is_file():
        medner("sft", "make-tiny", str(tiny))
    medner(
        "sft",
        "train",
        "--config",
        str(ROOT / "sft/configs/tiny.yaml"),
        f"model={tiny}",
        f"output_dir={out / 'sft'}",
        f"max_steps={a.steps}",
    )
    serve_log = out / "serve.log"
    print(f"+ medner serve (log in {serve_log})", flush=True)
    serve_args = [f"model={tiny}", f"adapter={out / 'sft' / 'adapter'}"]
    with procs.medner_server(ROOT / "serve/configs/tiny.yaml", serve_args, log=serve_log, timeout_s=600) as url:
        medner(
            "extract",
            "--url",
            url,
            "--model",
            "ner",
            "--corpus",
            "ncbi-disease",
            "Aspirin-induced asthma and hypertension were seen in a patient with asthma.",
        )
        medner("eval", "run", "--config", str(ROOT / "eval/configs/default.yaml"), f"url={url}", f"limit={a.limit}", f"out={out / 'eval'}")
    print(f"\ndemo done: adapter {out / 'sft' / 'adapter'}, report {out / 'eval' / 'report.md'}")


if __name__ == "__main__":
    sys.exit(main())
