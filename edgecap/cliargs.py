"""Command-line arguments that `edgecap caption`, `edgecap feed` and the Ray path share.

Defined once, with the option names of transformers `generate()`, so the commands cannot drift
apart and `feed` needs nothing from `cli.py` (this module imports only downward).
"""

from __future__ import annotations

import argparse

from .options import GenerationOptions
from .text import POSTPROCESSORS

EXIT_OK, EXIT_INPUT_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

EXIT_CODES_HELP = (
    "exit codes: 0 ok; 1 some inputs failed (the others were still processed); 2 usage, bundle or "
    "export error; 3 internal error (a bug: rerun with --debug and report the traceback); "
    "130 interrupted by Ctrl-C, 143 terminated by SIGTERM (both stop between output lines; finished work is kept); "
    "141 the output pipe was closed (e.g. by | head)"
)


def parse_early_stopping(text: str) -> bool | str:
    """generate()'s early_stopping: true, false or "never"."""
    value = {"true": True, "false": False, "never": "never"}.get(text.strip().lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"expected true, false or never, got {text!r}")
    return value


def parse_id_lists(text: str) -> list[list[int]]:
    """generate()'s bad_words_ids as JSON: [[12], [7, 9]]."""
    import json

    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, list) or not all(isinstance(s, list) and s and all(isinstance(t, int) for t in s) for s in value):
        raise argparse.ArgumentTypeError(f"expected a JSON list of lists of token ids, e.g. [[12], [7, 9]], got {text!r}")
    return value


def parse_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected token ids separated by commas, got {text!r}") from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--bundle", metavar="DIR", help="bundle directory from `edgecap export` (default: the bundled demo model)")
    g.add_argument("--precision", metavar="P", help="graphs to run: fp32, int8, ... (default: the best the bundle has)")
    g.add_argument("--backend", metavar="B", default="auto",
                   help="auto, cpu, cuda, ort-tensorrt or tensorrt (default: auto: built TensorRT engines, "
                   "else ONNX Runtime CUDA, else CPU)")
    g.add_argument("--threads", type=int, metavar="N", help="ONNX Runtime threads, >= 1 (default: all cores)")


def add_generation_args(p: argparse.ArgumentParser, alternatives: bool = True) -> None:
    """generate()'s options; `alternatives` adds --num-return-sequences (for commands that print them)."""
    g = p.add_argument_group("generation (names as in transformers generate(); default: the bundle's generation config)")
    g.add_argument("--num-beams", "--beams", type=int, dest="num_beams", metavar="N", help="beam width, 1 (greedy) up to the vocabulary size; refused when the decoder "
                   "state (images x beams rows) would not fit in the memory available")
    g.add_argument("--max-new-tokens", type=int, metavar="N", help="longest output, in tokens (1 up to the decoder's positions less the prompt)")
    g.add_argument("--min-new-tokens", type=int, metavar="N", help="shortest output, in tokens (>= 0)")
    g.add_argument("--length-penalty", type=float, metavar="X",
                   help="beam search: scores are divided by length**X (>0 favours longer outputs)")
    g.add_argument("--no-repeat-ngram-size", type=int, metavar="N", help="forbid repeating n-grams of this size (0 = off)")
    g.add_argument("--early-stopping", type=parse_early_stopping, metavar="{true,false,never}",
                   help="beam search: when to stop (as in generate())")
    prompt = g.add_mutually_exclusive_group()
    prompt.add_argument("--prompt", metavar="TEXT",
                        help="decoder prompt, tokenized without special tokens (Donut: the task, e.g. "
                        "'<s_cord-v2>' or '<s_docvqa><s_question>what is the total?</s_question><s_answer>'); "
                        "outputs are what follows it. Florence-2 reads it in its encoder: a task, e.g. '<OD>', "
                        "'<OCR_WITH_REGION>', '<CAPTION_TO_PHRASE_GROUNDING>a red car'")
    prompt.add_argument("--prompt-ids", type=parse_ids, metavar="IDS",
                        help="decoder prompt as token ids in [0, vocabulary), e.g. 57579,57580 (fed after the "
                        "decoder start token, as generate(decoder_input_ids=...))")
    g.add_argument("--bad-words-ids", type=parse_id_lists, metavar="JSON",
                   help="token sequences never to generate, e.g. '[[3], [17, 42]]' (default: the bundle's)")
    g.add_argument("--stopping", choices=("nougat", "none"),
                   help="also stop when the output starts repeating itself, as Nougat's own inference does "
                   "(greedy only; a page that repeated is reported as [MISSING_PAGE_FAIL], one that repeated from "
                   "its start as [MISSING_PAGE_EMPTY]); none: only eos and --max-new-tokens end an output "
                   "(default: the bundle's: nougat for Nougat checkpoints, else none)")
    g.add_argument("--postprocess", choices=(*POSTPROCESSORS, "none"),
                   help="clean up the decoded text: nougat = Nougat's post_process_generation (drops made-up "
                   "references and repeated tails, fixes tables, lists and markdown), nougat-no-markdown = the "
                   "same without the markdown fixes (equation tags, URLs), manga-ocr = manga-ocr's (spaces removed, "
                   "ellipses as dots, half-width made full-width); tokens and scores are unchanged "
                   "(default: the bundle's: nougat for Nougat checkpoints, manga-ocr for manga-ocr's, else none)")
    if alternatives:
        g.add_argument("--num-return-sequences", type=int, metavar="N",
                       help="beam search: also report the N-1 next-best outputs (1 up to --num-beams)")


def generation_options(args: argparse.Namespace) -> GenerationOptions:
    """The GenerationOptions a command line asked for (unset options stay None: bundle defaults)."""
    return GenerationOptions(
        num_beams=args.num_beams,
        max_new_tokens=args.max_new_tokens,
        min_new_tokens=args.min_new_tokens,
        length_penalty=args.length_penalty,
        no_repeat_ngram_size=args.no_repeat_ngram_size,
        early_stopping=args.early_stopping,
        num_return_sequences=getattr(args, "num_return_sequences", None),
        prompt=args.prompt,
        prompt_ids=args.prompt_ids,
        bad_words_ids=args.bad_words_ids,
        stopping=args.stopping,
        postprocess=args.postprocess,
    )
