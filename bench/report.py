"""The markdown tables of bench/RESULTS.md from one `edgecap-bench --json` file.

    python bench/report.py bench/results/vit-gpt2-base-cpu.json > bench/results/vit-gpt2-base-cpu.md

Prints: the machine and its kernel rates per precision (the floors' inputs), every row, the issue 20
targets (issue 21's for a Florence-2 file) with measured/met, and edgecap against each peer at the same precision. Numbers only come
from the file; nothing is re-measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# (label, precision, batch, beams, kind, target); kinds: latency ratio to PyTorch (<=), images/s ratio
# to PyTorch (>=), decoder step / encoder over its floor (<=), peak RSS ratio to PyTorch (<=), latency
# ratio to Optimum at the same precision (<=). Issue 20's table.
TARGETS = [
    ("int8 greedy, batch 1", "int8", 1, 1, "latency", 0.20),
    ("int8 beam 4, batch 1", "int8", 1, 4, "latency", 0.15),
    ("int8 greedy, batch 8", "int8", 8, 1, "throughput", 4.5),
    ("int8 decoder step, batch 1 greedy", "int8", 1, 1, "floor", 1.6),
    ("int8 encoder, batch 1", "int8", 1, 1, "encoder_floor", 2.0),
    ("int4 greedy, batch 1", "int4", 1, 1, "latency", 0.18),
    ("int8 peak RSS", "int8", 1, 1, "rss", 0.45),
    ("int8 greedy vs Optimum int8", "int8", 1, 1, "optimum", 0.35),
]
# Florence-2 (issue 21; a bench JSON whose architecture has encoder_prompt): the <CAPTION> task, beam 3
FLORENCE2_TARGETS = [("int8 <CAPTION>, beam 3, batch 1", "int8", 1, 3, "latency", 0.25)]


def _f(value, fmt: str = "{:.1f}") -> str:
    return fmt.format(value) if value is not None else ""


def _ratio(a, b, fmt: str = "{:.2f}×") -> str:
    return fmt.format(a / b) if a and b else ""


def machine(data: dict) -> list[str]:
    m = data["machine"]
    out = [f"- {m.get('cpu', m.get('processor'))}, {m.get('cpu_count')} CPUs, {m.get('threads') or 'all'} threads; "
           f"Python {m.get('python')}, onnxruntime {m.get('onnxruntime')}, edgecap {m.get('edgecap')}", "",
           "| kernel (probe) | G weights/s, 1 row | GB/s of weights, 1 row | "
           + " | ".join(f"G weights/s, {n} rows" for n in _row_counts(m)[1:]) + " | GFLOP/s, 256 rows |",
           "|---|---|---|" + "---|" * (len(_row_counts(m)) - 1) + "---|"]
    for kernel, r in m.get("kernels", {}).items():
        by_rows = r["gweights_per_s_by_rows"]
        out.append(f"| {kernel} | {r['gweights_per_s']:.1f} | {r['read_gb_per_s']:.1f} | "
                   + " | ".join(_f(by_rows.get(n)) for n in _row_counts(m)[1:])
                   + f" | {r['matmul_gflop_per_s']:.0f} |")
    return out


def _row_counts(m: dict) -> list[str]:
    counts = {n for r in m.get("kernels", {}).values() for n in r["gweights_per_s_by_rows"]}
    return sorted(counts, key=int)


def rows_table(rows: list[dict]) -> list[str]:
    torch = {(r["batch_size"], r["num_beams"]): r for r in rows if r["engine"] == "pytorch" and not r["error"]}
    out = ["| engine | prec | batch | beams | p50 ms | p90 ms | img/s | tok/s | enc ms | enc / floor | step ms "
           "| step / floor | RSS MB | vs PyTorch |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lead = f"| {r['engine']} | {r['precision']} | {r['batch_size']} | {r['num_beams']} |"
        if r["error"]:
            out.append(f"{lead} failed: {r['error'].replace('|', '/')} |" + " |" * 9)
            continue
        base = torch.get((r["batch_size"], r["num_beams"]))
        out.append(
            f"{lead} {r['latency_ms_p50']:.1f} | {r['latency_ms_p90']:.1f} | {r['images_per_s']:.2f} | "
            f"{r['tokens_per_s']:.1f} | {_f(r['encoder_ms'])} | {_ratio(r['encoder_ms'], r['floor_encoder_ms'], '{:.1f}×')} | "
            f"{_f(r['decoder_step_ms'], '{:.2f}')} | {_ratio(r['decoder_step_ms'], r['floor_decoder_step_ms'], '{:.1f}×')} | "
            f"{_f(r['peak_rss_mb'], '{:.0f}')} | {_ratio(r['latency_ms_p50'], base and base['latency_ms_p50'])} |")
    return out


def targets_table(rows: list[dict], targets: list[tuple] = TARGETS) -> list[str]:
    def find(engine, precision, batch, beams):
        return next((r for r in rows if (r["engine"], r["precision"], r["batch_size"], r["num_beams"])
                     == (engine, precision, batch, beams) and not r["error"]), None)

    out = ["| case | target | measured | |", "|---|---|---|---|"]
    for label, precision, batch, beams, kind, target in targets:
        ours, torch = find("edgecap", precision, batch, beams), find("pytorch", "fp32", batch, beams)
        value, text = None, "not measured"
        if ours and kind == "floor" and ours["floor_decoder_step_ms"]:
            value = ours["decoder_step_ms"] / ours["floor_decoder_step_ms"]
            text = f"{ours['decoder_step_ms']:.2f} / {ours['floor_decoder_step_ms']:.2f} ms = **{value:.2f}×**"
        elif ours and torch and kind == "latency":
            value = ours["latency_ms_p50"] / torch["latency_ms_p50"]
            text = f"{ours['latency_ms_p50']:.1f} / {torch['latency_ms_p50']:.1f} ms = **{value:.2f}×**"
        elif ours and torch and kind == "throughput":
            value = ours["images_per_s"] / torch["images_per_s"]
            text = f"{ours['images_per_s']:.2f} / {torch['images_per_s']:.2f} img/s = **{value:.2f}×**"
        elif ours and kind == "encoder_floor" and ours["floor_encoder_ms"]:
            value = ours["encoder_ms"] / ours["floor_encoder_ms"]
            text = f"{ours['encoder_ms']:.1f} / {ours['floor_encoder_ms']:.1f} ms = **{value:.2f}×**"
        elif ours and kind == "optimum" and (peer := find("optimum", precision, batch, beams)):
            value = ours["latency_ms_p50"] / peer["latency_ms_p50"]
            text = f"{ours['latency_ms_p50']:.1f} / {peer['latency_ms_p50']:.1f} ms = **{value:.2f}×**"
        elif ours and torch and kind == "rss" and ours["peak_rss_mb"] and torch["peak_rss_mb"]:
            value = ours["peak_rss_mb"] / torch["peak_rss_mb"]
            text = f"{ours['peak_rss_mb']:.0f} / {torch['peak_rss_mb']:.0f} MB = **{value:.2f}×**"
        wanted = {"throughput": f"≥ {target} × PyTorch", "floor": f"≤ {target} × floor",
                  "encoder_floor": f"≤ {target} × floor", "optimum": f"≤ {target} × Optimum"}.get(kind, f"≤ {target} × PyTorch")
        met = "" if value is None else ("met" if (value >= target if kind == "throughput" else value <= target) else "missed")
        out.append(f"| {label} | {wanted} | {text} | {met} |")
    return out


def forms_table(rows: list[dict]) -> list[str]:
    """The fused graphs (engine edgecap) against the plain ones (edgecap-plain), case by case."""
    plain = {(r["precision"], r["batch_size"], r["num_beams"]): r for r in rows
             if r["engine"] == "edgecap-plain" and not r["error"]}
    out = ["| prec | batch | beams | p50 plain → fused ms | enc plain → fused ms | step plain → fused ms | RSS plain → fused MB | fused / plain |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = plain.get((r["precision"], r["batch_size"], r["num_beams"]))
        if r["engine"] != "edgecap" or r["error"] or p is None:
            continue
        out.append(f"| {r['precision']} | {r['batch_size']} | {r['num_beams']} | {p['latency_ms_p50']:.1f} → "
                   f"{r['latency_ms_p50']:.1f} | {_f(p['encoder_ms'])} → {_f(r['encoder_ms'])} | "
                   f"{_f(p['decoder_step_ms'], '{:.2f}')} → {_f(r['decoder_step_ms'], '{:.2f}')} | "
                   f"{_f(p['peak_rss_mb'], '{:.0f}')} → {_f(r['peak_rss_mb'], '{:.0f}')} | "
                   f"**{_ratio(r['latency_ms_p50'], p['latency_ms_p50'])}** |")
    return out if len(out) > 2 else []


def peers_table(rows: list[dict]) -> list[str]:
    """edgecap's latency over each peer's at the same precision and case (below 1: edgecap faster)."""
    # the CPU peers: edgecap's CPU rows are compared with them (pytorch-cuda runs on a GPU)
    peers = sorted({r["engine"] for r in rows
                    if r["engine"] not in ("edgecap", "edgecap-plain", "pytorch") and r["backend"] == "cpu"})
    out = ["| prec | batch | beams | " + " | ".join(f"edgecap / {p}" for p in peers) + " |",
           "|---|---|---|" + "---|" * len(peers)]
    ours = [r for r in rows if r["engine"] == "edgecap" and not r["error"] and r["backend"] == "cpu"]
    for r in ours:
        cells = []
        for p in peers:
            peer = next((x for x in rows if (x["engine"], x["precision"], x["batch_size"], x["num_beams"])
                         == (p, r["precision"], r["batch_size"], r["num_beams"])), None)
            cells.append("failed" if peer and peer["error"] else _ratio(r["latency_ms_p50"], peer and peer["latency_ms_p50"]))
        if any(cells):
            out.append(f"| {r['precision']} | {r['batch_size']} | {r['num_beams']} | " + " | ".join(cells) + " |")
    return out


def report(data: dict) -> str:
    rows = data["rows"]
    florence2 = data.get("model", {}).get("architecture", {}).get("encoder_prompt", False)
    issue, targets = ("21", FLORENCE2_TARGETS) if florence2 else ("20", TARGETS)
    parts = ["### Machine and kernel rates (the floors' inputs)", "", *machine(data), "",
             "### Every engine", "", *rows_table(rows), "",
             f"### Targets (issue {issue})", "", *targets_table(rows, targets), "",
             *(["### Fused graphs against the plain ones (same bundle, same run)", "", *forms_table(rows), ""]
               if forms_table(rows) else []),
             "### edgecap against the peers, same precision (latency ratio; below 1 = edgecap faster)", "",
             *peers_table(rows), ""]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("json", type=Path, help="an edgecap-bench --json file")
    args = p.parse_args(argv)
    try:
        data = json.loads(args.json.read_text())
    except (OSError, ValueError) as exc:
        print(f"report: {args.json}: {exc}", file=sys.stderr)
        return 2
    print(report(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
