"""Tiny bundles of several families, exported on the host for checks on other machines.

Needs the exporter (torch, transformers). Checkpoints come from tests/tiny.py (random, decisive:
DESIGN.md section 4); the quality gate is off (min_agreement 0), as in tests/test_invariance.py:
these are parity checks, not quality measurements.

    python tests/platform/bundles.py OUT [--families vit-gpt2,deit-trocr,...] [--all-precisions vit-gpt2]

Writes OUT/<family>/ (a bundle) for each family, copies the demo bundle to OUT/demo/ and, unless
--no-demo-all, exports the demo checkpoint in every precision to OUT/demo-all/.
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

FAMILIES = {
    "vit-gpt2": ("vit", "gpt2"),
    "deit-trocr": ("deit", "trocr"),
    "deit-bert": ("deit", "bert"),
    "vit-roberta": ("vit", "roberta"),
    "swin-bart": ("swin", "bart"),
    "donut-mbart": ("donut-swin", "mbart"),
}
DEFAULT = ("vit-gpt2", "deit-trocr", "swin-bart", "donut-mbart")
ALL_PRECISIONS = ("fp32", "int8", "fp16", "int4", "int8-qdq")


def build(out: Path, families: list[str], all_precisions: set[str], with_demo_all: bool = True) -> list[Path]:
    import tiny
    from edgecap_export.exporter import ExportOptions, export

    out.mkdir(parents=True, exist_ok=True)
    made = []
    with tempfile.TemporaryDirectory(prefix="edgecap-ckpt-") as tmp:
        for name in families:
            encoder, decoder = FAMILIES[name]
            precisions = ALL_PRECISIONS if name in all_precisions else ("fp32", "int8")
            t0 = time.perf_counter()
            ckpt = tiny.build(Path(tmp) / name, encoder, decoder)
            target = out / name
            if target.exists():
                shutil.rmtree(target)
            made.append(export(str(ckpt), target, ExportOptions(precisions=precisions, min_agreement=0.0)))
            print(f"bundles: {name} ({', '.join(precisions)}) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    # the demo model twice: the bundle the package ships (fp32, int8), and every precision exported
    # from its checkpoint (a trained model: its decisions are confident, unlike random tiny ones)
    demo = out / "demo"
    if demo.exists():
        shutil.rmtree(demo)
    shutil.copytree(REPO / "edgecap" / "data" / "demo-bundle", demo)
    if with_demo_all:
        t0 = time.perf_counter()
        target = out / "demo-all"
        if target.exists():
            shutil.rmtree(target)
        made.append(export(str(REPO / "models" / "demo" / "checkpoint"), target,
                           ExportOptions(precisions=ALL_PRECISIONS, min_agreement=0.0)))
        print(f"bundles: demo-all ({', '.join(ALL_PRECISIONS)}) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return [demo, *made]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", type=Path)
    p.add_argument("--families", default=",".join(DEFAULT), help=f"comma-separated, of: {', '.join(FAMILIES)}")
    p.add_argument("--all-precisions", default="vit-gpt2",
                   help="families exported in every precision (the others: fp32, int8)")
    p.add_argument("--no-demo-all", action="store_true", help="skip the demo checkpoint in every precision")
    args = p.parse_args(argv)
    families = [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        p.error(f"unknown family {', '.join(unknown)}; known: {', '.join(FAMILIES)}")
    logging.basicConfig(level=logging.WARNING)
    build(args.out, families, set(args.all_precisions.split(",")), not args.no_demo_all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
