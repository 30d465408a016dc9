"""Open a report in headless Chromium with the network disabled, and check what a person would see.

Reusable by every study's test::

    from browser import check_report

    page = check_report(path, expected_metrics=result.metrics(), screenshot_path=tmp_path / "report.png",
                        title="Closing parentheses on smollm2-135m")

The browser is Debian's ``chromium`` (``apt-get install chromium``), driven over the DevTools protocol through
``--remote-debugging-pipe``: two pipes and null-terminated JSON, so nothing beyond the standard library is needed.
Outgoing traffic is blocked three ways: DevTools network emulation is set offline, every host name resolves to
nothing, and a proxy that does not exist is set; any request that is not ``file:``, ``data:``, ``blob:`` or
``about:`` still fails the check, as does any request that fails.

Without Chromium the calling test is skipped with an install hint, except under CI (env ``CI`` set), where it fails.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import fcntl
import json
import math
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from codecircuits.report import format_value

INSTALL_HINT = (
    "headless Chromium is needed for the report's browser test: install it with "
    "`sudo apt-get install chromium` (Debian/Ubuntu), or point $CHROMIUM at a Chromium/Chrome binary"
)
# the per-family study tests run every check of their report on every family, and save a screenshot on this one
SCREENSHOT_FAMILY = "llama"
_LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "devtools:")
WIDTH = 1280


def find_chromium() -> str | None:
    """The Chromium binary: ``$CHROMIUM`` if set, else ``chromium`` / ``chromium-browser`` / ``google-chrome`` on PATH."""
    env = os.environ.get("CHROMIUM")
    if env:
        return env if Path(env).exists() else shutil.which(env)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


def require_chromium() -> str:
    """The Chromium binary, or skip the test with an install hint (fail instead when env ``CI`` is set)."""
    path = find_chromium()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the browser test, but no Chromium was found: {INSTALL_HINT}")
        pytest.skip(INSTALL_HINT)
    return path


class CDPError(RuntimeError):
    pass


class Browser:
    """Headless Chromium driven over ``--remote-debugging-pipe`` (DevTools protocol)."""

    def __init__(self, executable: str, *, timeout: float = 30.0):
        self.timeout = timeout
        self._dir = tempfile.TemporaryDirectory(prefix="cc-chromium-")
        to_child_r, self._to_child_w = os.pipe()
        self._from_child_r, from_child_w = os.pipe()
        # park the child's ends on high numbers so placing them on fds 3 and 4 cannot clobber one another
        hi_r = fcntl.fcntl(to_child_r, fcntl.F_DUPFD, 20)
        hi_w = fcntl.fcntl(from_child_w, fcntl.F_DUPFD, 20)
        os.close(to_child_r)
        os.close(from_child_w)

        def place_pipes():  # runs in the child before exec
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        args = [
            executable,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-default-apps",
            "--disable-domain-reliability",
            "--disable-client-side-phishing-detection",
            "--disable-features=Translate,OptimizationHints,MediaRouter,AutofillServerCommunication,CertificateTransparencyComponentUpdater",
            "--no-first-run",
            "--no-default-browser-check",
            "--metrics-recording-only",
            "--mute-audio",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            "--proxy-server=http://127.0.0.1:9",
            f"--window-size={WIDTH},900",
            f"--user-data-dir={self._dir.name}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        self._log = open(Path(self._dir.name) / "stderr.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
            pass_fds=(3, 4, hi_r, hi_w),
            preexec_fn=place_pipes,
        )
        os.close(hi_r)
        os.close(hi_w)
        self._next_id = 0
        self._responses: dict[int, dict] = {}
        self._cond = threading.Condition()
        self.events: queue.Queue = queue.Queue()
        self.all_events: list[dict] = []
        self._reader = threading.Thread(target=self._read_loop, daemon=True)
        self._reader.start()

    def _read_loop(self):
        buf = b""
        while True:
            try:
                chunk = os.read(self._from_child_r, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            while b"\0" in buf:
                raw, buf = buf.split(b"\0", 1)
                msg = json.loads(raw)
                if "id" in msg:
                    with self._cond:
                        self._responses[msg["id"]] = msg
                        self._cond.notify_all()
                else:
                    self.all_events.append(msg)
                    self.events.put(msg)
        with self._cond:
            self._cond.notify_all()

    def stderr_tail(self, n: int = 2000) -> str:
        self._log.flush()
        return (Path(self._dir.name) / "stderr.log").read_bytes()[-n:].decode("utf-8", "replace")

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._next_id += 1
        mid = self._next_id
        msg = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_child_w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while mid not in self._responses:
                left = deadline - time.monotonic()
                if left <= 0 or self.proc.poll() is not None and mid not in self._responses:
                    raise CDPError(f"no answer to {method} from Chromium. Its log:\n{self.stderr_tail()}")
                self._cond.wait(min(left, 0.5))
            resp = self._responses.pop(mid)
        if "error" in resp:
            raise CDPError(f"{method} failed: {resp['error']}")
        return resp.get("result", {})

    def wait_event(self, method: str, session: str | None, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise CDPError(f"timed out after {timeout:.0f}s waiting for {method}")
            try:
                ev = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if ev.get("method") == method and (session is None or ev.get("sessionId") == session):
                return ev

    def close(self):
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for fd in (self._to_child_w, self._from_child_r):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._log.close()
        self._dir.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# what the page shows, read in the page itself after it rendered
_PROBE = r"""
(() => {
  const box = (e) => { const r = e.getBoundingClientRect(); return {w: r.width, h: r.height}; };
  const root = document.querySelector('.ccr');
  return {
    title: document.title,
    h1: (document.querySelector('[data-report-title]') || {}).textContent || null,
    rendered: root ? root.getAttribute('data-rendered') : null,
    metrics: [...document.querySelectorAll('[data-metric]')].map(e => ({
      key: e.getAttribute('data-metric'), value: e.getAttribute('data-value'),
      text: (e.querySelector('.value') || e).textContent.trim(), ...box(e)})),
    heatmaps: [...document.querySelectorAll('svg[data-kind=heatmap]')].map(e => ({
      rows: +e.getAttribute('data-rows'), cols: +e.getAttribute('data-cols'),
      cells: e.querySelectorAll('.cells rect:not(.frame)').length,
      xlabels: e.querySelectorAll('.xlabels text').length, ylabels: e.querySelectorAll('.ylabels text').length,
      titles: [...e.querySelectorAll('.axis-title')].map(t => t.textContent), ...box(e)})),
    lineCharts: [...document.querySelectorAll('svg[data-kind=line-chart]')].map(e => ({
      series: e.querySelectorAll('g.series').length, points: e.querySelectorAll('g.series circle').length, ...box(e)})),
    views: [...document.querySelectorAll('.cc-cv')].map(e => {
      const t = e.querySelector('.cc-cv-target');
      const drawn = [...t.querySelectorAll('canvas, svg, table, span, div')].filter(k => {
        const r = k.getBoundingClientRect(); return r.width > 0 && r.height > 0; }).length;
      return {kind: e.getAttribute('data-kind'), component: e.getAttribute('data-component'),
              failed: e.getAttribute('data-failed') === 'true', drawn, text: t.textContent.slice(0, 200), ...box(t)};
    }),
    tables: [...document.querySelectorAll('table.cc-table')].map(e => ({rows: e.tBodies[0].rows.length, ...box(e)})),
    tokens: [...document.querySelectorAll('pre[data-kind=tokens]')].map(e => ({
      spans: e.querySelectorAll('span.tok').length, ...box(e)})),
    code: [...document.querySelectorAll('pre[data-kind=code]')].map(e => ({
      highlighted: e.querySelectorAll('span[class^=hl-]').length, ...box(e)})),
    externalRefs: [...document.querySelectorAll('[src],[href]')].map(e => e.getAttribute('src') || e.getAttribute('href'))
      .filter(u => !/^(#|data:|blob:|about:)/.test(u)),
    height: document.documentElement.scrollHeight,
  };
})()
"""


@dataclass
class PageCheck:
    """What the browser saw: the page probe, console errors, network requests, and the screenshot's path."""

    url: str
    page: dict
    console_errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    screenshot: Path | None = None
    evaluated: list = field(default_factory=list)

    @property
    def outgoing(self) -> list[str]:
        return [u for u in self.requests if not u.startswith(_LOCAL_SCHEMES)]


def _eval(b: Browser, session: str, expression: str):
    """The JSON value of a JavaScript expression in the page (None for undefined); a thrown error raises."""
    resp = b.send("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)
    if "exceptionDetails" in resp:
        d = resp["exceptionDetails"]
        raise CDPError(f"{expression!r} threw: {d.get('exception', {}).get('description') or d.get('text')}")
    return resp["result"].get("value")


def open_report(
    html_path,
    screenshot_path=None,
    *,
    timeout: float = 30.0,
    browser: Browser | None = None,
    max_height: int = 16000,
    evaluate: tuple[str, ...] = (),
) -> PageCheck:
    """Load ``html_path`` in headless Chromium (network off), wait until the report says it rendered, and return
    what was seen; writes a full-page PNG to ``screenshot_path`` when given. Asserts nothing. Pass ``browser``
    to reuse a running :class:`Browser` (each page gets its own tab). ``evaluate`` holds JavaScript expressions
    run in the page after the screenshot (e.g. clicking a table header); their JSON values are in ``.evaluated``
    and any console error they cause is reported like the page's own."""
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise FileNotFoundError(f"no report at {html_path}")
    if browser is None:
        b = shared_browser(timeout)
        try:
            return _open(b, html_path, screenshot_path, timeout, max_height, evaluate)
        except (CDPError, OSError):
            if b.proc.poll() is None:
                raise
            _SHARED.clear()  # the shared browser died (not the page's fault): once more in a fresh one
            return _open(shared_browser(timeout), html_path, screenshot_path, timeout, max_height, evaluate)
    return _open(browser, html_path, screenshot_path, timeout, max_height, evaluate)


_SHARED: list[Browser] = []


def shared_browser(timeout: float = 30.0) -> Browser:
    """One headless Chromium for the whole test session (each page opens in its own tab, whose events are read
    apart from the others'), started on first use and closed at exit: starting one per report cost ~1 s each."""
    if _SHARED and _SHARED[0].proc.poll() is None:
        return _SHARED[0]
    _SHARED.clear()
    b = Browser(require_chromium(), timeout=timeout)
    _SHARED.append(b)
    atexit.register(b.close)
    return b


def _open(b: Browser, html_path: Path, screenshot_path, timeout: float, max_height: int, evaluate) -> PageCheck:
    url = html_path.as_uri()
    first_event = len(b.all_events)
    target = b.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    s = b.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    for domain in ("Page", "Runtime", "Log", "Network"):
        b.send(f"{domain}.enable", session=s)
    b.send(
        "Network.emulateNetworkConditions",
        {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1},
        session=s,
    )
    b.send(
        "Emulation.setDeviceMetricsOverride",
        {"width": WIDTH, "height": 900, "deviceScaleFactor": 1, "mobile": False},
        session=s,
    )
    nav = b.send("Page.navigate", {"url": url}, session=s)
    if nav.get("errorText"):
        raise CDPError(f"Chromium could not open {url}: {nav['errorText']}")
    b.wait_event("Page.loadEventFired", s, timeout)
    # report.js marks the report root data-rendered="true" once every view has drawn (or failed); a page that is
    # not a codecircuits report has no root and is read after the load event
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _eval(
            b, s, "(document.querySelector('.ccr') || {getAttribute: () => 'none'}).getAttribute('data-rendered')"
        )
        if state in ("true", "none"):
            break
        time.sleep(0.05)
    time.sleep(0.2)  # let late console messages and requests arrive
    page = _eval(b, s, _PROBE)
    shot = None
    if screenshot_path is not None:
        shot = Path(screenshot_path)
        shot.parent.mkdir(parents=True, exist_ok=True)
        # make the viewport as tall as the page (charts redraw, animated, on every resize, so resize first and
        # never use captureBeyondViewport), then wait until two screenshots agree
        height = 0
        for _ in range(3):
            want = int(min(max(_eval(b, s, "document.documentElement.scrollHeight"), 300), max_height))
            if want == height:
                break
            height = want
            b.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": WIDTH, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=s,
            )
            time.sleep(0.3)
        png, previous = None, None
        for _ in range(15):
            time.sleep(0.4)
            png = b.send("Page.captureScreenshot", {"format": "png"}, session=s)
            if png["data"] == previous:
                break
            previous = png["data"]
        shot.write_bytes(base64.b64decode(png["data"]))
    time.sleep(0.1)
    evaluated = [_eval(b, s, expr) for expr in evaluate]
    if evaluate:
        time.sleep(0.2)
    check = PageCheck(url=url, page=page, screenshot=shot, evaluated=evaluated)
    for ev in b.all_events[first_event:]:
        if ev.get("sessionId") != s:
            continue
        m, p = ev.get("method"), ev.get("params", {})
        if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            args = " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", []))
            check.console_errors.append(f"console.{p['type']}: {args}")
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            desc = d.get("exception", {}).get("description") or d.get("text")
            check.console_errors.append(f"uncaught exception: {desc}")
        elif m == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            e = p["entry"]
            check.console_errors.append(f"log error ({e.get('source')}): {e.get('text')} {e.get('url', '')}")
        elif m == "Network.requestWillBeSent":
            check.requests.append(p["request"]["url"])
        elif m == "Network.loadingFailed":
            check.failed_requests.append(f"{p.get('type')}: {p.get('errorText')}")
    with contextlib.suppress(CDPError):
        b.send("Target.closeTarget", {"targetId": target})
    return check


