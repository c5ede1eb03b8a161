"""Open an HTML page in a real headless Chromium and report what a reader would get.

``inspect_page`` loads a file:// page and returns a ``PageReport``: console errors and warnings
(``console.error``/``console.warn``, uncaught JS exceptions, browser-side errors such as a failed
resource load), every ``<figure>`` with whether its ``<img>`` decoded and the size it was laid out
at, every ``<img>`` outside a figure likewise, in-page links (``href='#x'``) with no element
``id='x'``, duplicate ids, and every request to a URL that is not file:, data:, blob: or about:
(the report must need no network). It also writes a full-page PNG screenshot.
``screenshot_section`` captures one element (a figure, or a heading's whole section).

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (JSON messages
separated by NUL bytes on file descriptors 3 and 4): no Python dependency, no chromedriver, no
port, nothing that could fetch a driver from the network. It needs Debian's ``chromium``
(``apt-get install chromium chromium-driver``; the driver is not used here but CI installs both).
Network requests are sent to a closed local proxy and every host name fails to resolve, so a page
that asks for a remote resource fails fast and the request is reported, never made.

Command line: ``python tests/browser.py PAGE.html OUT.png [--width 1280] [--section ID OUT2.png]``
prints the report and writes the screenshot; exit status 1 when the page has a problem.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import json
import os
import queue
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = (
    "install Debian's Chromium: "
    "sudo DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver"
)
# Chromium cannot composite a capture much taller than its 16384 px maximum texture size: a
# full-page screenshot is cut to this height (PageReport.screenshot_truncated says so).
MAX_SCREENSHOT_HEIGHT = 16000
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:")
CHROMIUM_NAMES = ("chromium", "chromium-browser")


class BrowserError(RuntimeError):
    """Chromium is missing, died, or a DevTools command failed."""


def find_chromium() -> str | None:
    """The Chromium executable: $RD_CHROMIUM if set, else ``chromium`` on PATH."""
    override = os.environ.get("RD_CHROMIUM")
    if override:
        return shutil.which(override)
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def unavailable_reason() -> str | None:
    """Why no browser check can run here, or None when Chromium is installed."""
    if find_chromium() is None:
        override = os.environ.get("RD_CHROMIUM")
        looked = f"RD_CHROMIUM={override}" if override else ", ".join(CHROMIUM_NAMES)
        return f"no Chromium on PATH ({looked}); {INSTALL_HINT}"
    return None


@dataclass
class ConsoleMessage:
    level: str  # "error" or "warning"
    source: str  # "console", "exception", or the browser's source ("network", "security", ...)
    text: str
    url: str = ""

    def __str__(self) -> str:
        where = f" ({self.url})" if self.url and not self.url.startswith("data:") else ""
        return f"{self.level} [{self.source}] {self.text}{where}"


@dataclass
class ImageCheck:
    """One figure (``name`` = its id) or one loose ``<img>`` (``name`` = its src, shortened)."""

    name: str
    n_images: int
    decoded: bool  # every img: complete and naturalWidth > 0
    natural_size: tuple[int, int]  # of the first img, in image pixels
    size: tuple[float, float]  # smallest laid-out width and height over its imgs, in CSS pixels

    @property
    def rendered(self) -> bool:
        """Decoded and laid out with a visible area (an img in a closed <details> is not)."""
        return self.n_images > 0 and self.decoded and self.size[0] > 0 and self.size[1] > 0


@dataclass
class PageReport:
    url: str
    title: str
    console: list[ConsoleMessage]
    figures: list[ImageCheck]
    images: list[ImageCheck]
    broken_anchors: list[str]
    duplicate_ids: list[str]
    external_requests: list[str]
    page_size: tuple[int, int]  # CSS pixels (document width, height)
    seconds: float  # navigation until every image decoded
    viewport_width: int = 0
    screenshot: Path | None = None
    screenshot_size: tuple[int, int] | None = None
    screenshot_truncated: bool = False
    stats: dict = field(default_factory=dict)

    @property
    def errors(self) -> list[ConsoleMessage]:
        return [m for m in self.console if m.level == "error"]

    @property
    def warnings(self) -> list[ConsoleMessage]:
        return [m for m in self.console if m.level == "warning"]

    @property
    def figure_ids(self) -> list[str]:
        return [f.name for f in self.figures]

    @property
    def overflow_px(self) -> int:
        """How far the page is wider than the viewport (a reader must scroll sideways)."""
        return max(0, self.page_size[0] - self.viewport_width)

    @property
    def unrendered(self) -> list[ImageCheck]:
        return [f for f in [*self.figures, *self.images] if not f.rendered]

    def missing_figures(self, expected) -> list[str]:
        present = set(self.figure_ids)
        return [name for name in expected if name not in present]

    def problems(self, expected_figures=(), *, warnings: bool = False) -> list[str]:
        """Everything wrong with the page, one line each; empty for a good page."""
        out = [f"console {m}" for m in self.errors]
        if warnings:
            out += [f"console {m}" for m in self.warnings]
        out += [
            f"figure {f.name!r} not rendered ({_describe(f)})"
            for f in self.figures
            if not f.rendered
        ]
        out += [
            f"img {f.name!r} not rendered ({_describe(f)})" for f in self.images if not f.rendered
        ]
        out += [f"figure {name!r} missing" for name in self.missing_figures(expected_figures)]
        out += [f"link to {a!r}: no element has that id" for a in self.broken_anchors]
        out += [f"id {i!r} used more than once" for i in self.duplicate_ids]
        out += [f"network request to {u}" for u in self.external_requests]
        return out

    def summary(self) -> str:
        lines = [
            f"{self.url}: {self.title!r}, {self.page_size[0]} x {self.page_size[1]} CSS px, "
            f"loaded in {self.seconds:.1f} s",
            f"figures: {sum(f.rendered for f in self.figures)} of {len(self.figures)} rendered; "
            f"other images: {sum(f.rendered for f in self.images)} of {len(self.images)}",
            f"console: {len(self.errors)} errors, {len(self.warnings)} warnings; "
            f"broken links: {len(self.broken_anchors)}; network requests: "
            f"{len(self.external_requests)}",
        ]
        if self.screenshot is not None:
            cut = f" (cut at {MAX_SCREENSHOT_HEIGHT} px)" if self.screenshot_truncated else ""
            lines.append(
                f"screenshot: {self.screenshot} {self.screenshot_size[0]} x "
                f"{self.screenshot_size[1]} px{cut}"
            )
        if self.overflow_px:
            lines.append(
                f"note: the page is {self.overflow_px} px wider than the {self.viewport_width} px "
                "viewport (something does not wrap)"
            )
        lines += [f"PROBLEM: {p}" for p in self.problems()]
        lines += [f"warning: {m}" for m in self.warnings]
        return "\n".join(lines)


def _describe(check: ImageCheck) -> str:
    if check.n_images == 0:
        return "no <img>"
    if not check.decoded:
        return "image did not decode"
    return f"laid out at {check.size[0]:.0f} x {check.size[1]:.0f} px"


def png_size(path: Path | str) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; raises ValueError when it is not a PNG."""
    head = Path(path).read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        raise ValueError(f"{path} is not a PNG")
    return struct.unpack(">II", head[16:24])


