"""`edgecap` command line: caption images, export models.

Exit codes: 0 success; 1 some inputs failed (the others were still processed); 2 usage, bundle or
export errors; 3 an internal error (a bug: rerun with --debug and report the traceback).
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
from pathlib import Path
from typing import Iterator, Sequence

from . import __version__
from .cliargs import (
    EXIT_CODES_HELP, EXIT_INPUT_FAILED, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE,
    add_generation_args, add_model_args, generation_options,
)
from .errors import EdgecapError, ImageError

log = logging.getLogger("edgecap")

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def _say(message: str) -> None:
    print(f"edgecap: {message}", file=sys.stderr, flush=True)


def expand_inputs(patterns: Sequence[str]) -> Iterator[tuple[str, str | None]]:
    """(path, problem) for each input: files as given, image files inside directories, glob matches."""
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(p for p in Path(pattern).iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                yield pattern, "directory contains no image files"
            for p in found:
                yield str(p), None
        elif os.path.exists(pattern):
            yield pattern, None
        elif glob.has_magic(pattern):
            matches = sorted(glob.glob(pattern, recursive=True))
            if not matches:
                yield pattern, "no files match this pattern"
            for m in matches:
                if os.path.isfile(m):
                    yield m, None
        else:
            yield pattern, "file not found"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="edgecap",
        description="Caption images with Hugging Face VisionEncoderDecoder models exported to ONNX.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"edgecap {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    cap = sub.add_parser(
        "caption",
        help="caption image files, directories and globs",
        description="Caption images. Prints PATH<TAB>CAPTION per image (or JSON lines with --json). "
        "A bad input is reported on stderr and the rest are still captioned.",
    )
    cap.add_argument("paths", nargs="+", metavar="PATH", help="image files, directories of images, or glob patterns")
    cap.add_argument("--json", action="store_true", help="print one JSON object per image")
    cap.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per model call (default: 8)")
    add_model_args(cap)
    add_generation_args(cap)
    cap.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")

    exp = sub.add_parser(
        "export",
        help="export a Hugging Face VisionEncoderDecoder model to a bundle (needs edgecap[export])",
        description="Export a VisionEncoderDecoderModel (local directory or hub id) to an edgecap bundle: "
        "encoder graph with cross-attention K/V, KV-cached decoder-step graph, tokenizer, manifest. "
        "The graphs are verified against PyTorch; nothing is written if verification fails.",
    )
    exp.add_argument("model", metavar="MODEL", help="model directory (or hub id where a network exists)")
    exp.add_argument("outdir", metavar="OUTDIR", help="bundle directory to create (must not exist or be empty)")
    exp.add_argument(
        "--precision", default="fp32,int8", metavar="LIST",
        help="comma-separated precisions to write: fp32 (always), int8, fp16, int4, int8-qdq (static Q/DQ "
        "for TensorRT) (default: fp32,int8)",
    )
    exp.add_argument(
        "--min-agreement", type=float, default=0.97, metavar="X",
        help="quality gate of the reduced precisions: fed fp32's own greedy captions of the evaluation images, "
        "a precision whose top token agrees with fp32's on less than this fraction of the decisive steps "
        "(fp32's top token at least e times as likely as its runner-up) is not written (default: 0.97; 0 = no gate)",
    )
    exp.add_argument(
        "--eval-images", metavar="DIR",
        help="your images for that gate: the way to a figure you can trust (default: 32 synthetic images "
        "of shapes and text, which say more than noise but are not your data)",
    )
    exp.add_argument(
        "--allow-partial", action="store_true",
        help="exit 0 even when a precision fails the gate (it is left out of the bundle either way; "
        "without this flag export exits 1 so that a script notices)",
    )
    exp.add_argument(
        "--prompt", metavar="TEXT",
        help="the bundle's default decoder prompt, used when a caption call gives none (Donut task models: "
        "e.g. '<s_cord-v2>'); tokenized without special tokens",
    )
    exp.add_argument(
        "--calibration", metavar="DIR",
        help="images whose activation ranges calibrate int8-qdq (default: 16 of the evaluation images)",
    )
    exp.add_argument("--verify-images", type=int, default=4, metavar="N", help="random images checked against PyTorch")
    exp.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")

    from .feeds.command import add_feed_parser  # `edgecap feed` (video needs edgecap[feeds])

    add_feed_parser(sub)

    from .gpu.trt_build import add_build_engine_parser  # `edgecap build-engine` (needs edgecap[tensorrt])

    add_build_engine_parser(sub)
    return parser


def _caption(args: argparse.Namespace) -> int:
    from .captioner import Captioner
    from .preprocess import load_image

    options = generation_options(args)
    if args.batch_size < 1:
        raise EdgecapError("--batch-size must be >= 1")
    captioner = Captioner(args.bundle, precision=args.precision, backend=args.backend, threads=args.threads)
    captioner.resolve_options(options)  # bad options fail before any image is read
    failed = 0
    pending: list[tuple[str, object]] = []

    def flush() -> None:
        if not pending:
            return
        caps = captioner.caption([img for _, img in pending], options=options, batch_size=len(pending))
        for (path, _), c in zip(pending, caps):
            if args.json:
                line = json.dumps({"path": path, "caption": c.text, "score": c.score, "token_ids": list(c.token_ids)})
            else:
                line = f"{path}\t{c.text}"
            print(line, flush=True)
        pending.clear()

    for path, problem in expand_inputs(args.paths):
        if problem is None:
            try:
                pending.append((path, load_image(path)))
            except ImageError as exc:
                problem = exc.problem
        if problem is not None:
            failed += 1
            _say(f"{path}: {problem}")
        if len(pending) >= args.batch_size:
            flush()
    flush()
    return EXIT_INPUT_FAILED if failed else EXIT_OK


def _export(args: argparse.Namespace) -> int:
    try:
        from edgecap_export.exporter import ExportOptions, PartialExportError, export
    except ImportError as exc:
        raise EdgecapError(
            f"`edgecap export` needs the exporter's dependencies ({exc.name or exc} is missing): "
            "pip install 'edgecap[export]'"
        ) from None
    def image_dir(path: str | None, purpose: str) -> tuple[str, ...]:
        if not path:
            return ()
        found = tuple(p for p, problem in expand_inputs([path]) if problem is None)
        if not found:
            raise EdgecapError(f"{path}: no images to {purpose}")
        return found

    eval_images = image_dir(args.eval_images, "evaluate precisions on")
    calibration_images = image_dir(args.calibration, "calibrate int8-qdq with")
    precisions = tuple(dict.fromkeys(["fp32"] + [p.strip() for p in args.precision.split(",") if p.strip()]))
    options = ExportOptions(
        precisions=precisions,
        verify_images=args.verify_images,
        min_agreement=args.min_agreement,
        allow_partial=args.allow_partial,
        eval_images=eval_images,
        calibration_images=calibration_images,
        prompt=args.prompt,
    )
    try:
        out = export(args.model, args.outdir, options)
    except PartialExportError as exc:
        _say(f"error: {exc}")
        return EXIT_INPUT_FAILED
    log.debug("export finished: %s", out)
    return EXIT_OK


def _feed(args: argparse.Namespace) -> int:
    from .feeds.command import run_command

    return run_command(args)


def _build_engine(args: argparse.Namespace) -> int:
    from .gpu.trt_build import run_build_engine

    return run_build_engine(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    debug = getattr(args, "debug", False)
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="edgecap: %(message)s")
    if not debug:  # library chatter below warnings stays out of a user's terminal
        for name in ("edgecap.captioner", "edgecap.bundle", "edgecap.backends"):
            logging.getLogger(name).setLevel(logging.WARNING)
    try:
        return {"caption": _caption, "export": _export, "feed": _feed, "build-engine": _build_engine}[args.command](args)
    except EdgecapError as exc:
        if debug:
            raise
        _say(f"error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _say("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:  # a bug: one line unless --debug
        if debug:
            raise
        _say(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
