"""`edgecap build-engine`: TensorRT engines from a bundle's graphs, with metadata that says when they go stale.

Networks are STRONGLY TYPED: precision lives in the graph (fp16 graphs carry fp16 weights and keep
LayerNorm/Softmax/residuals in fp32 by explicit casts, DESIGN.md 3.5), and TensorRT must not re-decide
it. That is opt-in on TensorRT 10 (JetPack 6's 10.3 included) and the only mode of TensorRT 11, which
removed the FP16/INT8 builder flags: one code path for both.

int8: TensorRT builds int8 from explicit Q/DQ graphs (QuantizeLinear/DequantizeLinear with calibrated
scales): the bundle's `int8-qdq` graphs (`edgecap export --precision ...,int8-qdq`). The plain `int8`
graphs are ONNX Runtime dynamic quantization for CPUs, which TensorRT cannot build; `--precision int8`
therefore means the int8-qdq graphs.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..bundle import Bundle, load_bundle
from ..errors import BundleError, EdgecapError
from ..fileio import write_atomic
from .engines import EngineFile, EngineMeta, engine_dirs, write_meta, writable_dir
from .profiles import ProfileLimits, bundle_profiles, default_limits, profile_to_json
from .trt_common import load_trt_cuda, network_flags, runtime_env, trt_logger

log = logging.getLogger(__name__)

BUILDABLE = ("fp16", "fp32", "int8-qdq")
TIMING_CACHE = "timing.cache"
NO_QDQ = (
    "TensorRT needs int8 as explicit Q/DQ graphs with calibrated scales; this bundle has none (its int8 graphs are "
    "ONNX Runtime dynamic quantization for CPUs): re-export with `edgecap export MODEL OUT --precision fp32,int8-qdq "
    "[--calibration DIR]`, or build fp16 engines"
)
REFUSED = {
    "int4": "int4 graphs use ONNX Runtime's MatMulNBits op, which TensorRT cannot parse: build fp16 (or fp32) engines instead",
}


@dataclass(frozen=True)
class BuildOptions:
    precision: str
    limits: ProfileLimits
    workspace_mb: int | None = None  # None: TensorRT's default (the device's memory)
    tf32: bool = False  # fp32 engines: allow TF32 MatMuls (faster on Ampere+, not bit-comparable to CPU fp32)
    out_dir: Path | None = None


def engine_precision(bundle: Bundle, precision: str) -> str:
    """`int8` asks for the bundle's Q/DQ graphs (`int8-qdq`); the other names are graph precisions."""
    if precision == "int8":
        if "int8-qdq" not in bundle.manifest.graphs:
            raise EdgecapError(f"--precision int8: {NO_QDQ}")
        return "int8-qdq"
    return precision


def check_buildable(bundle: Bundle, precision: str) -> None:
    if precision in REFUSED:
        raise EdgecapError(f"--precision {precision}: {REFUSED[precision]}")
    if precision not in BUILDABLE:
        raise EdgecapError(f"--precision {precision}: edgecap builds TensorRT engines for {', '.join(BUILDABLE)}")
    bundle.graphs(precision)  # BundleError listing what the bundle has


def _parser_error(err) -> str:
    desc = getattr(err, "desc", None)  # IParserError.desc(); node name where the parser gives one
    text = desc() if callable(desc) else str(err)
    node = getattr(err, "node_name", None)
    node = node() if callable(node) else node
    return f"{node}: {text}" if node else str(text)


