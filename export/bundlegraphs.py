"""One precision's graph files in a bundle: plain and fused forms, weights stored once.

Per precision directory:

    encoder.onnx, decoder.onnx (, decoder_attn.onnx)                 plain graphs (graphs.py): TensorRT,
                                                                     the GPU backends, the reference
    encoder.fused.onnx, decoder.fused.onnx (, decoder_attn.fused.onnx)  ONNX Runtime's fused operators
                                                                     (fused.py, fused_encoder.py): the CPU default
    weights.bin                                                      every large tensor of those graphs, once

The two forms hold mostly the same tensors (the same projections, norms and tables), so their
initializers go to one external-data file, deduplicated by content: the fused form costs a few
kilobytes of graph structure, not a second copy of the weights, and no graph file nears protobuf's
2 GiB limit. fp32, int8 and int4 get fused graphs; fp16 (GPUs) and int8-qdq (TensorRT) stay plain.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import onnx
from onnx import external_data_helper

from edgecap import manifest as mf

from . import graphs, quantize, verify
from .fused import build_fused_decoder_step
from .fused_encoder import build_fused_encoder
from .weights import Encoder, SwinEncoder

log = logging.getLogger(__name__)

FUSED_PRECISIONS = ("fp32", "int8", "int4")
WEIGHTS_FILE = "weights.bin"
_EXTERNAL_MIN_BYTES = 1024  # smaller tensors (shapes, scalars) stay in the graph, where ONNX Runtime folds them
_ALIGN = 64


def save_shared(models: dict[Path, onnx.ModelProto], data: Path) -> None:
    """Save `models` (path -> graph) with their large initializers in the one file `data` (beside them),
    each distinct tensor written once."""
    data.parent.mkdir(parents=True, exist_ok=True)
    written: dict[bytes, tuple[int, int]] = {}
    with open(data, "wb") as out:
        for path, model in models.items():
            location = Path(os.path.relpath(data, path.parent)).as_posix()
            for tensor in external_data_helper._get_all_tensors(model):
                raw = tensor.raw_data
                if not tensor.HasField("raw_data") or len(raw) < _EXTERNAL_MIN_BYTES:
                    continue
                key = hashlib.sha256(raw).digest()
                if key not in written:
                    offset = out.tell()
                    pad = (-offset) % _ALIGN
                    out.write(b"\0" * pad)
                    written[key] = (offset + pad, len(raw))
                    out.write(raw)
                offset, length = written[key]
                external_data_helper.set_external_data(tensor, location=location, offset=offset, length=length)
                tensor.ClearField("raw_data")
                tensor.data_location = onnx.TensorProto.EXTERNAL
            path.parent.mkdir(parents=True, exist_ok=True)
            onnx.save_model(model, str(path))


def graph_spec(root: Path, rel: str) -> mf.GraphSpec:
    """Signature of a saved graph, read back from the file."""
    from onnx import TensorProto

    names = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.INT64: "int64"}
    model = onnx.load(str(root / rel), load_external_data=False)

    def specs(values):
        out = []
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim]
            out.append(mf.TensorSpec(v.name, names[t.elem_type], dims))
        return out

    return mf.GraphSpec(rel, specs(model.graph.input), specs(model.graph.output))


def build_precision(prec: str, root: Path, enc, dec, with_attentions: bool, fused: bool, int4_block_size: int,
                    done: set[str], calib_pixels: np.ndarray | None = None) -> mf.GraphPair:
    """Write one precision's graphs under root/<prec>/ and return their manifest entry (the int4 encoder
    is int8's when int8 is in the bundle)."""
    steps = ["decoder"] + (["decoder_attn"] if with_attentions else [])
    folder = root / prec
    # Florence-2's encoder (DaViT + a BART encoder over image and prompt tokens) has no fused form yet
    fused = fused and isinstance(enc, (Encoder, SwinEncoder))
    models: dict[Path, onnx.ModelProto] = {}
    enc_rel = fused_enc_rel = None
    if prec in graphs.BUILT_PRECISIONS:
        models[folder / "encoder.onnx"] = graphs.build_encoder(enc, dec, prec)[0]
        for name in steps:
            models[folder / f"{name}.onnx"] = graphs.build_decoder_step(dec, enc.cross_seq, prec,
                                                                         attentions=name == "decoder_attn")[0]
        enc_rel = f"{prec}/encoder.onnx"
        if fused and prec in FUSED_PRECISIONS:
            models[folder / "encoder.fused.onnx"] = build_fused_encoder(enc, dec, prec)[0]
            for name in steps:
                models[folder / f"{name}.fused.onnx"] = build_fused_decoder_step(
                    dec, enc.seq_len, prec, attentions=name == "decoder_attn")[0]
            fused_enc_rel = f"{prec}/encoder.fused.onnx"
    elif prec == "int8-qdq":  # ONNX Runtime's static quantizer writes its own files
        enc_feeds, dec_feeds = verify.calibration_feeds(root, calib_pixels)
        quantize.quantize_int8_qdq(root / "fp32" / "encoder.onnx", folder / "encoder.onnx", enc_feeds)
        for name in steps:  # the same feeds calibrate both steps: their inputs are the same
            quantize.quantize_int8_qdq(root / "fp32" / f"{name}.onnx", folder / f"{name}.onnx", dec_feeds)
        enc_rel = f"{prec}/encoder.onnx"
        fused = False
    elif prec == "int4":
        forms = [""] + ([".fused"] if fused else [])
        for form in forms:
            for name in steps:
                models[folder / f"{name}{form}.onnx"] = quantize.int4_model(root / "fp32" / f"{name}{form}.onnx",
                                                                            int4_block_size)
        if "int8" in done:
            enc_rel, fused_enc_rel = "int8/encoder.onnx", ("int8/encoder.fused.onnx" if fused else None)
        else:
            models[folder / "encoder.onnx"] = graphs.build_encoder(enc, dec, "int8")[0]
            enc_rel = "int4/encoder.onnx"
            if fused:
                models[folder / "encoder.fused.onnx"] = build_fused_encoder(enc, dec, "int8")[0]
                fused_enc_rel = "int4/encoder.fused.onnx"
    else:
        raise ValueError(f"unknown precision {prec!r}")
    if models:
        save_shared(models, folder / WEIGHTS_FILE)
    attn = graph_spec(root, f"{prec}/decoder_attn.onnx") if with_attentions else None
    fused_graphs = None
    if fused and fused_enc_rel is not None:
        fused_graphs = mf.FusedGraphs(
            graph_spec(root, fused_enc_rel), graph_spec(root, f"{prec}/decoder.fused.onnx"),
            graph_spec(root, f"{prec}/decoder_attn.fused.onnx") if with_attentions else None)
    return mf.GraphPair(graph_spec(root, enc_rel), graph_spec(root, f"{prec}/decoder.onnx"), attn, fused_graphs)
