"""A real ICC colour profile written by the tests themselves: a matrix/TRC RGB profile (ICC v2) with Display P3's
primaries and a gamma curve -- the kind most phone photos carry -- so that colour management is tested on what
users send without shipping a profile file."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image

# Display P3 primaries and white, adapted to the ICC's D50 connection space (Bradford), as in Apple's profile
DISPLAY_P3 = {"rXYZ": (0.5151, 0.2412, -0.0011), "gXYZ": (0.2920, 0.6922, 0.0419), "bXYZ": (0.1571, 0.0666, 0.7841)}
D50 = (0.9642, 1.0, 0.8249)


def _s15(value: float) -> bytes:
    return struct.pack(">i", round(value * 65536))


def _xyz(xyz: tuple[float, float, float]) -> bytes:
    return b"XYZ " + bytes(4) + b"".join(_s15(v) for v in xyz)


def _text(text: str) -> bytes:  # 'desc' (v2 textDescriptionType): ASCII part only
    ascii_ = text.encode("ascii") + b"\0"
    return b"desc" + bytes(4) + struct.pack(">I", len(ascii_)) + ascii_ + bytes(4 + 4 + 2 + 1 + 67)


def _curve(gamma: float) -> bytes:
    return b"curv" + bytes(4) + struct.pack(">IH", 1, round(gamma * 256)) + bytes(2)


def display_p3_like(gamma: float = 2.2) -> bytes:
    tags = {"desc": _text("cifarkit test P3"), "wtpt": _xyz(D50), "cprt": b"text" + bytes(4) + b"none\0\0\0\0",
            **{k: _xyz(v) for k, v in DISPLAY_P3.items()},
            "rTRC": _curve(gamma), "gTRC": _curve(gamma), "bTRC": _curve(gamma)}
    table, body, offset = [], b"", 128 + 4 + 12 * len(tags)
    for signature, data in tags.items():
        data += bytes(-len(data) % 4)
        table.append(struct.pack(">4sII", signature.encode(), offset + len(body), len(data)))
        body += data
    size = offset + len(body)
    header = (struct.pack(">I", size) + b"lcms" + struct.pack(">I", 0x02100000) + b"mntrRGB XYZ "
              + struct.pack(">6H", 2026, 1, 1, 0, 0, 0) + b"acspAPPL" + bytes(4) + b"none" + bytes(4)
              + bytes(8) + struct.pack(">I", 0) + b"".join(_s15(v) for v in D50) + b"lcms" + bytes(44))
    assert len(header) == 128
    return header + struct.pack(">I", len(tags)) + b"".join(table) + body


def add_colour_managed_pictures(folder: Path, images: np.ndarray) -> list[Path]:
    """Pictures whose colours need a decision: Display P3-tagged PNG and JPEG (most phone photos), an RGBA one,
    and 16-bit greyscale with values that are not multiples of 257 (the sizes a picture of one level differs)."""
    icc = display_p3_like()
    made = [folder / "p3.png", folder / "p3.jpg", folder / "p3-rgba.png", folder / "grey16.png"]
    Image.fromarray(images[0]).resize((96, 72)).save(made[0], icc_profile=icc)
    Image.fromarray(images[1]).resize((90, 90)).save(made[1], icc_profile=icc, quality=92)
    rgba = np.asarray(Image.fromarray(images[2]).resize((64, 64)).convert("RGBA")).copy()
    rgba[:, :20, 3] = 90
    Image.fromarray(rgba).save(made[2], icc_profile=icc)
    grey = np.asarray(Image.fromarray(images[3]).convert("L").resize((48, 40)), dtype=np.uint16) * 256
    Image.fromarray(grey + np.uint16(131)).save(made[3])  # low bytes that a 1/257 scale would round up
    return made