def _same(expected, shown_json: str) -> bool:
    try:
        shown = json.loads(shown_json)
    except (TypeError, json.JSONDecodeError):
        return False
    if hasattr(expected, "item"):
        expected = expected.item()
    if isinstance(expected, float) and not math.isfinite(expected):
        return shown == str(expected)
    if isinstance(expected, bool) or isinstance(shown, bool):
        return expected is shown
    if isinstance(expected, (int, float)) and isinstance(shown, (int, float)):
        return math.isclose(expected, shown, rel_tol=1e-9, abs_tol=1e-12)
    return expected == shown


def check_report(
    html_path,
    expected_metrics: dict,
    screenshot_path,
    *,
    title: str | None = None,
    require: tuple[str, ...] = (),
    timeout: float = 30.0,
    browser: Browser | None = None,
) -> PageCheck:
    """Open the report in headless Chromium with the network off and assert that a person sees what it claims.

    Asserts: no console errors or uncaught exceptions; no outgoing and no failed requests (and no external
    ``src``/``href`` in the page); every heatmap, line chart, table, token view and circuitsvis view present has
    drawn something of non-zero size; the page title equals the ``<h1>`` (and ``title`` when given); the
    ``data-metric`` cards are exactly the keys of ``expected_metrics`` and each shows the expected value.
    ``require`` names kinds that must be present at least once: ``"heatmap"``, ``"attention"``, ``"neurons"``,
    ``"line-chart"``, ``"table"``, ``"tokens"``, ``"code"``. Saves a full-page screenshot to ``screenshot_path``.
    Returns the :class:`PageCheck` for further assertions.
    """
    c = open_report(html_path, screenshot_path, timeout=timeout, browser=browser)
    return assert_report(c, expected_metrics, title=title, require=require)


