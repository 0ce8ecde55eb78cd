"""Tiny bundles of several families, exported on the host for checks on other machines.

Needs the exporter (torch, transformers). Checkpoints come from tests/tiny.py (random, decisive:
DESIGN.md section 4); the quality gate is off (min_agreement 0), as in tests/test_invariance.py:
these are parity checks, not quality measurements.

    python tests/platform/bundles.py OUT [--families vit-gpt2,deit-trocr,...] [--precisions fp32,int8]
                                         [--all-precisions vit-gpt2] [--demo-export fp32,fp16]

Writes OUT/<family>/ (a bundle) for each family, copies the shipped demo bundle to OUT/demo/ and
exports the demo checkpoint to OUT/demo-export/ (every precision unless --demo-export says).
Used by tests/platform/arm64.sh (bundles for the emulated ARM64 root) and bench/gpu_check.py.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

FAMILIES = {  # every encoder x decoder pair tests/tiny.py builds (PAIRS and FAMILY_PAIRS)
    "vit-gpt2": ("vit", "gpt2"),
    "deit-gpt2": ("deit", "gpt2"),
    "vit-trocr": ("vit", "trocr"),
    "deit-trocr": ("deit", "trocr"),
    "deit-bert": ("deit", "bert"),
    "vit-roberta": ("vit", "roberta"),
    "vit-electra": ("vit", "electra"),
    "swin-bart": ("swin", "bart"),
    "swin-gpt2": ("swin", "gpt2"),
    "donut-mbart": ("donut-swin", "mbart"),
}
DEFAULT = ("vit-gpt2", "deit-trocr", "swin-bart", "donut-mbart")
ALL_PRECISIONS = ("fp32", "int8", "fp16", "int4", "int8-qdq")


def build(out: Path, families: list[str], all_precisions: set[str], demo_export: tuple[str, ...] | None = ALL_PRECISIONS,
          base: tuple[str, ...] = ("fp32", "int8")) -> list[Path]:
    """Export each family's tiny model in `base` precisions (those in `all_precisions`: every one),
    copy the shipped demo bundle to OUT/demo and export the demo checkpoint in `demo_export`
    precisions to OUT/demo-export (a trained model: its decisions are confident, unlike random
    tiny ones). Returns the bundle directories."""
    import tiny
    from edgecap_export.exporter import ExportOptions, export

    out.mkdir(parents=True, exist_ok=True)
    made = []

    def export_to(name: str, ckpt: Path, precisions: tuple[str, ...]) -> None:
        t0 = time.perf_counter()
        target = out / name
        if target.exists():
            shutil.rmtree(target)
        made.append(export(str(ckpt), target, ExportOptions(precisions=precisions, min_agreement=0.0)))
        print(f"bundles: {name} ({', '.join(precisions)}) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    with tempfile.TemporaryDirectory(prefix="edgecap-ckpt-") as tmp:
        for name in families:
            encoder, decoder = FAMILIES[name]
            export_to(name, tiny.build(Path(tmp) / name, encoder, decoder), ALL_PRECISIONS if name in all_precisions else base)
    demo = out / "demo"
    if demo.exists():
        shutil.rmtree(demo)
    shutil.copytree(REPO / "edgecap" / "data" / "demo-bundle", demo)
    if demo_export:
        export_to("demo-export", REPO / "models" / "demo" / "checkpoint", demo_export)
    return [demo, *made]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--families", default=",".join(DEFAULT), help=f"comma-separated, of: {', '.join(FAMILIES)}")
    p.add_argument("--all-precisions", default="vit-gpt2",
                   help="families exported in every precision (the others: --precisions)")
    p.add_argument("--precisions", default="fp32,int8", help="the families' precisions (default: fp32,int8)")
    p.add_argument("--demo-export", default=",".join(ALL_PRECISIONS),
                   help="precisions of the demo checkpoint's export to OUT/demo-export ('' for none; default: all)")
    args = p.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        p.error(f"unknown family {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    logging.basicConfig(level=logging.WARNING)
    demo = tuple(p for p in args.demo_export.split(",") if p) or None
    build(args.out, families, set(args.all_precisions.split(",")), demo, tuple(args.precisions.split(",")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
