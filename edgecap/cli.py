"""`edgecap` command line: caption images, export models.

Exit codes: 0 success; 1 some inputs failed (the others were still processed); 2 usage, bundle or
export errors; 3 an internal error (a bug: rerun with --debug and report the traceback).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from typing import Any, Iterator, Sequence

from . import __version__, pdf
from .cliargs import (
    EXIT_CODES_HELP, EXIT_INPUT_FAILED, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE,
    add_generation_args, add_model_args, generation_options,
)
from .errors import EdgecapError
from .extras import install_command
from .inputs import expand_inputs
from .progress import StatusLine, bar, format_eta
from .signals import (
    EXIT_BROKEN_PIPE, EXIT_TERMINATED, Terminated, escape_field, silence_stdout, tsv_line, unix_signals, write_line,
)

log = logging.getLogger("edgecap")


def _say(message: str) -> None:
    print(f"edgecap: {message}", file=sys.stderr, flush=True)


def build_parser() -> argparse.ArgumentParser:
    from PIL import Image  # for --max-pixels' default

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
        description="Caption images. Prints PATH<TAB>CAPTION per image (then <TAB>ALTERNATIVE... with "
        "--num-return-sequences), or one JSON object per input with --json. A bad input is reported on stderr "
        "(and, with --json, as a record with an \"error\" key) and the rest are still captioned. On a terminal, "
        "a progress line on stderr follows runs of more than a few images.",
        epilog=EXIT_CODES_HELP,
    )
    cap.add_argument("paths", nargs="+", metavar="PATH",
                     help="image files, PDFs (one input per page, rendered at 96 dpi as Nougat does, named "
                     "paper.pdf#page=N, which also works as an input; needs the pdf extra), directories of images "
                     "and PDFs, glob patterns, or - to read paths from stdin (one per line, taken literally)")
    cap.add_argument("-r", "--recursive", action="store_true", help="scan directories' subdirectories too")
    cap.add_argument("--json", action="store_true",
                     help="print one JSON object per input: path, caption, score, token_ids, token_scores (each "
                     "token's log-probability), confidence (exp of their mean), model, precision (alternatives "
                     "with --num-return-sequences), parsed (the answer as a structure: Florence-2's boxes and "
                     "labels, Donut's JSON); a failed input has path and error")
    cap.add_argument("--attention-maps", metavar="DIR",
                     help="also write DIR/NAME.png per image: one heatmap per generated token of where the decoder "
                     "looked, titled with the token and its probability (bundles exported with --with-attentions)")
    cap.add_argument("--batch-size", type=int, default=8, metavar="N", help="images per model call (default: 8)")
    cap.add_argument("--max-pixels", type=int, metavar="N",
                     help="largest image to decode, in pixels (default: PIL's decompression-bomb limit, "
                     f"{Image.MAX_IMAGE_PIXELS:,}); raise it to caption a bigger image you trust")
    add_model_args(cap)
    add_generation_args(cap)
    cap.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")

    exp = sub.add_parser(
        "export",
        help="export a Hugging Face VisionEncoderDecoder model to a bundle (needs the [export] extra)",
        description="Export a VisionEncoderDecoderModel (local directory or hub id) to an edgecap bundle: "
        "encoder graph with cross-attention K/V, KV-cached decoder-step graph, tokenizer, manifest. "
        "The graphs are verified against PyTorch; nothing is written if verification fails.",
        epilog=EXIT_CODES_HELP,
    )
    exp.add_argument("model", metavar="MODEL", help="model directory (or hub id where a network exists)")
    exp.add_argument("outdir", metavar="OUTDIR", help="bundle directory to create (must not exist or be empty)")
    exp.add_argument("--force", action="store_true",
                     help="replace the bundle already in OUTDIR; it stays untouched until the new one is verified "
                     "(a directory that is not a bundle is never replaced)")
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
        "e.g. '<s_cord-v2>'); tokenized without special tokens. Florence-2: the default task prompt "
        "(default '<CAPTION>'; e.g. '<OD>')",
    )
    exp.add_argument(
        "--calibration", metavar="DIR",
        help="images whose activation ranges calibrate int8-qdq (default: 16 of the evaluation images)",
    )
    exp.add_argument("--no-fused", dest="fused", action="store_false",
                     help="write the plain graphs only (default: also fp32/int8/int4 graphs with ONNX Runtime's fused "
                     "operators, which the CPU backend runs; the plain ones are for GPUs, TensorRT and reference)")
    exp.add_argument("--with-attentions", action="store_true",
                     help="also write an attention-emitting decoder step per precision, for `caption --attention-maps` "
                     "and Captioner.caption(output_attentions=True); the normal step is unchanged")
    exp.add_argument("--verify-images", type=int, default=4, metavar="N", help="random images checked against PyTorch")
    exp.add_argument("--verify-steps", type=int, default=48, metavar="N",
                     help="tokens decoded per image when verifying fp32 and judging precisions (default: 48, past the "
                     "cache's growth from 16 to 64 slots; 0 = the model's whole max_new_tokens)")
    exp.add_argument("--max-logit-diff", type=float, default=1e-3, metavar="X",
                     help="largest fp32 logit difference to PyTorch accepted outright (default: 1e-3); beyond it the "
                     "graphs still pass when, against PyTorch in float64, their error is within 4x PyTorch fp32's own")
    exp.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")

    from .feeds.command import add_feed_parser  # `edgecap feed` (video needs the [feeds] extra)

    add_feed_parser(sub)

    from .gpu.trt_build import add_build_engine_parser  # `edgecap build-engine` (needs the [tensorrt] extra)

    add_build_engine_parser(sub)
    return parser


PROGRESS_MIN_IMAGES = 6  # fewer finish before a progress line would be worth reading


def _caption(args: argparse.Namespace) -> int:
    from PIL import Image

    from .captioner import Captioner

    options = generation_options(args)
    if args.batch_size < 1:
        raise EdgecapError("--batch-size must be >= 1")
    if args.max_pixels is not None:
        if args.max_pixels < 1:
            raise EdgecapError("--max-pixels must be >= 1")
        # PIL reads this global at every open; this process is the command, so setting it is local enough
        Image.MAX_IMAGE_PIXELS = args.max_pixels
    if hasattr(sys.stdout, "reconfigure"):
        # JSON Lines are UTF-8 whatever the locale; plain lines keep the terminal's encoding. Neither
        # may crash on a character it cannot encode (an undecodable file name): escaped instead.
        sys.stdout.reconfigure(encoding="utf-8" if args.json else None, errors="backslashreplace")
    captioner = Captioner(args.bundle, precision=args.precision, backend=args.backend, threads=args.threads)
    resolved = captioner.resolve_options(options)  # bad options fail before any image is read
    maps = None
    if args.attention_maps:
        from .attention import AttentionMapWriter

        captioner.caption([], output_attentions=True)  # a bundle without attentions fails before any work
        maps = AttentionMapWriter(args.attention_maps)
    items = list(expand_inputs(args.paths, recursive=args.recursive))
    writer = _CaptionWriter(args.json, {"model": captioner.bundle.manifest.source.model,
                                        "precision": captioner.precision}, resolved.num_return_sequences > 1,
                            _is_donut(captioner))
    # stderr only, and only on a terminal: piped or logged runs get exactly what they got before
    status = StatusLine(sys.stderr, log_lines=False, quiet=len(items) < PROGRESS_MIN_IMAGES)
    progress = _Progress(status, len(items))
    pending: list[tuple[str, object, Any, str | None]] = []  # input order kept across failures
    min_side = captioner.bundle.manifest.architecture.encoder_patch_size

    def flush() -> None:
        good = [pixels for _, _, pixels, problem in pending if problem is None]
        caps: Iterator[Any] = iter([])
        if good:  # the pixels _load made (with warnings naming the files), captioned in one call
            import numpy as np

            hyps = captioner.decode(captioner.encode(np.stack(good), options), options, output_attentions=maps is not None)
            sizes = [image.size for _, image, _, problem in pending if problem is None]  # parsed answers' pixels
            caps = iter([captioner.to_caption(h, resolved, size, options) for h, size in zip(hyps, sizes)])
        status.clear()
        for path, image, _, problem in pending:
            if problem is None:
                c = _page_marked(path, next(caps))
                writer.caption(path, c)
                if maps is not None:
                    maps.write(captioner, path, image, c)
            else:
                status.print(f"{escape_field(path)}: {problem}")
                writer.failure(path, problem)
        progress.advance(len(pending), sum(1 for *_, problem in pending if problem is not None))
        pending.clear()

    try:
        progress.show()
        for path, problem in items:
            image = pixels = None
            if problem is None:
                image, pixels, problem = _load(path, captioner.preprocess_spec, min_side)
            pending.append((path, image, pixels, problem))
            waiting = sum(1 for *_, p in pending if p is None)
            if waiting == 0 or waiting >= args.batch_size:  # a failure with nothing to wait for is said at once
                flush()
        flush()
    finally:
        status.close()
    progress.summary()
    return EXIT_INPUT_FAILED if progress.failed else EXIT_OK


def _load(path: str, spec: Any, min_side: int | None) -> tuple[Any, Any, str | None]:
    """(PIL image, its pixel_values, None) or (None, None, the problem). Preprocessing here makes a
    problem (Donut's and Nougat's geometry can refuse an image too elongated for their canvas) this
    file's, not its whole batch's, and names the file in warnings. `path` may name a PDF page."""
    from .errors import ImageError
    from .preprocess import load_image, preprocess_one

    try:
        page = pdf.split_page_name(path)
        image = load_image(pdf.render_page(*page) if page else path)
        return image, preprocess_one(image, spec, min_side, source=path), None
    except ImageError as exc:
        problem = exc.problem
    if "decompression bomb" in problem:
        problem += "; if you trust it, allow it with --max-pixels N"
    return None, None, problem


def _page_marked(path: str, c: Any) -> Any:
    """A missing-page mark of a PDF page numbered as Nougat numbers it: [MISSING_PAGE_FAIL:3]."""
    page = pdf.split_page_name(path)
    if c.missing_page is None or page is None:
        return c
    from dataclasses import replace

    from .nougat import page_mark

    return replace(c, text=page_mark(c.missing_page, page[1]))


class _CaptionWriter:
    """stdout: PATH<TAB>CAPTION[<TAB>ALTERNATIVE...], or one JSON object per input (failures too,
    so a consumer sees every input exactly once)."""

    def __init__(self, json_lines: bool, extra: dict, alternatives: bool,
                 donut: bool = False) -> None:
        self.json_lines, self.extra, self.alternatives = json_lines, extra, alternatives
        self.donut = donut  # Donut bundles also keep their answer under "json", as before "parsed" existed

    def caption(self, path: str, c: Any) -> None:
        if not self.json_lines:
            write_line(tsv_line([path, c.text] + [a.text for a in c.alternatives]))
            return
        record = {"path": path, **self._fields(c), **self.extra}
        if self.alternatives:
            record["alternatives"] = [self._fields(a) for a in c.alternatives]
        write_line(json.dumps(record, ensure_ascii=False))

    def failure(self, path: str, problem: str) -> None:
        if self.json_lines:
            write_line(json.dumps({"path": path, "error": problem, **self.extra}, ensure_ascii=False))

    def _fields(self, c: Any) -> dict:
        fields = {"caption": c.text, "score": c.score, "token_ids": list(c.token_ids),
                  "token_scores": list(c.token_scores), "confidence": c.confidence}
        if c.parsed is not None:  # the answer as a structure (Florence-2's boxes, Donut's JSON)
            fields["parsed"] = c.parsed
            if self.donut:
                fields["json"] = c.parsed
        return fields


def _is_donut(captioner: Any) -> bool:
    from .donut import is_donut

    return is_donut(captioner.bundle.manifest)


class _Progress:
    """`caption`'s progress line: images done of the total, rate, time left, failures."""

    def __init__(self, status: StatusLine, total: int) -> None:
        self.status, self.total = status, total
        self.done = self.failed = 0
        self.t0 = time.monotonic()

    def show(self, force: bool = True) -> None:
        elapsed = time.monotonic() - self.t0
        rate = self.done / elapsed if self.done and elapsed > 0 else 0.0
        eta = f", {format_eta((self.total - self.done) / rate)} left" if rate else ""
        failed = f", {self.failed} failed" if self.failed else ""
        self.status.update(f"{self.done}/{self.total} images {bar(self.done, self.total)} {rate:.1f}/s{eta}{failed}",
                           force=force)

    def advance(self, count: int, failed: int) -> None:
        self.done += count
        self.failed += failed
        self.show(force=False)

    def summary(self) -> None:
        if self.status.tty and not self.status.quiet:
            seconds = time.monotonic() - self.t0
            failed = f", {self.failed} failed" if self.failed else ""
            self.status.print(f"{self.done} images in {seconds:.1f}s{failed}")


