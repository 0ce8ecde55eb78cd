"""edgecap: caption images with exported VisionEncoderDecoder bundles on ONNX Runtime.

The runtime imports only numpy, onnxruntime, pillow and tokenizers.
"""

from __future__ import annotations

import logging

from .captioner import Caption, Captioner, default_bundle_dir
from .errors import BundleError, EdgecapError, ImageError, OptionsError, UnsupportedModelError
from .options import GenerationOptions

__version__ = "0.1.0"
__all__ = [
    "Caption",
    "Captioner",
    "GenerationOptions",
    "EdgecapError",
    "BundleError",
    "ImageError",
    "OptionsError",
    "UnsupportedModelError",
    "default_bundle_dir",
    "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
