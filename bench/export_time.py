"""Default-options export of document-shaped checkpoints: how long it takes and what the gate says.

    python bench/export_time.py [--models donut,manga] [--work DIR] [--json out.json]

Builds each checkpoint with tests/docmodels.py (random weights, the real configs' structure: donut
at a reduced page geometry, manga-ocr at its real size) and runs `edgecap export CKPT OUT` with
nothing else, as a user would; records wall time, exit status and the manifest's verification
figures. Run alone on a quiet machine: the times are the point.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import docmodels  # noqa: E402

MODELS = {
    # donut-base's structure (4-stage Donut-Swin, window 10, mBART with Donut's 57,525-token vocabulary,
    # 768-token outputs) at a 640x480 page and reduced widths; init 0.02 as a trained model's scale
    "donut": lambda out: docmodels.donut_like(out, size=(640, 480), embed_dim=64, depths=(2, 2, 6, 2), window=10,
                                              d_model=512, decoder_layers=4, vocab=57525, max_length=768,
                                              init_std=0.02),
    # the same with the large weights (init std 0.2)
    "donut-std0.2": lambda out: docmodels.donut_like(out, size=(640, 480), embed_dim=64, depths=(2, 2, 6, 2),
                                                     window=10, d_model=512, decoder_layers=4, vocab=57525,
                                                     max_length=768, init_std=0.2),
    # kha-white/manga-ocr-base's sizes: ViT-base at 224, 2-layer BERT 768 wide, 6,144 tokens, 300-token outputs
    "manga": lambda out: docmodels.manga_like(out),
    # the same with large decoder weights, so that a random model is decisive (a trained one is; one with
    # init 0.02 is not, and the precision gate then has nothing to judge), the encoder kept at 0.02 (a
    # 12-layer ViT at 0.2 is so unstable that fp32 rounding alone flips PyTorch's own tokens)
    "manga-decisive": lambda out: docmodels.manga_like(out, init_std=0.2, encoder_std=0.02),
    "donut-decisive": lambda out: docmodels.donut_like(out, size=(640, 480), embed_dim=64, depths=(2, 2, 6, 2),
                                                       window=10, d_model=512, decoder_layers=4, vocab=57525,
                                                       max_length=768, init_std=0.2, encoder_std=0.02),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="donut,manga")
    p.add_argument("--work", default="/tmp/edgecap-export-time")
    p.add_argument("--json")
    p.add_argument("--extra", default="", help="extra `edgecap export` arguments, space separated")
    args = p.parse_args(argv)
    work = Path(args.work)
    results = {}
    for name in args.models.split(","):
        ckpt, out = work / name / "checkpoint", work / name / "bundle"
        if not (ckpt / "config.json").is_file():
            MODELS[name](ckpt)
        cmd = [sys.executable, "-m", "edgecap", "export", str(ckpt), str(out), "--force", *args.extra.split()]
        t0 = time.perf_counter()
        res = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - t0
        entry = {"command": " ".join(cmd[2:]), "seconds": round(seconds, 1), "exit": res.returncode,
                 "log": res.stderr.strip().splitlines()[-12:]}
        manifest = out / "manifest.json"
        if manifest.is_file():
            data = json.loads(manifest.read_text())
            entry["precisions"] = list(data["graphs"])
            entry["verification"] = data["verification"]
        results[name] = entry
        print(json.dumps({name: {k: v for k, v in entry.items() if k != "log"}}, indent=1), flush=True)
        for line in entry["log"]:
            print("   ", line)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
