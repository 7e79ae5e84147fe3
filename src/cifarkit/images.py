"""Turn any common picture into the 32x32 RGB uint8 array a CIFAR model takes.

The steps, which the TypeScript library (sharp in Node.js) and the browser page reproduce (see web/): apply the
EXIF orientation; bring any mode to 8-bit RGB (16-bit samples keep their high byte, as sharp does and as Pillow
reads 16-bit RGB; transparency composited onto white; greyscale and palettes expanded); convert a picture that
carries an ICC colour profile (most phone photos: Display P3) to sRGB with it, perceptual intent, as sharp
does; resize the whole picture (no crop) to 32x32 with PIL's antialiased bilinear filter.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageOps, UnidentifiedImageError

from cifarkit.errors import ImageError
from cifarkit.files import read_bounded

SIZE = 32
RESAMPLE = Image.Resampling.BILINEAR  # antialiased when shrinking: PIL widens the filter by the scale factor
MAX_PIXELS = 40_000_000  # refuse larger pictures before decoding them (decompression bombs)
MAX_FILE_BYTES = 256 << 20  # and larger files before reading them (a 40-megapixel TIFF is about 120 MB)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


# Modes whose conversion to 8-bit RGB has no single right answer: Pillow's CMYK formula ignores colour
# profiles (sharp applies them), its LAB mode is converted as if it were RGB, and float samples have no agreed
# 0-255 range. Refused (here and in the TypeScript library, with the same words) rather than converted
# differently by the two.
UNCONVERTED_MODES = {"CMYK": "CMYK pictures are not converted (sharp and Pillow turn them into different RGB); "
                             "convert it to RGB first",
                     "LAB": "LAB pictures are not converted (sharp and Pillow turn them into different RGB); "
                            "convert it to RGB first",
                     "F": "floating-point pictures are not converted (no agreed 0-255 range); convert it to 8 or "
                          "16 bits first"}


SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def to_srgb(image: Image.Image) -> Image.Image:
    """An RGB(A) picture with an embedded ICC profile, converted to sRGB with it (perceptual intent: what sharp
    does, so that Python and Node.js see the same colours); untouched without a profile. A profile that cannot
    be used is ignored, as sharp ignores it ("Invalid embedded profile")."""
    icc = image.info.get("icc_profile")
    if not icc or image.mode not in ("RGB", "RGBA"):
        return image
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        rgb = ImageCms.profileToProfile(image.convert("RGB"), source, SRGB,
                                        renderingIntent=ImageCms.Intent.PERCEPTUAL, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError):
        return image
    if image.mode == "RGBA":  # the colours change, the transparency does not
        rgb.putalpha(image.getchannel("A"))
    return rgb


def to_rgb8(image: Image.Image) -> Image.Image:
    if image.mode in UNCONVERTED_MODES:
        raise ImageError(UNCONVERTED_MODES[image.mode])
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.int64)
        if image.mode.startswith("I;16"):
            array = array >> 8  # the high byte, as sharp (libvips) reduces 16-bit grey
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    image = to_srgb(image)
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def _centre_square(image: Image.Image) -> Image.Image:
    """The largest centred square (left/top offsets rounded down): the picture's shape kept, its edges lost."""
    side = min(image.size)
    left, top = (image.width - side) // 2, (image.height - side) // 2
    return image.crop((left, top, left + side, top + side))


# How a picture becomes square before it is resized to 32x32 (the TypeScript library has the same registry):
# "squash" resizes the whole picture (its shape distorted), "crop" keeps its centre square (its edges lost).
FITS = {"squash": lambda image: image, "crop": _centre_square}
DEFAULT_FIT = "squash"


