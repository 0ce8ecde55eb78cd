"""PDF pages as images, rendered with pypdfium2 (the `pdf` extra), as Nougat's own tools render them.

Nougat's ``predict.py`` rasterizes each page with pypdfium2 at 96 dpi (``nougat/dataset/rasterize.py``:
``scale=dpi / 72``) and captions the RGB image; edgecap does the same, one record per page, named
``paper.pdf#page=3`` (pages count from 1, as in a PDF viewer's URL). That name is also accepted as an
input, to caption one page.

pypdfium2 is imported only when a PDF is opened, so the runtime needs it only for PDF input. It is
not thread-safe: a document is opened, read and closed by one caller at a time.
"""

from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Iterator

from PIL import Image

from .errors import ImageError
from .extras import install_command

PDF_EXTENSIONS = {".pdf"}
NOUGAT_DPI = 96  # nougat/dataset/rasterize.py: rasterize_paper(dpi=96), what predict.py feeds the model
_PAGE_REF = re.compile(r"^(?P<file>.+\.pdf)#page=(?P<page>[1-9][0-9]*)$", re.IGNORECASE)


def is_pdf(path: str | os.PathLike[str]) -> bool:
    return os.path.splitext(os.fspath(path))[1].lower() in PDF_EXTENSIONS


def page_name(path: str, page: int) -> str:
    """The record name of a page: ``paper.pdf#page=3``."""
    return f"{path}#page={page}"


def split_page_name(name: str) -> tuple[str, int] | None:
    """(file, page) of a ``paper.pdf#page=3`` name, None for any other name."""
    found = _PAGE_REF.match(name)
    return (found.group("file"), int(found.group("page"))) if found else None


@contextmanager
def _document(path: str) -> Iterator[object]:
    try:
        import pypdfium2 as pdfium
    except ImportError:
        raise ImageError(path, f"PDF input needs pypdfium2: {install_command('pdf')}") from None
    try:
        document = pdfium.PdfDocument(path)
    except FileNotFoundError:
        raise ImageError(path, "file not found") from None
    except PermissionError:
        raise ImageError(path, "permission denied") from None
    except Exception as exc:  # noqa: BLE001 - pypdfium2 raises PdfiumError (and OSError) for bad files
        raise ImageError(path, f"not a readable PDF (pypdfium2: {' '.join(str(exc).split()) or type(exc).__name__})") from None
    try:
        yield document
    finally:
        document.close()


def page_count(path: str) -> int:
    """Pages in the PDF at `path`; ImageError (one line naming it) when it cannot be read."""
    with _document(path) as document:
        count = len(document)  # type: ignore[arg-type]
    if count == 0:
        raise ImageError(path, "PDF has no pages")
    return count


def render_page(path: str, page: int, dpi: float = NOUGAT_DPI) -> Image.Image:
    """Page `page` (1-based) of the PDF at `path` as an RGB image at `dpi` (white background)."""
    with _document(path) as document:
        count = len(document)  # type: ignore[arg-type]
        if not 1 <= page <= count:
            raise ImageError(page_name(path, page), f"no such page: the PDF has {count} page{'s' * (count != 1)}")
        pdf_page = document[page - 1]  # type: ignore[index]
        try:
            scale = dpi / 72
            width, height = pdf_page.get_size()
            pixels = int(width * scale) * int(height * scale)
            if Image.MAX_IMAGE_PIXELS is not None and pixels > Image.MAX_IMAGE_PIXELS:
                raise ImageError(page_name(path, page),
                                 f"page renders to {pixels} pixels at {dpi:g} dpi, more than the limit of "
                                 f"{Image.MAX_IMAGE_PIXELS} (PIL.Image.MAX_IMAGE_PIXELS); refusing a possible "
                                 "decompression bomb")
            try:
                return pdf_page.render(scale=scale).to_pil().convert("RGB")
            except Exception as exc:  # noqa: BLE001 - a page pdfium cannot draw is this page's problem
                raise ImageError(page_name(path, page), f"cannot render this page ({exc})") from None
        finally:
            pdf_page.close()