# Runs in the page after load: everything PageReport needs, as one JSON-able value.
_COLLECT_JS = r"""
(() => {
  const img = i => {
    const r = i.getBoundingClientRect();
    // Shortened here: returning the page's base64 figures by value would cost seconds.
    const s = i.currentSrc || i.getAttribute('src') || '';
    return {src: s.length > 80 ? `${s.slice(0, 60)}... (${s.length} chars)` : s, complete: i.complete,
            nw: i.naturalWidth, nh: i.naturalHeight, w: r.width, h: r.height};
  };
  const figures = Array.from(document.querySelectorAll('figure'), (f, k) => ({
    id: f.id || `figure[${k}] (no id)`, images: Array.from(f.querySelectorAll('img'), img)}));
  const loose = Array.from(document.images).filter(i => !i.closest('figure')).map(img);
  const target = h => { try { return document.getElementById(decodeURIComponent(h)); }
                        catch (e) { return null; } };
  const broken = Array.from(document.querySelectorAll('a[href^="#"]'), a => a.getAttribute('href'))
    .filter(h => h.length > 1 && !target(h.slice(1)));
  const counts = new Map();
  document.querySelectorAll('[id]').forEach(e => counts.set(e.id, (counts.get(e.id) || 0) + 1));
  const root = document.documentElement, body = document.body || root;
  return {title: document.title, figures, images: loose, broken,
          duplicates: [...counts].filter(([, n]) => n > 1).map(([id]) => id),
          width: Math.ceil(Math.max(root.scrollWidth, body.scrollWidth)),
          height: Math.ceil(Math.max(root.scrollHeight, body.scrollHeight))};
})()
"""

_DECODE_JS = (
    "Promise.all(Array.from(document.images, i => i.decode().then(() => true, () => false)))"
)

