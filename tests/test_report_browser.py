"""The report in a real browser: headless Chromium opens ``report.html`` from disk and the
page must render its unit strips and bar chart (non-blank pixels where the DOM puts
them), log no console error, and request nothing but ``file:`` and ``data:`` URLs.

Chromium is driven through the DevTools protocol over ``--remote-debugging-pipe`` (file
descriptors 3 and 4, NUL-separated JSON), so nothing beyond the standard library is
needed. Skipped only when no Chromium binary is found (CI installs Debian's).

Also a script for the README's screenshot::

    python -m tests.test_report_browser demo-out/report.html docs/report.png
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


class Browser:
    """A headless Chromium and one page, driven over the DevTools pipe."""

    def __init__(self, binary: str, profile: Path, width: int = 1500, height: int = 1000):
        to_child_r, self._to_child = os.pipe()
        self._from_child, from_child_w = os.pipe()

        def wire() -> None:  # in the child: the pipe on fds 3 (commands) and 4 (replies)
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        args = [
            binary,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--hide-scrollbars",
            "--mute-audio",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self.proc = subprocess.Popen(
            args,
            preexec_fn=wire,
            close_fds=False,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buf = b""
        self._next = 0
        self.events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        self.page("Emulation.setDeviceMetricsOverride", width=width, height=height,
                  deviceScaleFactor=1, mobile=False)  # fmt: skip
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.page(f"{domain}.enable")

    def _read(self, timeout: float) -> dict[str, Any]:
        import select

        deadline = time.monotonic() + timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_child], [], [], left)[0]:
                raise TimeoutError("no reply from Chromium")
            chunk = os.read(self._from_child, 1 << 20)
            if not chunk:
                raise RuntimeError("Chromium closed the DevTools pipe")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, timeout: float = 30, session: str | None = None, **params: Any):
        self._next += 1
        msg: dict[str, Any] = {"id": self._next, "method": method, "params": params}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child, json.dumps(msg).encode() + b"\0")
        while True:
            reply = self._read(timeout)
            if reply.get("id") == self._next:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def page(self, method: str, timeout: float = 30, **params: Any) -> dict[str, Any]:
        return self.call(method, timeout=timeout, session=self.session, **params)

    def wait_for(self, method: str, timeout: float = 30) -> dict[str, Any]:
        for e in self.events:
            if e["method"] == method:
                return e
        deadline = time.monotonic() + timeout
        while True:
            e = self._read(max(0.0, deadline - time.monotonic()))
            if "method" in e:
                self.events.append(e)
                if e["method"] == method:
                    return e

    def evaluate(self, expression: str) -> Any:
        r = self.page("Runtime.evaluate", expression=expression, returnByValue=True,
                      awaitPromise=True)  # fmt: skip
        if "exceptionDetails" in r:
            raise RuntimeError(f"page script failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def open(self, path: Path, timeout: float = 30) -> None:
        """Navigate to a local file and wait until it and the images in view have loaded
        (the strips load lazily, so the ones further down wait for scrolling)."""
        self.events = [e for e in self.events if e["method"] != "Page.loadEventFired"]
        self.page("Page.navigate", url=path.resolve().as_uri())
        self.wait_for("Page.loadEventFired", timeout)
        self.wait_images(timeout)

    def wait_images(self, timeout: float = 30) -> None:
        """Wait until the images in view have loaded."""
        deadline = time.monotonic() + timeout
        expr = (  # rendered (not display: none) and within the viewport
            "Array.from(document.images).map(i => [i, i.getBoundingClientRect()])"
            ".filter(([i, r]) => r.height > 0 && r.top < window.innerHeight)"
            ".every(([i, r]) => i.complete)"
        )
        while not self.evaluate(expr):
            if time.monotonic() > deadline:
                raise TimeoutError("images still loading")
            time.sleep(0.05)

    def screenshot(self, clip: dict[str, float] | None = None) -> np.ndarray:
        from PIL import Image

        if clip is None:  # the whole page
            size = self.page("Page.getLayoutMetrics")["cssContentSize"]
            clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"]}
        params = {"format": "png", "captureBeyondViewport": True, "clip": {**clip, "scale": 1}}
        data = self.page("Page.captureScreenshot", timeout=60, **params)["data"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))

    def drain(self, seconds: float = 0.2) -> None:
        """Collect the events that arrive within ``seconds``."""
        try:
            while True:
                e = self._read(seconds)
                if "method" in e:
                    self.events.append(e)
        except TimeoutError:
            pass

    def requests(self) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e["method"] == "Network.requestWillBeSent"
        ]

    def errors(self) -> list[str]:
        out = []
        for e in self.events:
            m, p = e["method"], e.get("params", {})
            if m == "Runtime.exceptionThrown":
                out.append(str(p["exceptionDetails"]))
            elif m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                out.append(" ".join(str(a.get("value", a)) for a in p.get("args", [])))
            elif m == "Log.entryAdded" and p["entry"].get("level") == "error":
                out.append(f"{p['entry'].get('source')}: {p['entry'].get('text')}")
        return out

    def close(self) -> None:
        with suppress(Exception):
            self.call("Browser.close", timeout=5)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._to_child)
        os.close(self._from_child)


@contextmanager
def browser(width: int = 1500, height: int = 1000) -> Iterator[Browser]:
    binary = find_chromium()
    if binary is None:
        raise RuntimeError("no Chromium binary found")
    with tempfile.TemporaryDirectory(prefix="broden-chromium-") as profile:
        b = Browser(binary, Path(profile), width, height)
        try:
            yield b
        finally:
            b.close()


BOXES_JS = """
JSON.stringify(Array.from(document.querySelectorAll(%s)).map(e => {
  const r = e.getBoundingClientRect();
  return {x: r.left + window.scrollX, y: r.top + window.scrollY, width: r.width,
          height: r.height, loaded: e.tagName !== 'IMG' || e.naturalWidth > 0,
          unit: e.closest('tr') ? e.closest('tr').dataset.unit : null};
}))
"""


HOVER_TARGET_JS = """
(() => {
  const s = document.querySelector('table.units img.cm').closest('.strip');
  s.scrollIntoView({block: 'center'});
  const r = s.getBoundingClientRect();
  return [r.left + r.width / 2, r.top + r.height / 2];
})()
"""


def boxes(b: Browser, selector: str) -> list[dict[str, Any]]:
    return json.loads(b.evaluate(BOXES_JS % json.dumps(selector)))


def region(shot: np.ndarray, box: dict[str, Any]) -> np.ndarray:
    x, y = round(box["x"]), round(box["y"])
    return shot[y : y + round(box["height"]), x : x + round(box["width"])]


# -- the test --------------------------------------------------------------------------------


@pytest.mark.browser
def test_report_renders_offline_in_chromium(tmp_path: Path) -> None:
    if find_chromium() is None:
        pytest.skip("no Chromium binary (CI installs Debian's chromium)")
    from broden.dissect.report import write_report
    from tests.test_report import tiny_run

    run = tiny_run(tmp_path)
    page = write_report(run.out, top_k=4)
    with browser() as b:
        b.open(page)
        # the strips below the viewport load lazily, ahead of scrolling: give a busy
        # machine time to finish them before asserting that all did
        deadline = time.monotonic() + 30
        while True:
            charts = boxes(b, "img.bars")
            strips = boxes(b, "table.units img.um")
            if all(s["loaded"] for s in strips + charts) or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert charts and strips
        assert all(s["loaded"] for s in strips + charts), "an image did not load"
        shot = b.screenshot()
        assert shot.shape[0] > max(s["y"] + s["height"] for s in strips)
        first_tiles = [{**s, "width": s["height"]} for s in strips[:6]]  # square tiles
        for box in charts + first_tiles:
            px = region(shot, box).astype(np.float64)
            assert px.size and px.std() > 4, f"blank region where an image should be: {box}"
        # the page around the images is the plain background: the measure can tell blank
        blank = shot[5:40, -60:-10].astype(np.float64)
        assert blank.std() < 1

        # sorting by IoU (the inline script) puts the best unit first
        first = b.evaluate("document.querySelector('table.units tbody tr').dataset.unit")
        assert first == "0"
        b.evaluate("document.querySelector('table.units th button[data-key=iou]').click()")
        order = b.evaluate(
            "Array.from(document.querySelector('table.units').tBodies[0].rows)"
            ".map(r => [parseFloat(r.dataset.iou), parseInt(r.dataset.unit)])"
        )
        assert [v for v, _ in order] == sorted((v for v, _ in order), reverse=True)
        assert sorted(u for _, u in order) == list(range(len(order)))
        # the malicious concept name is text on the page, and no script of it ran
        assert b.evaluate("document.scripts.length") == 1
        assert "<script>alert(1)</script>" in b.evaluate("document.body.textContent")

        # hovering a strip shows the concept's own masks over the unit's
        x, y = b.evaluate(HOVER_TARGET_JS)
        cm = "getComputedStyle(document.querySelector('table.units img.cm')).visibility"
        assert b.evaluate(cm) == "hidden"
        b.page("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        assert b.evaluate(cm) == "visible"
        b.drain()
        urls, errors = b.requests(), b.errors()

        # without JavaScript: the same table in unit order, images shown, no sort buttons
        b.page("Emulation.setScriptExecutionDisabled", value=True)
        b.open(page)
        assert b.evaluate("document.querySelectorAll('table.units th button').length") == 0
        units = b.evaluate(
            "Array.from(document.querySelector('table.units').tBodies[0].rows)"
            ".map(r => parseInt(r.dataset.unit))"
        )
        assert units == sorted(units) and len(units) == 4
        assert all(s["loaded"] for s in boxes(b, "table.units img.um")[:4])

    assert any(u.endswith("report.html") for u in urls)
    assert any(u.endswith(".jpg") for u in urls) and any(u.endswith(".svg") for u in urls)
    remote = [u for u in urls if not u.startswith(("file://", "data:"))]
    assert not remote, f"the report made network requests: {remote}"
    assert errors == [] and b.errors() == []


# -- the README screenshot ------------------------------------------------------------------


def screenshot(report: Path, png: Path, width: int = 1500, height: int = 1500) -> Path:
    """The top of ``report`` (first layer: headline, chart and the first units) as a PNG
    small enough for the README."""
    from PIL import Image

    with browser(width, height) as b:
        b.open(report)
        # the first layer's detector units (the demo's random network has few)
        b.evaluate("document.querySelector('.det-only').checked = true")
        b.wait_images()
        shot = b.screenshot({"x": 0, "y": 0, "width": width, "height": height})
    im = Image.fromarray(shot)
    im = im.resize((width * 2 // 3, height * 2 // 3), Image.Resampling.LANCZOS)
    im = im.quantize(colors=256, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE)
    png.parent.mkdir(parents=True, exist_ok=True)
    im.save(png, optimize=True)
    return png


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m tests.test_report_browser REPORT.html OUT.png")
    print(screenshot(Path(sys.argv[1]), Path(sys.argv[2])))
