"""The headless-Chromium page check (tests/browser.py) on small pages with planted faults.

Every fault the check exists for is planted once and must be reported: console errors, thrown
exceptions, a figure whose image does not decode, a request to the network, a link to a missing
id; a good page must pass, and screenshots are checked pixel by pixel against images placed at
known positions (beyond the first viewport too).

Needs Debian's ``chromium``. Without it these tests are skipped with the install command, except
where RD_REQUIRE_BROWSER=1 (set it in CI): there a missing browser is a failure.
"""

from __future__ import annotations

import base64
import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import browser
import numpy as np
import pytest
from PIL import Image

HERE = Path(__file__).resolve().parent
WIDTH = 800


def solid_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour RGB PNG, encoded here so the pixels are known exactly."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    row = b"\x00" + bytes(rgb) * width
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


RED = data_uri(solid_png(40, 30, (255, 0, 0)))
BLUE = data_uri(solid_png(50, 20, (0, 0, 255)))
GREEN = data_uri(solid_png(16, 16, (0, 160, 0)))


def page(tmp_path: Path, body: str, name: str = "page.html", head: str = "") -> Path:
    path = tmp_path / name
    path.write_text(
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>t</title>"
        "<style>body{margin:0} figure{margin:0} img{display:block}</style>"
        f"{head}</head><body>{body}</body></html>"
    )
    return path