# Page coordinates of an element; for a heading, down to the next heading of the same or a
# higher level (its whole section), so a section's figures come with it.
_RECT_JS = r"""
((id) => {
  const e = document.getElementById(id);
  if (!e) return null;
  const r = e.getBoundingClientRect();
  const top = r.top + window.scrollY;
  let bottom = r.bottom + window.scrollY;
  const level = /^H([1-6])$/.exec(e.tagName);
  if (level) {
    const root = document.documentElement;
    bottom = Math.max(root.scrollHeight, document.body ? document.body.scrollHeight : 0);
    for (let n = e.nextElementSibling; n; n = n.nextElementSibling) {
      const m = /^H([1-6])$/.exec(n.tagName);
      if (m && Number(m[1]) <= Number(level[1])) {
        bottom = n.getBoundingClientRect().top + window.scrollY; break;
      }
    }
    return {x: 0, y: top, width: root.clientWidth, height: bottom - top};
  }
  return {x: r.left + window.scrollX, y: top, width: r.width, height: r.height};
})
"""


class Browser:
    """One headless Chromium, driven over the DevTools pipe; use as a context manager.

    Several pages can be inspected with one browser (each in a fresh tab); the process and its
    temporary profile are removed on exit, whatever happened.
    """

    def __init__(self, *, width: int = 1280, height: int = 900, timeout: float = 180.0):
        self.width, self.height, self.timeout = int(width), int(height), float(timeout)
        self._process: subprocess.Popen | None = None
        self._profile: str | None = None
        self._messages: queue.Queue = queue.Queue()
        self._events: list[dict] = []
        self._next_id = 0

    # -- process -------------------------------------------------------------------------------
    def __enter__(self) -> Browser:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self) -> None:
        executable = find_chromium()
        if executable is None:
            raise BrowserError(unavailable_reason())
        self._profile = tempfile.mkdtemp(prefix="rd-chromium-")
        self._stderr_path = Path(self._profile) / "stderr.txt"
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()

        def pipes_to_fds_3_and_4() -> None:
            # Moved above 10 first so that dup2 cannot overwrite one pipe with the other.
            read_end = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            write_end = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        args = [
            executable,
            "--headless=new",
            "--no-sandbox",  # root in CI and containers
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--remote-debugging-pipe",
            f"--user-data-dir={self._profile}",
            f"--window-size={self.width},{self.height}",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-extensions",
            "--disable-sync",
            "--hide-scrollbars",
            "--mute-audio",
            # The page must need no network: remote requests go to a closed local port and no
            # host name resolves, so they fail at once (and are reported), never leave the machine.
            "--proxy-server=http://127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "about:blank",
        ]
        with open(self._stderr_path, "wb") as stderr:
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                pass_fds=(3, 4),
                preexec_fn=pipes_to_fds_3_and_4,
                start_new_session=True,  # its own process group, so close() ends every child
            )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._out = os.fdopen(to_browser_w, "wb")
        self._reader = threading.Thread(
            target=self._read, args=(from_browser_r,), daemon=True, name="chromium-devtools"
        )
        self._reader.start()
        try:
            self.send("Browser.getVersion", timeout=60)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            try:
                if process.poll() is None:
                    with contextlib.suppress(BrowserError, OSError, ValueError):
                        self._write({"id": -1, "method": "Browser.close"})
                    try:
                        process.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        pass
            finally:
                # The renderer and zygote children share the process group: end them all.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=10)
                with contextlib.suppress(OSError):
                    self._out.close()
                self._reader.join(timeout=10)
        if self._profile is not None:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None

    def _read(self, fd: int) -> None:
        buffer = b""
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            while True:
                try:
                    chunk = pipe.read(1 << 20)
                except OSError:
                    chunk = b""
                if not chunk:
                    self._messages.put(None)
                    return
                buffer += chunk
                *complete, buffer = buffer.split(b"\0")
                for raw in complete:
                    self._messages.put(json.loads(raw))

    def _stderr_tail(self) -> str:
        try:
            lines = self._stderr_path.read_text(errors="replace").splitlines()
        except OSError:
            return ""
        return "\n".join(line for line in lines[-15:] if "dbus" not in line)

    # -- protocol ------------------------------------------------------------------------------
    def _write(self, message: dict) -> None:
        try:
            self._out.write(json.dumps(message).encode() + b"\0")
            self._out.flush()
        except (BrokenPipeError, ValueError) as error:
            raise BrowserError(f"Chromium is gone:\n{self._stderr_tail()}") from error

    def _next(self, deadline: float, what: str) -> dict:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise BrowserError(f"Chromium did not answer {what} in time")
        try:
            message = self._messages.get(timeout=remaining)
        except queue.Empty:
            raise BrowserError(f"Chromium did not answer {what} in time") from None
        if message is None:
            self._messages.put(None)
            raise BrowserError(f"Chromium exited during {what}:\n{self._stderr_tail()}")
        return message

    def send(
        self,
        method: str,
        params: dict | None = None,
        *,
        session: str | None = None,
        timeout: float | None = None,
    ) -> dict:
        """Send one command and return its result; events that arrive meanwhile are kept."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        self._write(message)
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            reply = self._next(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method} failed: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self._events.append(reply)

    def _wait_event(self, method: str, session: str, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            for event in self._events:
                if event["method"] == method and event.get("sessionId") == session:
                    self._events.remove(event)
                    return event
            reply = self._next(deadline, f"the wait for {method}")
            if "method" in reply:
                self._events.append(reply)

    def _drain(self, seconds: float) -> None:
        """Collect events for a moment (console messages from timers that run after load)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                reply = self._next(deadline, "events")
            except BrowserError as error:
                if "in time" in str(error):
                    return
                raise
            if "method" in reply:
                self._events.append(reply)

    def evaluate(self, expression: str, session: str, *, await_promise: bool = False):
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": await_promise},
            session=session,
        )
        if "exceptionDetails" in result:
            raise BrowserError(f"evaluating in the page failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    # -- pages ---------------------------------------------------------------------------------
    @contextlib.contextmanager
    def page(self, html_path: Path | str, *, width: int | None = None):
        """Open ``html_path`` in a fresh tab, wait for load and for every image to decode.

        Yields (session id, seconds taken); the tab is closed afterwards.
        """
        path = Path(html_path).resolve()
        if not path.is_file():
            raise FileNotFoundError(f"no page at {path}")
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        try:
            session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
                "sessionId"
            ]
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.send(f"{domain}.enable", session=session)
            self.send(
                "Emulation.setDeviceMetricsOverride",
                {
                    "width": int(width or self.width),
                    "height": self.height,
                    "deviceScaleFactor": 1,
                    "mobile": False,
                },
                session=session,
            )
            start = time.monotonic()
            navigation = self.send("Page.navigate", {"url": path.as_uri()}, session=session)
            if navigation.get("errorText"):
                raise BrowserError(f"could not open {path}: {navigation['errorText']}")
            self._wait_event("Page.loadEventFired", session, self.timeout)
            self.evaluate(_DECODE_JS, session, await_promise=True)
            yield session, time.monotonic() - start
        finally:
            with contextlib.suppress(BrowserError):
                self.send("Target.closeTarget", {"targetId": target})

    def _take_events(self, session: str) -> list[dict]:
        mine = [e for e in self._events if e.get("sessionId") == session]
        self._events = [e for e in self._events if e.get("sessionId") != session]
        return mine

    def screenshot(self, session: str, clip: dict, out_png: Path | str) -> tuple[int, int]:
        """Capture ``clip`` (page CSS pixels, beyond the viewport too) as a PNG file."""
        shot = self.send(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": {**clip, "scale": 1}},
            session=session,
        )
        out_png = Path(out_png)
        out_png.parent.mkdir(parents=True, exist_ok=True)
        partial = out_png.with_name(out_png.name + ".partial")
        partial.write_bytes(base64.b64decode(shot["data"]))
        partial.replace(out_png)
        return png_size(out_png)

    def inspect(
        self,
        html_path: Path | str,
        screenshot_path: Path | str | None = None,
        *,
        width: int | None = None,
        max_height: int = MAX_SCREENSHOT_HEIGHT,
        settle: float = 0.3,
    ) -> PageReport:
        """Open the page and report on it (see the module docstring); optionally screenshot it."""
        width = int(width or self.width)
        with self.page(html_path, width=width) as (session, seconds):
            self._drain(settle)
            page = self.evaluate(_COLLECT_JS, session)
            report = PageReport(
                url=Path(html_path).resolve().as_uri(),
                title=page["title"],
                console=[],
                figures=[_check(f["id"], f["images"]) for f in page["figures"]],
                images=[_check(i["src"], [i]) for i in page["images"]],
                broken_anchors=page["broken"],
                duplicate_ids=page["duplicates"],
                external_requests=[],
                page_size=(page["width"], page["height"]),
                seconds=seconds,
                viewport_width=width,
            )
            if screenshot_path is not None:
                height = min(page["height"], int(max_height))
                report.screenshot = Path(screenshot_path)
                report.screenshot_size = self.screenshot(
                    session, {"x": 0, "y": 0, "width": width, "height": height}, screenshot_path
                )
                report.screenshot_truncated = page["height"] > height
            events = self._take_events(session)
        report.console, report.external_requests = _console_and_requests(events)
        report.stats = {"events": len(events)}
        return report

    def screenshot_section(
        self,
        html_path: Path | str,
        element_id: str,
        out_png: Path | str,
        *,
        width: int | None = None,
        max_height: int = MAX_SCREENSHOT_HEIGHT,
    ) -> tuple[int, int]:
        """PNG of one element: a figure, or for a heading its whole section. Returns its size."""
        with self.page(html_path, width=width) as (session, _):
            rect = self.evaluate(f"{_RECT_JS}({json.dumps(element_id)})", session)
            if rect is None:
                ids = self.evaluate(
                    "Array.from(document.querySelectorAll('h2[id], figure[id]'), e => e.id)",
                    session,
                )
                raise KeyError(
                    f"no element with id {element_id!r} in {html_path}; sections and figures: "
                    f"{', '.join(ids[:40])}{' ...' if len(ids) > 40 else ''}"
                )
            if rect["width"] <= 0 or rect["height"] <= 0:
                raise BrowserError(f"element {element_id!r} is not laid out (size {rect})")
            clip = {
                "x": rect["x"],
                "y": rect["y"],
                "width": rect["width"],
                "height": min(rect["height"], max_height),
            }
            size = self.screenshot(session, clip, out_png)
            self._take_events(session)
        return size


