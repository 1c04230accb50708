"""Photos in, pictures out: read any photo as RGB, write label maps, overlays with a legend and cut-outs."""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError
from skimage.segmentation import find_boundaries

from fashionseg.core.errors import DataError

PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif")
FORMATS = "JPEG, PNG, BMP, TIFF, WebP or GIF"
EMPTY = "{name} is empty (0 bytes); give a JPEG or PNG photo."
VOID_COLOUR = (224, 224, 224)  # label values beyond the classes (the ignore label) in overlays
ORIENTATION = 0x0112  # the EXIF tag
BOUNDARY_COLOUR = (255, 255, 0)  # class boundaries drawn on overlays: yellow shows on skin, cloth and sky


class ImageTooLargeError(DataError):
    """A photo has more pixels than the configured limit (checked before decoding)."""


def read_photo(source: str | Path | bytes, name: str | None = None, max_pixels: int | None = None) -> np.ndarray:
    """Decode a photo (path or bytes) to RGB uint8 (H, W, 3), upright as its EXIF orientation says.

    Grayscale, palette, CMYK and 16-bit photos are converted; transparent ones are laid on white.
    ``max_pixels`` is checked against the size in the file's header, before any pixel is decoded.
    Raises ``DataError`` naming the file when it is empty, missing, not an image or truncated, and
    ``ImageTooLargeError`` when it has more than ``max_pixels`` pixels.
    """
    name = name or (str(source) if not isinstance(source, bytes) else "upload")
    if isinstance(source, bytes) and not source:
        raise DataError(EMPTY.format(name=name))
    if not isinstance(source, bytes):
        path = Path(source)
        if path.is_symlink() and not path.exists():
            raise DataError(f"{name} is a broken link (to {path.readlink()}); restore its target or remove it.")
        if path.is_file() and path.stat().st_size == 0:
            raise DataError(EMPTY.format(name=name))
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            pixels = im.width * im.height
            if max_pixels is not None and pixels > max_pixels:
                raise ImageTooLargeError(
                    f"{name} is {im.width}x{im.height} = {pixels / 1e6:.3g} MP; the limit is {max_pixels / 1e6:g} MP. "
                    "Resize it first."
                )
            im.load()
            im = ImageOps.exif_transpose(im)
            return to_rgb(im)
    except DataError:
        raise
    except FileNotFoundError as e:
        raise DataError(f"Photo {name} does not exist.") from e
    except Image.DecompressionBombError as e:
        raise ImageTooLargeError(f"{name} is too large to decode safely ({e}); resize it first.") from e
    except UnidentifiedImageError as e:  # its message holds Python's repr of the buffer, not the file name
        raise DataError(f"Cannot read {name} as an image: it is not a {FORMATS} file, or it is damaged.") from e
    except (OSError, SyntaxError, ValueError) as e:
        raise DataError(f"Cannot read {name} as an image ({e}); give a {FORMATS} photo.") from e


def exif_orientation(path: str | Path) -> int | None:
    """The EXIF Orientation tag of a photo file (1: upright; 3: 180 degrees; 6 and 8: quarter turns), or None."""
    try:
        with Image.open(path) as im:
            return im.getexif().get(ORIENTATION)
    except (OSError, SyntaxError, ValueError):
        return None


