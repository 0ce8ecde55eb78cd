"""The family registry and the helpers every family module shares.

A family module turns a Hugging Face sub-module into the family-neutral weights of `weights.py`
and registers itself with `@register_encoder("type")` / `@register_decoder("type")`
(onnxruntime-genai's 34-branch if/elif dispatch is what this avoids). This module imports
nothing of edgecap_export but `weights`, so family modules can import it without cycles.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from edgecap.errors import UnsupportedModelError

from .weights import Decoder, Encoder, LayerNorm, Linear

ENCODERS: dict[str, Callable[[Any], Encoder]] = {}
DECODERS: dict[str, Callable[[Any], Decoder]] = {}

# Activations the graph builders implement (names as in transformers' ACT2FN).
ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "gelu_fast", "relu", "quick_gelu", "silu", "swish")


def register_encoder(*model_types: str):
    def deco(fn):
        for t in model_types:
            ENCODERS[t] = fn
        return fn

    return deco


def register_decoder(*model_types: str):
    def deco(fn):
        for t in model_types:
            DECODERS[t] = fn
        return fn

    return deco


# --- helpers ---------------------------------------------------------------------------------


def to_numpy(t) -> np.ndarray:
    return t.detach().to("cpu").float().numpy().copy()


def linear(mod, scale: float = 1.0) -> Linear:
    """nn.Linear (weight [out, in]) -> Linear ([in, out])."""
    b = to_numpy(mod.bias) * scale if getattr(mod, "bias", None) is not None else None
    return Linear(np.ascontiguousarray(to_numpy(mod.weight).T) * scale, b)


def conv1d(w, b, scale: float = 1.0) -> Linear:
    """GPT-2's Conv1D already stores [in, out]."""
    return Linear(to_numpy(w) * scale, to_numpy(b) * scale)


def layer_norm(mod) -> LayerNorm:
    return LayerNorm(to_numpy(mod.weight), to_numpy(mod.bias), float(mod.eps))


def activation(name: str, where: str) -> str:
    if name not in ACTIVATIONS:
        raise UnsupportedModelError(f"{where}: unsupported activation {name!r}; supported: {', '.join(ACTIVATIONS)}")
    return name