def _check(name: str, images: list[dict]) -> ImageCheck:
    first = images[0] if images else {"nw": 0, "nh": 0}
    return ImageCheck(
        name=name,
        n_images=len(images),
        decoded=bool(images) and all(i["complete"] and i["nw"] > 0 for i in images),
        natural_size=(int(first["nw"]), int(first["nh"])),
        size=(
            min((i["w"] for i in images), default=0.0),
            min((i["h"] for i in images), default=0.0),
        ),
    )


def _remote_text(obj: dict) -> str:
    if "value" in obj:
        return str(obj["value"])
    return str(obj.get("description") or obj.get("unserializableValue") or obj.get("type", ""))


def _console_and_requests(events: list[dict]) -> tuple[list[ConsoleMessage], list[str]]:
    console, requests = [], []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in (
            "error",
            "assert",
            "warning",
        ):
            level = "warning" if params["type"] == "warning" else "error"
            text = " ".join(_remote_text(a) for a in params.get("args", []))
            frames = params.get("stackTrace", {}).get("callFrames", [])
            console.append(
                ConsoleMessage(level, "console", text, frames[0]["url"] if frames else "")
            )
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text", "")
            console.append(ConsoleMessage("error", "exception", text, details.get("url", "")))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            if entry.get("level") in ("error", "warning"):
                console.append(
                    ConsoleMessage(
                        entry["level"],
                        entry.get("source", "browser"),
                        entry.get("text", ""),
                        entry.get("url", ""),
                    )
                )
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if not url.startswith(LOCAL_SCHEMES) and url not in requests:
                requests.append(url)
    return console, requests