def fit_and_resize(image: Image.Image, fit: str = DEFAULT_FIT) -> np.ndarray:
    """An RGB picture as the 32x32x3 uint8 array the model takes."""
    if fit not in FITS:
        raise ImageError(f"fit must be one of {', '.join(FITS)}, got {fit!r}")
    return np.asarray(FITS[fit](image).resize((SIZE, SIZE), RESAMPLE), dtype=np.uint8).copy()


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS, fit: str = DEFAULT_FIT) -> np.ndarray:
    """A 32x32x3 uint8 array from an image file, or an ImageError saying why not."""
    path = Path(path)
    data = read_bounded(path, MAX_FILE_BYTES, ImageError, name=display_path(path))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size  # read from the header, before any decoding
                if width * height > max_pixels:
                    raise ImageError(f"{display_path(path)}: {width}x{height} pixels is over the limit of "
                                     f"{max_pixels:,} (a decompression bomb?); refusing to decode it")
                image = ImageOps.exif_transpose(image)
                try:
                    image = to_rgb8(image)
                except ImageError as e:
                    raise ImageError(f"{display_path(path)}: {e}") from None
                return fit_and_resize(image, fit)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(f"{display_path(path)}: not an image file (or a format Pillow cannot read)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"{display_path(path)}: refused as a possible decompression bomb ({e})") from None
    except OSError as e:  # the bytes are in memory already: an OS error here is Pillow's "damaged file"
        raise ImageError(f"{display_path(path)}: truncated or corrupt image ({e})") from None
    except (SyntaxError, ValueError) as e:
        raise ImageError(f"{display_path(path)}: truncated or corrupt image ({e})") from None


def as_model_pixels(picture, fit: str = DEFAULT_FIT) -> np.ndarray:
    """A 32x32x3 uint8 array from a file path, a PIL image, or a uint8 HxWx3 (or HxW) array of any size: the
    same steps as `load_image` (a 32x32 RGB array is used as it is)."""
    if isinstance(picture, (str, Path)):
        return load_image(picture, fit=fit)
    if isinstance(picture, Image.Image):
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if picture.width * picture.height > MAX_PIXELS:
                raise ImageError(f"a {picture.width}x{picture.height} picture is over the limit of "
                                 f"{MAX_PIXELS:,} pixels")
            return fit_and_resize(to_rgb8(ImageOps.exif_transpose(picture)), fit)
    if isinstance(picture, np.ndarray):
        if picture.dtype != np.uint8 or picture.ndim not in (2, 3) or (picture.ndim == 3 and picture.shape[2] not in
                                                                        (1, 3, 4)):
            raise ImageError(f"an array picture must be uint8 HxWx3 (or HxW, HxWx1, HxWx4); got {picture.dtype} "
                             f"{picture.shape}")
        if picture.shape[:2] == (SIZE, SIZE) and picture.ndim == 3 and picture.shape[2] == 3:
            return np.ascontiguousarray(picture)
        return as_model_pixels(Image.fromarray(picture.squeeze(-1) if picture.ndim == 3 and picture.shape[2] == 1
                                               else picture), fit)
    raise ImageError(f"cannot classify a {type(picture).__name__}: pass a file path, a PIL image or a uint8 array")


def display_path(path: str | Path) -> str:
    """A file name that can always be printed: bytes that are not UTF-8 (possible in POSIX names) are shown as
    \\xNN escapes instead of making every later print fail."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def expand_paths(paths: list[str | Path]) -> list[tuple[Path, str | None]]:
    """(path, None) for files as given and for the image files under folders (sorted, recursively);
    (path, why) for a folder, or a folder inside one, that cannot be read -- reported, never skipped.

    The walk keeps its own stack (os.walk recurses on Python 3.11: a tree deeper than about 1,000 folders
    raised RecursionError) and does not follow links to folders (a link loop would never end)."""
    out: list[tuple[Path, str | None]] = []
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            out.append((path, None))
            continue
        found: list[tuple[Path, str | None]] = []
        pending = [path]
        while pending:
            folder = pending.pop()
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        if entry.is_dir(follow_symlinks=False):
                            pending.append(Path(entry.path))
                        elif Path(entry.name).suffix.lower() in IMAGE_SUFFIXES:
                            found.append((Path(entry.path), None))
            except OSError as error:
                reason = "permission denied" if isinstance(error, PermissionError) else error.strerror or str(error)
                found.append((folder, f"{display_path(folder)}: cannot read this folder ({reason})"))
        out.extend(sorted(found, key=lambda item: os.fsencode(item[0])))
    return out