def to_rgb(im: Image.Image) -> np.ndarray:
    """Any PIL mode to RGB uint8: alpha composited on white, 16/32-bit scaled to 8 bits."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = np.zeros_like(a) if hi <= lo else (a - lo) / (hi - lo) * 255
        im = Image.fromarray(a.round().astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(white, rgba)
    return np.array(im.convert("RGB"))


def list_photos(path: str | Path) -> list[Path]:
    """A photo file, or the photos in a folder (sorted, by suffix, not recursive). Hidden files (``._0001.jpg``,
    which macOS writes beside every photo on a foreign disk) are not photos."""
    path = Path(path)
    if path.is_file() or path.is_symlink():
        return [path]
    if path.is_dir():
        # Broken links are listed too, so that they are reported rather than skipped in silence.
        return sorted(p for p in path.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES
                      and not p.name.startswith(".") and (p.is_file() or p.is_symlink()))
    raise DataError(f"Input {path} does not exist; give a photo or a folder of photos.")


def write_atomic(path: str | Path, write: Callable[[BinaryIO], None], fsync: bool = False) -> Path:
    """Write a file all at once: ``write(f)`` fills a hidden temporary file in the same folder
    (``.<name>.<random>.tmp``), which is then renamed over ``path``. A kill at any moment leaves the old file or
    the new one, never a truncated one; ``fsync``: flushed to disk before the rename (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_atomic(im: Image.Image, path: str | Path, **options) -> Path:
    """Save a picture under ``path`` all at once (``write_atomic``), in the format its suffix names."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower(), "PNG")
    return write_atomic(path, lambda f: im.save(f, format=fmt, **options))


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files of ``write_atomic`` (pictures, checkpoints) that a killed process left in
    ``folder``: never a complete file, since a write renames its temporary over the target only once it is whole."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def label_image(label: np.ndarray, palette: np.ndarray) -> Image.Image:
    """A palette ('P') PNG whose pixel values are the class indices and whose colours are the palette."""
    im = Image.fromarray(label.astype(np.uint8), "P")
    flat = np.zeros((256, 3), np.uint8)
    flat[: len(palette)] = palette
    im.putpalette(flat.ravel().tolist())
    return im


def class_boundaries(label: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels where the class changes (scikit-image's inner outline: a class's side of an edge
    with the background, both sides of an edge between two classes)."""
    return find_boundaries(label, connectivity=1, mode="inner")


def overlay(image: np.ndarray, label: np.ndarray, palette: np.ndarray, class_names: Sequence[str],
            opacity: float = 0.5, legend: bool = True, boundaries: bool = False) -> Image.Image:
    """The photo with class colours blended in (background left as is), and a legend of the classes present.
    Label values beyond the palette (the ignore label of a ground-truth map) are drawn light grey.
    ``boundaries``: also draw the class boundaries as thin lines in BOUNDARY_COLOUR."""
    if image.shape[:2] != label.shape:
        raise ValueError(f"Photo size {image.shape[:2]} and label size {label.shape} differ.")
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must lie in [0, 1], got {opacity}.")
    palette = np.asarray(palette)
    void = label >= len(palette)  # e.g. the ignore label of a ground-truth map: drawn in VOID_COLOUR
    colours = palette[np.where(void, 0, label)].astype(np.float32)
    colours[void] = VOID_COLOUR
    blend = image.astype(np.float32)
    fg = label > 0
    blend[fg] = (1 - opacity) * blend[fg] + opacity * colours[fg]
    if boundaries:
        blend[class_boundaries(label)] = BOUNDARY_COLOUR
    out = Image.fromarray(blend.round().astype(np.uint8), "RGB")
    return add_legend(out, palette, class_names, present=np.unique(label)) if legend else out


def add_legend(im: Image.Image, palette: np.ndarray, class_names: Sequence[str],
               present: Sequence[int] | None = None) -> Image.Image:
    """Append a legend column to the right of ``im``: a swatch and a name per class (present ones first)."""
    font = ImageFont.load_default()
    row, pad = 18, 6
    order = list(range(len(class_names)))
    width = pad * 3 + 14 + max(int(font.getlength(n)) for n in class_names) + 30
    canvas = Image.new("RGB", (im.width + width, max(im.height, pad * 2 + row * len(order))), (255, 255, 255))
    canvas.paste(im, (0, 0))
    draw = ImageDraw.Draw(canvas)
    present = set(int(p) for p in (present if present is not None else order))
    for j, k in enumerate(order):
        y, x = pad + j * row, im.width + pad
        draw.rectangle([x, y, x + 14, y + 14], fill=tuple(int(c) for c in palette[k]), outline=(0, 0, 0))
        text = class_names[k] + ("" if k in present else " (none)")
        draw.text((x + 14 + pad, y + 1), text, fill=(0, 0, 0) if k in present else (150, 150, 150), font=font)
    return canvas


def cutout(image: np.ndarray, foreground: np.ndarray) -> Image.Image:
    """RGBA cut-out: the photo with alpha = foreground probability (H, W) in [0, 1] or a boolean mask."""
    if image.shape[:2] != foreground.shape:
        raise ValueError(f"Photo size {image.shape[:2]} and mask size {foreground.shape} differ.")
    alpha = (np.clip(foreground.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(np.dstack([image, alpha]), "RGBA")


def default_palette(k: int) -> list[list[int]]:
    """PASCAL VOC's colour map: distinct colours for any number of classes."""
    palette = []
    for i in range(k):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette.append([r, g, b])
    return palette