def assert_report(
    c: PageCheck, expected_metrics: dict, *, title: str | None = None, require: tuple[str, ...] = ()
) -> PageCheck:
    """The assertions of :func:`check_report` on a page already opened with :func:`open_report`."""
    p = c.page
    where = f"(report {c.url}, screenshot {c.screenshot})"
    assert not c.console_errors, f"console errors {where}:\n" + "\n".join(c.console_errors)
    assert not c.outgoing, f"outgoing network requests {where}: {c.outgoing}"
    assert not c.failed_requests, f"failed requests {where}: {c.failed_requests}"
    assert not p["externalRefs"], f"the page references outside resources {where}: {p['externalRefs'][:10]}"
    assert p["rendered"] == "true", f"the report never finished rendering {where}"
    assert p["title"] and p["title"] == (p["h1"] or "").strip(), f"title {p['title']!r} != heading {p['h1']!r}"
    if title is not None:
        assert p["title"] == title, f"page title {p['title']!r} != expected {title!r} {where}"

    for h in p["heatmaps"]:
        assert h["rows"] > 0 and h["cols"] > 0 and h["cells"] == h["rows"] * h["cols"], f"heatmap incomplete: {h}"
        assert h["w"] > 50 and h["h"] > 30, f"heatmap has no size: {h}"
        assert h["xlabels"] > 0 and h["ylabels"] > 0, f"heatmap without axis labels: {h}"
    for lc in p["lineCharts"]:
        assert lc["series"] > 0 and lc["points"] > 0 and lc["w"] > 50 and lc["h"] > 30, f"empty line chart: {lc}"
    for v in p["views"]:
        assert not v["failed"], f"circuitsvis view {v['component']} failed: {v['text']!r} {where}"
        assert v["drawn"] > 0 and v["w"] > 50 and v["h"] > 50, f"circuitsvis view {v['component']} is empty: {v}"
    for t in p["tables"]:
        assert t["rows"] > 0 and t["w"] > 0, f"empty table: {t}"
    for t in p["tokens"]:
        assert t["spans"] > 0 and t["w"] > 0, f"empty token view: {t}"
    kinds = {
        "heatmap": len(p["heatmaps"]),
        "line-chart": len(p["lineCharts"]),
        "table": len(p["tables"]),
        "tokens": len(p["tokens"]),
        "code": len(p["code"]),
        "attention": sum(v["kind"] == "attention" for v in p["views"]),
        "neurons": sum(v["kind"] == "neurons" for v in p["views"]),
    }
    for k in require:
        assert kinds.get(k, 0) > 0, f"the report has no {k} {where}; it has {kinds}"

    shown = {m["key"]: m for m in p["metrics"]}
    assert len(shown) == len(p["metrics"]), f"duplicate data-metric keys: {[m['key'] for m in p['metrics']]}"
    missing = sorted(set(map(str, expected_metrics)) - set(shown))
    extra = sorted(set(shown) - set(map(str, expected_metrics)))
    assert not missing, f"metrics expected but not shown {where}: {missing}"
    assert not extra, f"metrics shown but not expected {where}: {extra}"
    for key, want in expected_metrics.items():
        m = shown[str(key)]
        assert _same(want, m["value"]), f"metric {key}: page has {m['value']}, expected {want!r} {where}"
        assert m["text"] == format_value(want), f"metric {key}: shows {m['text']!r}, expected {format_value(want)!r}"
        assert m["w"] > 0 and m["h"] > 0, f"metric {key} is not visible"
    return c