def _export(args: argparse.Namespace) -> int:
    try:
        from edgecap_export.exporter import ExportOptions, PartialExportError, export
    except ImportError as exc:
        if (exc.name or "").split(".")[0] in ("edgecap", "edgecap_export"):
            raise  # a broken install of our own, not a missing extra: an internal error
        raise EdgecapError(
            f"`edgecap export` needs the exporter's dependencies ({exc.name or exc} is missing): "
            f"{install_command('export')}"
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
        verify_steps=args.verify_steps,
        max_logit_diff=args.max_logit_diff,
        min_agreement=args.min_agreement,
        allow_partial=args.allow_partial,
        eval_images=eval_images,
        calibration_images=calibration_images,
        force=args.force,
        prompt=args.prompt,
        with_attentions=args.with_attentions,
        fused=args.fused,
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
        with unix_signals():
            return {"caption": _caption, "export": _export, "feed": _feed, "build-engine": _build_engine}[args.command](args)
    except EdgecapError as exc:
        if debug:
            raise
        _say(f"error: {exc}")
        return EXIT_USAGE
    except BrokenPipeError:  # `edgecap caption ... | head -2`: the reader is gone, which is no error of ours
        silence_stdout()
        return EXIT_BROKEN_PIPE
    except Terminated:
        _say("terminated (SIGTERM); finished work is kept")
        return EXIT_TERMINATED
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
