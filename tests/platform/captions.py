"""Captions of the same bundles and images on two machines, and how they compare.

`dump` imports only the runtime (edgecap, numpy): it runs on the x86 host and inside the emulated
ARM64 root alike. `compare` and `report` run on the host.

    python captions.py dump --out arm.json --images DIR [--beams 1,3] [--precisions P,..]
                            [--forms fused,plain] BUNDLE_DIR...
    python captions.py compare host.json arm.json          # prints the parity table (markdown)
    python captions.py report RUN_DIR [--bundles DIR --images DIR]   # tests/platform/arm64.sh's result

A bundle's name in the tables is its directory's name; every precision it has is captioned unless
--precisions narrows them, in both graph forms where it has fused graphs ("int8 fused", "int8").
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

PRECISION_ORDER = ("fp32", "int8", "fp16", "int4", "int8-qdq")


def dump(bundles: list[Path], images: list[Path], beams: list[int], precisions: list[str] | None,
         forms: tuple[str, ...] = ("fused", "plain")) -> dict:
    """Captions of every bundle x precision x graph form x beam width. A precision with fused graphs
    (ONNX Runtime's fused operators, the CPU default) is captioned in the `forms` asked for, labelled
    "<precision> fused" and "<precision>"; a precision with plain graphs only, in those."""
    import numpy
    import onnxruntime

    from edgecap import Captioner, __version__
    from edgecap.bundle import load_bundle

    results: dict[str, list[dict]] = {}
    seconds: dict[str, float] = {}
    for bundle in bundles:
        loaded = load_bundle(bundle, verify_checksums=False)
        for precision in sorted((p for p in loaded.precisions if precisions is None or p in precisions), key=_order):
            has_fused = loaded.graphs(precision).fused is not None
            variants = [(f"{precision} fused", True), (precision, False)] if has_fused else [(precision, False)]
            for label, fused in variants:
                if has_fused and ("fused" if fused else "plain") not in forms:
                    continue
                t0 = time.perf_counter()
                cap = Captioner(bundle, precision=precision, backend="cpu", fused=fused)
                for num_beams in beams:
                    caps = cap.caption([str(p) for p in images], num_beams=num_beams)
                    results[f"{bundle.name}/{label}/beams{num_beams}"] = [
                        {"image": p.name, "tokens": list(c.token_ids), "score": float(c.score), "text": c.text}
                        for p, c in zip(images, caps)
                    ]
                seconds[f"{bundle.name}/{label}"] = round(time.perf_counter() - t0, 2)
                print(f"captions: {bundle.name} {label}: {seconds[f'{bundle.name}/{label}']} s", file=sys.stderr)
    return {
        "machine": {"arch": platform.machine(), "python": platform.python_version(), "qemu_cpu": os.environ.get("QEMU_CPU"),
                    "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__, "edgecap": __version__},
        "seconds": seconds,
        "results": results,
    }


def _form(label: str) -> tuple[str, bool]:
    """("int8", True) for "int8 fused", ("int8", False) for "int8"."""
    base, _, form = label.partition(" ")
    return base, form == "fused"


def _order(label: str) -> tuple[int, str]:
    base = _form(label)[0]
    return (PRECISION_ORDER.index(base) if base in PRECISION_ORDER else len(PRECISION_ORDER)), label


# The gate (docs/platforms.md): fp32 captions equal to the host's, greedy and beam; int8 (the CPU
# precision) greedy captions differing only where the host's choice was not decisive. The others are
# reported: int8-qdq is TensorRT's form, fp16 and int4 run other kernels on ARM.
GATED = ("fp32", "int8")
# a step is decisive when its top token is at least e times as likely as the runner-up (the export's
# quality gate uses the same line, export/verify.py)
DECISIVE_RATIO = 2.718281828459045


def _by_image(entries: list[dict]) -> dict[str, dict]:
    return {e["image"]: e for e in entries}


def compare(host: dict, other: dict) -> list[dict]:
    """One row per bundle x precision x beams in both: how many images (matched by name) have equal
    tokens, the largest score difference, and for each machine how many equal its own fp32 tokens."""
    rows = []
    for key, want_list in host["results"].items():
        got_list = other["results"].get(key)
        if got_list is None:
            continue
        bundle, precision, beams = key.split("/")
        want, got = _by_image(want_list), _by_image(got_list)
        names = sorted(want.keys() & got.keys())
        fp32_key = f"{bundle}/fp32 fused/{beams}" if _form(precision)[1] else f"{bundle}/fp32/{beams}"
        if fp32_key not in host["results"]:
            fp32_key = f"{bundle}/fp32/{beams}"
        differ = [{"image": n, "host": want[n]["tokens"], "other": got[n]["tokens"]}
                  for n in names if want[n]["tokens"] != got[n]["tokens"]]
        rows.append({
            "bundle": bundle, "precision": precision, "beams": int(beams.removeprefix("beams")), "images": len(names),
            "differ": differ,
            "equal": sum(want[n]["tokens"] == got[n]["tokens"] for n in names),
            "max_score_diff": max((abs(want[n]["score"] - got[n]["score"]) for n in names), default=0.0),
            "host_equal_fp32": _equal_to(want, host["results"].get(fp32_key), names),
            "other_equal_fp32": _equal_to(got, other["results"].get(fp32_key), names),
        })
    return rows


def _equal_to(these: dict[str, dict], fp32: list[dict] | None, names: list[str]) -> int | None:
    if fp32 is None:
        return None
    ref = _by_image(fp32)
    return sum(n in ref and these[n]["tokens"] == ref[n]["tokens"] for n in names)


def failures(rows: list[dict]) -> list[dict]:
    """Rows the gate rejects: fp32 with any difference; int8 greedy with a difference at a decisive
    step of the host (`decisive`, from `judge_differences`; unjudged differences count as decisive)."""
    out = []
    for r in rows:
        base = _form(r["precision"])[0]
        if base == "fp32" and r["equal"] != r["images"]:
            out.append(r)
        elif base in GATED and r["beams"] == 1 and r.get("decisive", len(r["differ"])):
            out.append(r)
    return out


def judge_differences(rows: list[dict], bundles: Path, images: Path) -> None:
    """For each greedy caption that differs, the host's top-1 / runner-up probability ratio at the first
    differing token, teacher-forced on the host's graphs; sets row["decisive"] (how many were decisive)
    and each difference's "step" and "ratio". Needs the runtime (edgecap) on the host."""
    import numpy as np

    from edgecap import Captioner

    for r in rows:
        if r["beams"] != 1 or not r["differ"]:
            continue
        precision, fused = _form(r["precision"])
        cap = Captioner(bundles / r["bundle"], precision=precision, backend="cpu", fused=fused)
        gen = cap.bundle.manifest.generation
        prefix = ([] if gen.prompt_includes_start and gen.prompt_ids else [gen.decoder_start_token_id]) + list(gen.prompt_ids)
        r["decisive"] = 0
        for d in r["differ"]:
            at = next(i for i, (a, b) in enumerate(zip(d["host"] + [-1], d["other"] + [-1])) if a != b)
            feed = prefix + d["host"][:at]
            with cap.step_decoder() as dec:
                dec.set_encoded(cap.encode(cap.preprocess([str(images / d["image"])])))
                dec.begin(np.arange(1), len(feed) + 1)
                for t, tok in enumerate(feed):
                    logits = np.asarray(dec.step(np.array([tok]), t)[0], dtype=np.float64)
            top2 = np.sort(logits)[-2:]
            d["step"], d["ratio"] = at, float(np.exp(top2[1] - top2[0]))
            r["decisive"] += d["ratio"] >= DECISIVE_RATIO


def _mark(r: dict | None) -> str:
    if r is None:
        return "-"
    if r["equal"] == r["images"]:
        return f"**{r['equal']}/{r['images']}**"
    text = f"{r['equal']}/{r['images']}"
    if "decisive" in r:
        ratios = ", ".join(f"{d['ratio']:.2f}" if d["ratio"] < 10 else f"**{d['ratio']:.0f}**" for d in r["differ"])
        text += f" (x86 top-1 / runner-up where they part: {ratios})"
    return text + (" **FAIL**" if failures([r]) else "")


def parity_table(rows: list[dict], other: str = "ARM") -> str:
    """Markdown: bundle | precision | tokens = x86 per beam width | largest |score difference| |
    greedy captions equal to the same machine's fp32 (x86 / other)."""
    beams = sorted({r["beams"] for r in rows})
    cells: dict[tuple[str, str], dict[int, dict]] = {}
    for r in rows:
        cells.setdefault((r["bundle"], r["precision"]), {})[r["beams"]] = r
    head = ("| bundle | precision | " + " | ".join("greedy = x86" if b == 1 else f"beam {b} = x86" for b in beams)
            + f" | max \\|Δ score\\| | greedy = own fp32 (x86 / {other}) |")
    lines = [head, "|" + "---|" * (4 + len(beams))]
    for (bundle, precision), by_beams in cells.items():
        diff = max(r["max_score_diff"] for r in by_beams.values())
        g = by_beams.get(min(beams))
        own = "-" if _form(precision)[0] == "fp32" or g is None or g["host_equal_fp32"] is None else \
            f"{g['host_equal_fp32']}/{g['images']} / " + \
            ("-" if g["other_equal_fp32"] is None else f"{g['other_equal_fp32']}/{g['images']}")
        lines.append(f"| {bundle} | {precision} | " + " | ".join(_mark(by_beams.get(b)) for b in beams)
                     + f" | {diff:.1e} | {own} |")
    return "\n".join(lines)


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


NOTABLE = ("asimddp", "asimdhp", "i8mm", "svei8mm", "sve", "sve2", "sme", "bf16")
# qemu's "max" CPU (SVE2, SME, i8mm: what no Jetson or Raspberry Pi has, emulated by qemu 7.2's young
# SME support) is reported, not gated; the models of real cores are gated
UNGATED_CPUS = ("max",)


def kernel_table(host: dict, kernels: list[dict], bundles: Path | None = None, images: Path | None = None) -> tuple[list[str], bool]:
    """Per emulated CPU and precision: the int8/fp16 instructions translated, tokens = x86."""
    out = ["| QEMU_CPU (MIDR) | features of note | precision | instructions translated | tokens = x86 (greedy, beam 3) |",
           "|---|---|---|---|---|"]
    ok = True
    for k in kernels:
        first = True
        for precision, run in k["runs"].items():
            seen = ", ".join(f"{name} {n}" for name, n in run["instructions"].items() if n) or "none of them"
            rows = compare(host, run["captions"])
            if bundles is not None and images is not None:
                judge_differences(rows, bundles, images)
            gated = k["qemu_cpu"] not in UNGATED_CPUS
            ok = ok and (not gated or not failures(rows))
            eq = "; ".join(f"{r['bundle']} {r['equal']}/{r['images']}" + ("" if r["beams"] == 1 else f" (b{r['beams']})")
                           for r in rows)
            if failures(rows):
                eq += " **DIFFER**"
            cpu = (f"{k['qemu_cpu']} ({k['midr']})" + ("" if gated else ", not gated")) if first else ""
            feats = (" ".join(f for f in k["features"] if f in NOTABLE) or "neither dot product nor fp16") if first else ""
            out.append(f"| {cpu} | {feats} | {precision} | {seen} | {eq} |")
            first = False
    return out, ok


def report(run: Path, bundles: Path | None = None, images: Path | None = None) -> tuple[str, dict, bool]:
    """(markdown, JSON summary, every gated check passed) for a run directory of tests/platform/arm64.sh."""
    host = _load(run / "host.json")
    arm = _load(run / "arm-main.json")
    meta = _load(run / "meta.json")
    rows = compare(host, arm)
    if bundles is not None and images is not None:
        judge_differences(rows, bundles, images)
    ok = bool(rows) and not failures(rows)
    out = [f"## ARM64 under emulation: {meta['date']}", "",
           f"- host: {meta['host_cpu']}, onnxruntime {host['machine']['onnxruntime']}, numpy {host['machine']['numpy']}, "
           f"Python {host['machine']['python']}",
           f"- emulated: qemu-user {meta['qemu']} `QEMU_CPU={arm['machine']['qemu_cpu']}`, Debian {meta['suite']} arm64 root, "
           f"onnxruntime {arm['machine']['onnxruntime']}, numpy {arm['machine']['numpy']}, Python {arm['machine']['python']} "
           "(PyPI's aarch64 wheels)",
           f"- images: {meta['images']}; bundles: {', '.join(meta['bundles'])}",
           "- gate: fp32 captions equal to x86 (greedy and beam 3); int8 greedy captions differ only where x86's "
           "choice was not decisive (top-1 below e × the runner-up at the first differing token, teacher-forced on "
           "x86). Beam search in int8 and the other precisions are reported", "",
           parity_table(rows), ""]
    kernels = [_load(p) for p in sorted(run.glob("kernels-*.json"))]
    if kernels:
        table, kernels_ok = kernel_table(host, kernels, bundles, images)
        ok = ok and kernels_ok
        out += ["### Kernels per emulated CPU", "",
                "Instructions of interest that qemu translated (distinct code, not executions) while one process "
                "captioned the sample images at one precision; tokens compared with x86 on the same images.", "",
                *table, ""]
    inv = run / "invariance.txt"
    if inv.exists():
        lines = [ln for ln in inv.read_text().splitlines() if ln.strip()]
        summary = lines[-1].strip("= ") if lines else "(no output)"
        ok = ok and " passed" in summary and "failed" not in summary and "error" not in summary
        out += [f"### Batch invariance under emulation: `tests/test_invariance.py` on {meta['invariance_bundle']}", "",
                f"`{summary}`", ""]
    cli = run / "cli.txt"
    if cli.exists():
        out += ["### `edgecap caption models/demo/samples` in the root", "", "```", cli.read_text().rstrip(), "```", ""]
    timings = run / "timings.tsv"
    if timings.exists():
        out += ["### Timings (wall clock, s)", "", "| step | s |", "|---|---|"]
        out += [f"| {a} | {b} |" for a, b in (ln.split("\t") for ln in timings.read_text().splitlines() if "\t" in ln)]
        out.append("")
    summary = {"meta": meta, "ok": ok, "parity": rows,
               "kernels": [{k: v for k, v in kern.items() if k != "runs"} |
                           {"instructions": {p: r["instructions"] for p, r in kern["runs"].items()}} for kern in kernels],
               "host_machine": host["machine"], "arm_machine": arm["machine"], "arm_seconds": arm["seconds"]}
    return "\n".join(out), summary, ok


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("bundles", nargs="+", type=Path)
    d.add_argument("--out", required=True, type=Path)
    d.add_argument("--images", required=True, type=Path)
    d.add_argument("--limit", type=int, default=None, help="first N images only")
    d.add_argument("--beams", default="1,3")
    d.add_argument("--precisions", default=None, help="comma-separated; default: every precision a bundle has")
    d.add_argument("--forms", default="fused,plain", help="graph forms of precisions that have both (default: fused,plain)")
    c = sub.add_parser("compare")
    c.add_argument("host", type=Path)
    c.add_argument("other", type=Path)
    r = sub.add_parser("report")
    r.add_argument("run", type=Path)
    r.add_argument("--bundles", type=Path, help="the bundles' directory: judge each difference on the host")
    r.add_argument("--images", type=Path, help="the images' directory (with --bundles)")
    args = p.parse_args(argv)
    if args.cmd == "dump":
        images = sorted(p for p in args.images.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))[: args.limit]
        if not images:
            p.error(f"no images in {args.images}")
        beams = [int(b) for b in args.beams.split(",")]
        precisions = args.precisions.split(",") if args.precisions else None
        forms = tuple(f for f in args.forms.split(",") if f)
        args.out.write_text(json.dumps(dump(args.bundles, images, beams, precisions, forms), indent=1))
        return 0
    if args.cmd == "compare":
        rows = compare(_load(args.host), _load(args.other))
        print(parity_table(rows, "other"))
        return 0 if rows and not failures(rows) else 1
    text, summary, ok = report(args.run, args.bundles, args.images)
    (args.run / "arm64-results.md").write_text(text + "\n")
    (args.run / "arm64-results.json").write_text(json.dumps(summary, indent=1))
    print(text)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