GOOD_BODY = (
    "<nav><a href='#one'>one</a><a href='#two'>two</a></nav>"
    "<script>console.log('an ordinary log line is not a problem')</script>"
    f"<h2 id='one'>One</h2><figure id='one--red'><img alt='red' src='{RED}'></figure>"
    f"<figure id='one--blue'><img alt='blue' src='{BLUE}'></figure>"
    f"<h2 id='two'>Two</h2><p>text</p><img alt='loose' src='{GREEN}'>"
    # Beyond the first 900 px viewport: the full-page screenshot must still show it.
    f"<div style='height:2600px'></div>"
    f"<img alt='far' src='{RED}' style='position:absolute;left:100px;top:2500px'>"
)


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """One browser for the module (each page opens in its own tab)."""
    reason = browser.unavailable_reason()
    if reason:
        if os.environ.get("RD_REQUIRE_BROWSER") == "1":
            pytest.fail(f"RD_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)
    with browser.Browser(width=WIDTH) as instance:
        yield instance


def test_good_page_passes_and_full_page_screenshot_shows_every_image(chromium, tmp_path):
    shot = tmp_path / "shot.png"
    report = chromium.inspect(page(tmp_path, GOOD_BODY), shot)

    assert report.problems(["one--red", "one--blue"], warnings=True) == [], report.summary()
    assert report.figure_ids == ["one--red", "one--blue"]
    red, blue = report.figures
    assert red.rendered and red.natural_size == (40, 30) and red.size == (40, 30)
    assert blue.rendered and blue.natural_size == (50, 20) and blue.size == (50, 20)
    assert [i.rendered for i in report.images] == [True, True]  # the loose ones, outside figures
    assert report.page_size[1] >= 2600 and not report.screenshot_truncated

    # A real PNG, as wide as the viewport and as tall as the page.
    assert browser.png_size(shot) == report.screenshot_size == (WIDTH, report.page_size[1])
    with Image.open(shot) as image:
        image.load()
        pixels = image.convert("RGB")
    assert pixels.size == (WIDTH, report.page_size[1])
    assert pixels.getpixel((110, 2510)) == (255, 0, 0)  # the image placed beyond the viewport
    assert pixels.getpixel((300, 2510)) == (255, 255, 255)


def test_console_errors_exceptions_and_late_warnings_are_caught(chromium, tmp_path):
    body = (
        "<script>console.error('planted console error', 42)</script>"
        "<script>throw new Error('planted exception')</script>"
        "<script>setTimeout(() => console.warn('planted late warning'), 50)</script>"
        f"<figure id='f'><img src='{RED}'></figure>"
    )
    report = chromium.inspect(page(tmp_path, body), None)

    errors = [m.text for m in report.errors]
    assert any("planted console error 42" in t for t in errors), errors
    assert any("planted exception" in t for t in errors), errors
    assert {m.source for m in report.errors} == {"console", "exception"}
    assert len(report.errors) == 2  # each reported once, not again through the Log domain
    assert [m.text for m in report.warnings] == ["planted late warning"]
    problems = report.problems()
    assert len(problems) == 2 and all(p.startswith("console error") for p in problems)
    assert len(report.problems(warnings=True)) == 3
    assert [f.rendered for f in report.figures] == [True]


def test_figure_that_does_not_decode_or_show_is_reported(chromium, tmp_path):
    body = (
        f"<figure id='ok'><img src='{RED}'></figure>"
        "<figure id='corrupt'><img alt='x' src='data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAA'>"
        "</figure>"
        "<figure id='empty'><figcaption>no image at all</figcaption></figure>"
        f"<figure id='hidden'><img src='{BLUE}' style='display:none'></figure>"
        "<img id='loose' alt='y' src='data:image/png;base64,AAAA'>"
    )
    report = chromium.inspect(page(tmp_path, body), None)

    by_id = {f.name: f for f in report.figures}
    assert [f.name for f in report.figures if not f.rendered] == ["corrupt", "empty", "hidden"]
    assert not by_id["corrupt"].decoded and by_id["corrupt"].natural_size == (0, 0)
    assert by_id["empty"].n_images == 0
    assert by_id["hidden"].decoded and by_id["hidden"].size == (0, 0)  # decoded, not shown
    assert [i.rendered for i in report.images] == [False]
    assert report.images[0].name == "data:image/png;base64,AAAA"
    problems = report.problems()
    assert sum("not rendered" in p for p in problems) == 4, problems
    assert report.problems(["ok", "corrupt", "fig9"])[-1] == "figure 'fig9' missing"


def test_requests_to_the_network_are_reported_and_never_made(chromium, tmp_path):
    body = (
        f"<figure id='f'><img src='{RED}'></figure>"
        "<img alt='remote' src='http://example.com/plot.png'>"
        "<img alt='by ip' src='http://192.0.2.1/plot.png'>"
    )
    head = "<script src='https://cdn.example.org/lib.js'></script>"
    start = time.monotonic()
    report = chromium.inspect(page(tmp_path, body, head=head), None)

    assert time.monotonic() - start < 20  # failed at once, not after a network timeout
    assert sorted(report.external_requests) == [
        "http://192.0.2.1/plot.png",
        "http://example.com/plot.png",
        "https://cdn.example.org/lib.js",
    ]
    assert sum(p.startswith("network request to") for p in report.problems()) == 3
    assert [i.rendered for i in report.images] == [False, False]
    assert report.figures[0].rendered  # data: URIs are local and not reported


def test_links_to_missing_ids_and_duplicate_ids_are_reported(chromium, tmp_path):
    body = (
        "<nav><a href='#here'>ok</a><a href='#gone'>broken</a><a href='#'>top</a>"
        "<a href='#caf%C3%A9'>encoded</a><a href='other.html#x'>elsewhere</a></nav>"
        "<h2 id='here'>here</h2><h2 id='café'>café</h2>"
        "<p id='twice'>a</p><p id='twice'>b</p>"
    )
    report = chromium.inspect(page(tmp_path, body), None)

    assert report.broken_anchors == ["#gone"]
    assert report.duplicate_ids == ["twice"]
    assert report.problems() == [
        "link to '#gone': no element has that id",
        "id 'twice' used more than once",
    ]


def test_tall_page_screenshot_is_cut_and_says_so(chromium, tmp_path):
    path = page(tmp_path, "<div style='height:5000px;background:#eee'></div>")
    report = chromium.inspect(path, tmp_path / "tall.png", max_height=2000)
    assert report.page_size[1] == 5000
    assert report.screenshot_truncated and report.screenshot_size == (WIDTH, 2000)
    assert browser.png_size(tmp_path / "tall.png") == (WIDTH, 2000)
    assert "cut at" in report.summary()


def test_report_page_from_render_passes(chromium, tmp_path):
    """The real page builder: module sections with embedded figures and a table."""
    from residual_dynamics.report.page import Figure, ModuleSection, Table, render

    (tmp_path / "a.png").write_bytes(solid_png(60, 40, (255, 0, 0)))
    (tmp_path / "b.png").write_bytes(solid_png(30, 30, (0, 0, 255)))
    modules = [
        ModuleSection(
            title="Study A",
            anchor="study-a",
            intro="intro <i>html</i>",
            figures=[
                Figure(tmp_path / "a.png", "Panel A", "caption", "fig-a"),
                Figure(tmp_path / "b.png", "Panel B", "caption", "fig-b"),
            ],
            tables=[Table("numbers", ["x", "y"], [[1, 2.5]])],
        ),
        ModuleSection(title="Study B", anchor="study-b"),
    ]
    path = tmp_path / "index.html"
    path.write_text(render([], title="tiny report", config={"k": 1}, modules=modules))

    report = chromium.inspect(path, tmp_path / "index.png")
    expected = ["study-a--fig-a", "study-a--fig-b"]
    assert report.problems(expected, warnings=True) == [], report.summary()
    assert report.figure_ids == expected
    assert [f.natural_size for f in report.figures] == [(60, 40), (30, 30)]


def test_section_screenshot_is_the_element_or_the_heading_section(chromium, tmp_path):
    body = (
        "<h2 id='one' style='margin:0;height:50px'>One</h2>"
        f"<figure id='one--red'><img src='{RED}'></figure>"
        "<div style='height:100px'></div>"
        "<h2 id='two' style='margin:0'>Two</h2><div style='height:3000px'></div>"
        f"<figure id='two--blue'><img src='{BLUE}'></figure>"
    )
    path = page(tmp_path, body)

    # A figure far below the first viewport, captured exactly: the block as wide as the page,
    # the 50 x 20 image at its left, white beside it.
    assert chromium.screenshot_section(path, "two--blue", tmp_path / "blue.png") == (WIDTH, 20)
    with Image.open(tmp_path / "blue.png") as image:
        pixels = np.asarray(image.convert("RGB"))
    assert (pixels[:, :50] == (0, 0, 255)).all()
    assert (pixels[:, 50:] == 255).all()

    # A heading: its whole section, down to the next heading (50 + 30 + 100 px), full width.
    assert chromium.screenshot_section(path, "one", tmp_path / "one.png") == (WIDTH, 180)
    with Image.open(tmp_path / "one.png") as image:
        assert image.convert("RGB").getpixel((5, 60)) == (255, 0, 0)

    with pytest.raises(KeyError, match="no element with id 'nope'.*one--red"):
        chromium.screenshot_section(path, "nope", tmp_path / "nope.png")


def test_inspect_page_and_cli_start_and_stop_their_own_browser(chromium, tmp_path):
    good = page(tmp_path, GOOD_BODY, "good.html")
    report = browser.inspect_page(good, tmp_path / "good.png", width=640)
    assert report.problems() == [] and report.screenshot_size[0] == 640

    bad = page(tmp_path, "<script>console.error('cli planted')</script>", "bad.html")
    command = [sys.executable, str(HERE / "browser.py")]
    ok = subprocess.run(
        [
            *command,
            str(good),
            str(tmp_path / "cli.png"),
            "--width",
            "700",
            "--section",
            "one--red",
            str(tmp_path / "red.png"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "figures: 2 of 2 rendered" in ok.stdout and "section one--red" in ok.stdout
    assert browser.png_size(tmp_path / "cli.png")[0] == 700
    assert browser.png_size(tmp_path / "red.png") == (700, 30)  # the figure block, 30 px tall
    failed = subprocess.run(
        [*command, str(bad), str(tmp_path / "bad.png")], capture_output=True, text=True, timeout=120
    )
    assert failed.returncode == 1 and "PROBLEM: console error" in failed.stdout
    assert "cli planted" in failed.stdout


def test_browser_process_and_profile_are_removed_even_after_an_error(chromium, tmp_path):
    instance = browser.Browser(width=WIDTH)
    with pytest.raises(FileNotFoundError), instance:
        process, profile = instance._process, Path(instance._profile)
        assert process.poll() is None and profile.is_dir()
        instance.inspect(tmp_path / "does-not-exist.html", None)
    assert process.poll() is not None
    assert not profile.exists()


def test_missing_chromium_names_the_install_command(monkeypatch):
    monkeypatch.setenv("RD_CHROMIUM", "no-such-chromium-binary")
    assert browser.find_chromium() is None
    assert "apt-get install -y chromium chromium-driver" in browser.unavailable_reason()
    with pytest.raises(browser.BrowserError, match="apt-get install"):
        browser.Browser().start()