def check_study_report(
    html_path, json_path, screenshot_name: str, *, require: tuple[str, ...] = (), screenshot: bool = True
) -> PageCheck:
    """:func:`check_report` against the study's own ``results.json``: the page's metric cards are exactly the
    JSON's ``metrics`` with the same values, and its title names the JSON's model. The screenshot goes to
    :func:`artifact_path` ``(screenshot_name)``; ``screenshot=False`` runs every check without one (a
    screenshot costs ~3 s: the per-family tests take one on one family)."""
    data = json.loads(Path(json_path).read_text())
    assert isinstance(data.get("metrics"), dict) and data["metrics"], f"{json_path} has no metrics"
    shot = artifact_path(screenshot_name) if screenshot else None
    c = check_report(html_path, data["metrics"], shot, require=require)
    model = data.get("model") or data.get("model_name")
    assert model and str(model) in c.page["title"], f"title {c.page['title']!r} does not name the model {model!r}"
    return c


def artifact_path(name: str) -> Path:
    """Where a test artefact (a screenshot) goes: ``$CODECIRCUITS_ARTIFACTS`` or ``out/test-artifacts/`` in the repo."""
    root = Path(
        os.environ.get("CODECIRCUITS_ARTIFACTS") or Path(__file__).resolve().parents[1] / "out" / "test-artifacts"
    )
    root.mkdir(parents=True, exist_ok=True)
    return root / name


def main(argv=None) -> int:
    """``python tests/browser.py REPORT.html [--screenshot PNG] [--max-height N]``: open a report the way the
    tests do and print what the browser saw (console errors, requests, metrics, views)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("report")
    ap.add_argument("--screenshot", default=None)
    ap.add_argument("--max-height", type=int, default=16000, help="crop the screenshot to this many pixels")
    args = ap.parse_args(argv)
    c = open_report(args.report, args.screenshot, max_height=args.max_height)
    print(
        json.dumps(
            {"console_errors": c.console_errors, "requests": c.requests, "failed": c.failed_requests, "page": c.page},
            indent=1,
        )
    )
    return 1 if c.console_errors or c.outgoing or c.failed_requests else 0


if __name__ == "__main__":
    raise SystemExit(main())
