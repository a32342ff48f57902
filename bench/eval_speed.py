"""Eval throughput, side by side on the same records, model and machine: vLLM (offline engine and
server) against the harness's plain-transformers `generate` baseline at its best batch size, the cost
of schema-constrained decoding, and the effect of prefix caching. Recorded as `eval-speed`.

Like for like: every path runs the same model (with an adapter on a CPU-only machine: the same merged
model, merge=auto), and the result records how often transformers and vLLM wrote the very same raw
reply (`replies_agree`) and both F1s, so a speed ratio is never a ratio of different work.

    python -m bench.eval_speed --model PATH [--adapter ADAPTER] [--n 64]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from bench.common import ROOT, medner, report, server, write_result


def rps(run: Path) -> dict:
    r = report(run)
    t = r["throughput"]
    f = r["failures"]
    return {
        "records_per_s": t["records_per_s"],
        "output_tokens_per_s": t["output_tokens_per_s"],
        "latency_p50_s": t["latency_p50_s"],
        "latency_p95_s": t["latency_p95_s"],
        "f1": r["seqeval"]["micro"]["f1"],
        "not_parsed": f["invalid_json"]["count"] + f["schema_violation"]["count"] + f["truncated"]["count"],
        "output_tokens": t["output_tokens"],
        # replies cut at max_new_tokens: free decoding's runaway repetitions, which keep a batch going
        "cut_at_max_tokens": sum(json.loads(l)["finish_reason"] == "length" for l in (run / "predictions.jsonl").open()),
    }


def raw_replies(run: Path) -> dict:
    return {json.loads(l)["id"]: json.loads(l)["raw"] for l in (run / "predictions.jsonl").open()}


def agreement(a: Path, b: Path) -> float:
    ra, rb = raw_replies(a), raw_replies(b)
    both = [k for k in ra if k in rb]
    return sum(ra[k] == rb[k] for k in both) / len(both) if both else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--model-name", default="Qwen2.5-Coder-0.5B-Instruct (official Q4_K_M GGUF, dequantized to bf16)")
    ap.add_argument("--adapter", help="LoRA adapter (default: the base model alone)")
    ap.add_argument("--corpus", default="ncbi-disease")
    ap.add_argument("--n", type=int, default=64, help="test records")
    ap.add_argument("--hf-batch-sizes", default="8,16,32")
    ap.add_argument("--run-dir", default="runs/bench/speed")
    ap.add_argument("--name", default="eval-speed", help="result name: bench/results/NAME.json")
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="offline-engine runs of the default and of free decoding, alternated; the ratio is of their medians "
        "(one 64-record run varies by about 5%% here)",
    )
    a = ap.parse_args()
    d = Path(a.run_dir)
    d.mkdir(parents=True, exist_ok=True)
    log = d / "speed.log"
    cfg = str(ROOT / "eval/configs/default.yaml")
    base = ["eval", "run", "--config", cfg, f"corpus={a.corpus}", f"limit={a.n}", "resume=false", "bootstrap=0"]
    model = [f"model={a.model}", f"adapter={a.adapter or 'null'}"]
    res: dict[str, dict] = {}
    for bs in [int(x) for x in a.hf_batch_sizes.split(",")]:
        medner(*base, "backend=hf", *model, f"batch_size={bs}", f"out={d / f'hf-bs{bs}'}", log=log)
        res[f"hf_bs{bs}"] = rps(d / f"hf-bs{bs}")
    repeats: dict[str, list[dict]] = {"vllm_offline": [], "vllm_offline_free": []}
    for k in range(a.repeats):
        suffix = f"-{k}" if k else ""
        medner(*base, "backend=vllm", *model, f"batch_size={a.n}", f"out={d / f'vllm{suffix}'}", log=log)
        repeats["vllm_offline"].append(rps(d / f"vllm{suffix}"))
        medner(*base, "backend=vllm", *model, f"batch_size={a.n}", "constrained=false", f"out={d / f'vllm-free{suffix}'}", log=log)
        repeats["vllm_offline_free"].append(rps(d / f"vllm-free{suffix}"))
    for name, runs in repeats.items():  # the run with the median records/s stands for the path
        res[name] = sorted(runs, key=lambda r: r["records_per_s"])[len(runs) // 2]
        res[name]["records_per_s_runs"] = [round(r["records_per_s"], 3) for r in runs]
    # grammar fallback off: every step masked; the same replies as the default (checked below)
    medner(*base, "backend=vllm", *model, f"batch_size={a.n}", "grammar_fallback=false", f"out={d / 'vllm-masked'}", log=log)
    res["vllm_offline_masked"] = rps(d / "vllm-masked")
    medner(*base, "backend=vllm", *model, f"batch_size={a.n}", "enable_prefix_caching=false", f"out={d / 'vllm-noprefix'}", log=log)
    res["vllm_offline_no_prefix_cache"] = rps(d / "vllm-noprefix")
    with server(a.model, a.adapter, a.corpus, log) as url:
        name = "ner" if a.adapter else "base"
        medner(*base, f"url={url}", f"served_model={name}", "concurrency=32", f"out={d / 'server'}", log=log)
        res["vllm_server"] = rps(d / "server")
    best_bs = max((k for k in res if k.startswith("hf_bs")), key=lambda k: res[k]["records_per_s"])
    hf = res[best_bs]["records_per_s"]
    vllm_best = max(res["vllm_offline"]["records_per_s"], res["vllm_server"]["records_per_s"])
    metrics = {
        # the same raw reply from transformers (best batch size) and vLLM's offline engine, per record
        "replies_agree": agreement(d / f"hf-bs{best_bs[5:]}", d / "vllm"),
        "replies_agree_vllm_server": agreement(d / "vllm", d / "server"),
        "f1_hf": res[best_bs]["f1"],
        "f1_vllm": res["vllm_offline"]["f1"],
        "f1_server": res["vllm_server"]["f1"],
        # the faster vLLM path (offline engine or server) over the best transformers batch size
        "vllm_vs_hf": vllm_best / hf,
        "vllm_offline_vs_hf": res["vllm_offline"]["records_per_s"] / hf,
        "server_vs_hf": res["vllm_server"]["records_per_s"] / hf,
        "constrained_vs_free": res["vllm_offline"]["records_per_s"] / res["vllm_offline_free"]["records_per_s"],
        # what the ratio compares: the same reply from both on this share of records; the rest differ in length
        "replies_agree_default_vs_free": agreement(d / "vllm", d / "vllm-free"),
        "output_tokens_default_vs_free": res["vllm_offline"]["output_tokens"] / max(1, res["vllm_offline_free"]["output_tokens"]),
        "cut_at_max_tokens_default": res["vllm_offline"]["cut_at_max_tokens"],
        "cut_at_max_tokens_free": res["vllm_offline_free"]["cut_at_max_tokens"],
        # the default (grammar fallback) against masking every step: the same replies, at what speed
        "replies_agree_fallback_vs_masked": agreement(d / "vllm", d / "vllm-masked"),
        "masked_vs_free": res["vllm_offline_masked"]["records_per_s"] / res["vllm_offline_free"]["records_per_s"],
        "prefix_cache_speedup": res["vllm_offline"]["records_per_s"] / res["vllm_offline_no_prefix_cache"]["records_per_s"],
        "vllm_offline_records_per_s": res["vllm_offline"]["records_per_s"],
        "vllm_server_records_per_s": res["vllm_server"]["records_per_s"],
        "hf_best_records_per_s": hf,
        "hf_best_batch_size": int(best_bs[5:]),
        "records": a.n,
        "merged": bool(a.adapter),
        "gpu_vllm_vs_hf": "not run: no GPU with vLLM on this machine",
    }
    write_result(
        a.name,
        metrics,
        command=f"python -m bench.eval_speed --model MODEL{' --adapter ADAPTER' if a.adapter else ''} --n {a.n} --repeats {a.repeats}"
        f" --hf-batch-sizes {a.hf_batch_sizes}" + (f" --name {a.name}" if a.name != "eval-speed" else ""),
        notes=f"model: {a.model_name}{f' + the adapter {a.adapter}' if a.adapter else ''}; first {a.n} {a.corpus} test records, greedy, "
        "the default decoding (grounded, ordered, grammar fallback) unless named 'free' or 'masked' (grammar fallback off); "
        f"the offline engine's default and free runs {a.repeats} times each, alternated, the median run recorded (records_per_s_runs: all); all paths run medner's own eval harness (same prompts, windows, bounds, parsing) "
        "on the same weights (the adapter merged into the base once, merge=auto on this CPU-only machine); "
        "records/s counts prediction time only (model load and engine start excluded).",
        extra={"runs": res},
    )
    print(json.dumps(metrics, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