def build_engines(bundle: Bundle, options: BuildOptions) -> Path:
    """Build encoder and decoder engines; returns the directory holding them and engine.json."""
    check_buildable(bundle, options.precision)
    trt, cuda = load_trt_cuda()
    env = runtime_env(trt, cuda)
    out = Path(options.out_dir) if options.out_dir else writable_dir(engine_dirs(bundle, options.precision))
    out.mkdir(parents=True, exist_ok=True)
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    pair = bundle.graphs(options.precision)
    profiles = bundle_profiles(pair, options.limits)
    cache_path = out / TIMING_CACHE
    timing = cache_path.read_bytes() if cache_path.is_file() else b""
    engines: dict[str, EngineFile] = {}
    for role, graph in (("encoder", pair.encoder), ("decoder", pair.decoder)):
        src = bundle.file(graph.file)
        network = builder.create_network(network_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(src)):  # from the file: external weights resolve beside it
            errors = "; ".join(_parser_error(parser.get_error(i)) for i in range(min(parser.num_errors, 3)))
            raise BundleError(f"{src}: TensorRT cannot parse this graph ({errors or 'no detail'})")
        config = builder.create_builder_config()
        if options.workspace_mb:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(options.workspace_mb) << 20)
        tf32 = getattr(trt.BuilderFlag, "TF32", None)
        if tf32 is not None and not options.tf32:
            config.clear_flag(tf32)
        # one timing cache for every build: the decoder reuses the encoder's tactic timings, and
        # rebuilding after an edgecap upgrade or a profile change takes seconds instead of minutes
        cache = config.create_timing_cache(timing)
        config.set_timing_cache(cache, False)
        profile = builder.create_optimization_profile()
        wanted = profiles[role]
        for i in range(network.num_inputs):
            t = network.get_input(i)
            if any(d < 0 for d in t.shape) and t.name not in wanted:
                raise BundleError(f"{src}: input {t.name} is dynamic in the graph but not in the manifest")
        for name, (lo, opt, hi) in wanted.items():
            profile.set_shape(name, lo, opt, hi)
        config.add_optimization_profile(profile)
        log.info("building the %s engine (%s, profile %s) ...", role, options.precision,
                 {n: s[2] for n, s in wanted.items() if n.endswith(".0") or n == "pixel_values"})
        t0 = time.perf_counter()
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise EdgecapError(f"{src}: TensorRT could not build an engine (rerun with --debug for TensorRT's log)")
        engine_name = f"{role}.engine"
        write_atomic(out / engine_name, serialized)
        timing = bytes(config.get_timing_cache().serialize())
        log.info("built %s in %.0fs", out / engine_name, time.perf_counter() - t0)
        engines[role] = EngineFile(
            engine=engine_name, source=graph.file, source_sha256=bundle.manifest.files[graph.file],
            profile=profile_to_json(wanted),
        )
    write_atomic(cache_path, timing)
    from .. import __version__

    meta = EngineMeta(
        precision=options.precision,
        tensorrt_version=env.tensorrt_version,
        gpu_name=env.gpu_name,
        compute_capability=env.compute_capability,
        limits=options.limits.to_dict(),
        build_options={"workspace_mb": options.workspace_mb, "tf32": options.tf32, "strongly_typed": True},
        engines=engines,
        edgecap_version=__version__,
        built_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    write_meta(out, meta)
    return out


# --- command line ----------------------------------------------------------------------------------


def add_build_engine_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "build-engine",
        help="build TensorRT engines for a bundle (needs edgecap[tensorrt] and an NVIDIA GPU)",
        description="Build strongly typed TensorRT engines from a bundle's graphs of one precision, with one "
        "optimization profile per graph covering batch x beams and the caption length. Engines and engine.json "
        "go to BUNDLE/engines/PRECISION/ (or a user cache directory when the bundle is read-only).",
    )
    p.add_argument("bundle", metavar="BUNDLE", help="bundle directory from `edgecap export`")
    p.add_argument(
        "--precision", choices=("fp16", "fp32", "int8", "int8-qdq"),
        help="graphs to build; int8 = the bundle's int8-qdq graphs (default: fp16 if the bundle has it, else fp32)",
    )
    p.add_argument("--max-batch", type=int, metavar="N", help="most images per encoder call (default: 8)")
    p.add_argument("--max-beams", type=int, metavar="N", help="widest beam search (default: max(4, the bundle's num_beams))")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="longest caption (default: max(the bundle's default, 64))")
    p.add_argument("--workspace", type=int, metavar="MB", help="builder workspace limit in MiB (default: TensorRT's)")
    p.add_argument("--tf32", action="store_true", help="fp32 engines: allow TF32 math (faster; not bit-comparable to CPU)")
    p.add_argument("--out", metavar="DIR", help="where to write the engines (default: BUNDLE/engines/PRECISION)")
    p.add_argument("--debug", action="store_true", help="show tracebacks and TensorRT's log")


def run_build_engine(args: argparse.Namespace) -> int:
    if args.precision in REFUSED:  # before anything else: no bundle or TensorRT changes this answer
        raise EdgecapError(f"--precision {args.precision}: {REFUSED[args.precision]}")
    bundle = load_bundle(args.bundle, verify_checksums=False)
    precision = engine_precision(bundle, args.precision) if args.precision else None
    bundle = load_bundle(args.bundle, precision=precision, verify_checksums=True)
    precision = precision or ("fp16" if "fp16" in bundle.manifest.graphs else "fp32")
    check_buildable(bundle, precision)
    for flag in ("max_batch", "max_beams", "max_new_tokens", "workspace"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise EdgecapError(f"--{flag.replace('_', '-')} must be >= 1, got {value}")
    limits = default_limits(bundle.manifest, args.max_batch, args.max_beams, args.max_new_tokens)
    out = build_engines(
        bundle,
        BuildOptions(precision, limits, args.workspace, args.tf32, Path(args.out) if args.out else None),
    )
    log.info("wrote TensorRT engines to %s", out)
    return 0