def inspect_page(
    html_path: Path | str,
    screenshot_path: Path | str | None,
    *,
    width: int = 1280,
    max_height: int = MAX_SCREENSHOT_HEIGHT,
    timeout: float = 180.0,
) -> PageReport:
    """Start Chromium, open the page, report on it, write a full-page screenshot, stop Chromium.

    The screenshot is ``width`` pixels wide and as tall as the page, cut at ``max_height``
    (default 16000 px, near Chromium's largest capture); ``screenshot_section`` shows the rest.
    """
    with Browser(width=width, timeout=timeout) as browser:
        return browser.inspect(html_path, screenshot_path, max_height=max_height)


def screenshot_section(
    html_path: Path | str, element_id: str, out_png: Path | str, *, width: int = 1280
) -> tuple[int, int]:
    """PNG of the element with ``element_id`` (a figure, or a heading's whole section)."""
    with Browser(width=width) as browser:
        return browser.screenshot_section(html_path, element_id, out_png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("page", type=Path, help="the HTML file, e.g. results/report/index.html")
    parser.add_argument("screenshot", type=Path, help="full-page PNG to write")
    parser.add_argument("--width", type=int, default=1280, help="viewport width in CSS pixels")
    parser.add_argument(
        "--section",
        nargs=2,
        action="append",
        default=[],
        metavar=("ID", "PNG"),
        help="also capture the element with this id (a figure or a section heading)",
    )
    args = parser.parse_args(argv)
    with Browser(width=args.width) as browser:
        report = browser.inspect(args.page, args.screenshot)
        print(report.summary())
        for element_id, png in args.section:
            width, height = browser.screenshot_section(args.page, element_id, png)
            print(f"section {element_id}: {png} {width} x {height} px")
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
