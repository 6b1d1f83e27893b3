"""report.html: self-contained, and it renders in a real headless browser (Debian's chromium)."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from conftest import CORPORA, TOKENIZERS
from tokensurgeon.config import TransplantConfig
from tokensurgeon.report.html import BASE_COLOR, NEW_COLOR, PATCHED_COLOR
from tokensurgeon.pipeline.transplant import transplant

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def patched(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("html")
    text = root / "news.txt"
    text.write_text((CORPORA / "lee_news.txt").read_text(encoding="utf-8")[:1200], encoding="utf-8")
    out = root / "out"
    transplant(TransplantConfig(base=tiny_models["untied"], donor=TOKENIZERS / "llama3", out=out, eval_texts=(text,)))
    return out


def test_page_is_self_contained_and_complete(patched):
    page = (patched / "report.html").read_text(encoding="utf-8")
    for section in ("overlap", "bpb", "norms", "residuals", "warnings"):
        assert f'id="{section}"' in page
    assert "<script" not in page and not re.search(r'(src|href)\s*=', page)
    assert set(re.findall(r'https?://[^"\s]+', page)) == {"http://www.w3.org/2000/svg"}  # namespace only
    assert "number schemes differ" in page  # SmolLM2 single digits vs Llama-3 groups of three
    assert f'fill="{PATCHED_COLOR}"' in page and f'fill="{NEW_COLOR}"' in page
    # subword-mean rows are their pieces' mean: the residual panel says so instead of listing zeros
    assert "nothing was approximated" in page


def png_pixels(path: Path) -> tuple[int, int, list[bytes]]:
    """Decode an 8-bit RGB/RGBA non-interlaced PNG (what Chromium writes) into rows of pixel bytes."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and interlace == 0
    channels = 3 if color == 2 else 4
    raw, stride, rows, previous = zlib.decompress(idat), width * channels, [], bytes(width * channels)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, corner = previous[i], previous[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + left) & 255
            elif kind == 2:
                line[i] = (line[i] + up) & 255
            elif kind == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif kind == 4:
                p = left + up - corner
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - corner)
                line[i] = (line[i] + (left if pa <= pb and pa <= pc else up if pb <= pc else corner)) & 255
        previous = bytes(line)
        rows.append(bytes(line[j] for j in range(stride) if channels == 3 or j % 4 != 3))
    return width, height, rows


@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="headless browser test needs Debian's chromium package "
                                                         "(apt-get install chromium; scripts/setup.sh tries)")
def test_renders_in_headless_chromium(patched, tmp_path):
    url = (patched / "report.html").resolve().as_uri()
    command = [CHROMIUM, *HEADLESS, f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(command + ["--dump-dom", url], capture_output=True, text=True, timeout=120).stdout
    assert "Bits per byte, before and after" in dom and dom.count("<svg") >= 3
    shot = tmp_path / "report.png"
    subprocess.run(command + [f"--screenshot={shot}", "--window-size=1200,2000", url], capture_output=True,
                   timeout=120, check=True)
    width, height, rows = png_pixels(shot)
    assert (width, height) == (1200, 2000)
    counts: dict[bytes, int] = {}
    for row in rows[::2]:
        for x in range(0, len(row), 6):  # every other pixel of every other row
            counts[row[x:x + 3]] = counts.get(row[x:x + 3], 0) + 1
    assert len(counts) > 50  # text and charts, not a blank or single-colour page
    for color in (BASE_COLOR, PATCHED_COLOR):  # the bar chart's two series are on screen
        assert counts.get(bytes.fromhex(color[1:]), 0) > 100, color


def test_headline_ratio_is_the_geometric_mean_compare_ranks_by(patched):
    """x2 on one text and x0.5 on another: compare calls that 1.000; so must the page (arithmetic: 1.250)."""
    import json

    from tokensurgeon.evaluation.rows import EvalRow
    from tokensurgeon.report.html import render_html
    from tokensurgeon.report.models import TransplantReport

    report = TransplantReport(**json.loads((patched / "report.json").read_text()))
    report.evaluation = [EvalRow(name, 100, 1.0, ratio, ratio, 3.0, 3.0, 0.1, 0.9)
                         for name, ratio in (("a", 2.0), ("b", 0.5))]
    page = render_html(report)
    assert "<b>1.000</b><span>bpb ratio, patched / base (geometric mean" in page and "1.250" not in page
