"""Open every page of the built book in headless Chromium and fail on what a reader would see.

``python -m tools.browser_check [_build/html]`` (what ``make browser-check`` runs) serves
the HTML on 127.0.0.1, opens each page in headless Chromium and fails when a page has

- a JavaScript error (uncaught exception, ``console.error``, a resource that failed to load);
- a request that leaves the machine (anything but 127.0.0.1 and ``data:``/``blob:`` URLs);
- raw TeX in the visible text after MathJax has finished (``$x$``, ``$$``, ``\\(``, ``\\begin{``,
  ``\\frac``...), a ``.math`` element MathJax did not typeset, or a MathJax error (``merror``, or an
  undefined macro drawn in red);
- an image that does not load (``naturalWidth == 0``), or a figure with transparent pixels (it
  would be unreadable in dark mode);
- fewer theorem/lemma/proof/exercise/solution blocks than its MyST source has directives (the
  source is the copy Sphinx keeps in ``_sources/``).

It saves a light and a dark (``data-theme="dark"``) full-page screenshot of each page in
``_build/screenshots``. Chromium is Debian's (``apt-get install chromium``), driven over the
DevTools protocol through a pipe (``--remote-debugging-pipe``): no driver, no browser download,
no Python dependency. Every host but 127.0.0.1 resolves to nothing, so no page can reach the
network, and any attempt is reported.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import fcntl
import functools
import http.server
import json
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-features=Translate,MediaRouter,OptimizationHints",
    "--password-store=basic",
    "--use-mock-keychain",
    "--hide-scrollbars",
    "--mute-audio",
    "--force-color-profile=srgb",
    # No page may reach the network: every other host fails at once, and the attempt is
    # still seen (and reported) as a request.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--remote-debugging-pipe",
)
# Console errors that are not the book's: pydata-sphinx-theme logs this on a reader's first
# visit (nothing stored in localStorage yet), then falls back to "auto" as intended.
KNOWN_NOISE = (re.compile(r"^javascript: console\.error: Got invalid theme mode: \. Resetting"),)
REDIRECT = re.compile(r"<meta\s+http-equiv=\"refresh\"\s+content=\"\d+;\s*url=([^\"]+)\"", re.I)
WIDTH, HEIGHT = 1280, 900
MAX_SCREENSHOT_HEIGHT = 16000
PAGE_TIMEOUT_S = 60.0

# sphinx-proof renders ``{prf:KIND}`` as ``<div class="proof KIND ...">`` (``{prf:proof}`` as
# ``class="proof ..."`` with no kind); sphinx-exercise renders ``exercise``/``solution``.
PROOF_KINDS = (
    "algorithm",
    "assumption",
    "axiom",
    "conjecture",
    "corollary",
    "criterion",
    "definition",
    "example",
    "lemma",
    "notation",
    "observation",
    "property",
    "proposition",
    "remark",
    "theorem",
)
DIRECTIVE = re.compile(
    r"^\s*(?:`{3,}|:{3,})\s*\{(prf:[a-z]+|exercise|exercise-start|solution|solution-start)\}",
    re.MULTILINE,
)


def expected_blocks(source: str) -> Counter:
    """Count the theorem-like, exercise and solution directives of a MyST source."""
    counts: Counter = Counter()
    for name in DIRECTIVE.findall(source):
        if name.startswith("prf:"):
            counts[name.removeprefix("prf:")] += 1
        else:
            counts[name.removesuffix("-start")] += 1
    return counts


# Runs in the page once it has loaded: waits for MathJax, then returns what the checks need.
PAGE_PROBE = r"""
(async () => {
  const report = {mathjax: "absent", rawTex: [], unrendered: [], mathErrors: [],
                  brokenImages: [], transparentImages: [], blocks: {}, counts: {}};
  const MJ = window.MathJax;
  if (MJ && MJ.startup && MJ.startup.promise) {
    try { await MJ.startup.promise; report.mathjax = "typeset"; }
    catch (e) { report.mathjax = "failed: " + e; }
  } else if (MJ) {
    report.mathjax = "configured but not loaded";
  }
  // Math: every .math element must hold a typeset container; no merror, no red undefined macro.
  const maths = [...document.querySelectorAll(".math")];
  report.counts.math = maths.length;
  for (const el of maths) {
    if (!el.querySelector("mjx-container")) report.unrendered.push(el.textContent.slice(0, 80));
  }
  for (const el of document.querySelectorAll("mjx-merror")) {
    report.mathErrors.push("merror: " + (el.getAttribute("data-mjx-error") || el.textContent));
  }
  if (MJ && MJ.startup && MJ.startup.document && MJ.startup.toMML) {
    for (const item of MJ.startup.document.math) {
      const mml = MJ.startup.toMML(item.root);
      if (/<merror|mathcolor="red"/.test(mml)) report.mathErrors.push(String(item.math));
    }
  }
  // Raw TeX and unrendered MyST in the text a reader sees (code and typeset math excluded).
  const skip = "script,style,pre,code,kbd,samp,textarea,mjx-container,mjx-assistive-mml,math";
  const patterns = [
    [/\$\$/, "$$"], [/\\[()[\]]/, "\\( \\) \\[ \\]"], [/\\(begin|end)\{/, "\\begin/\\end"],
    [/(^|[^\\\w$])\$[^\s$][^$\n]*\$/, "$...$"], [/\\[A-Za-z]{2,}/, "TeX command"],
    [/\{(glue|cite|ref|eq|numref|math|prf:[a-z]+)[:}]/, "MyST role"], [/(```|:::)\{/, "MyST fence"],
  ];
  const walker = document.createTreeWalker(document.body || document, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const parent = node.parentElement;
    if (!parent || parent.closest(skip)) continue;
    const text = node.textContent;
    const isMath = el => el && el.nodeType === 1 &&
      (el.matches("mjx-container, .math") || el.querySelector("mjx-container"));
    if (text.includes("$") && (isMath(node.previousSibling) || isMath(node.nextSibling))) {
      report.rawTex.push("$ next to typeset math: …" + text.trim().slice(-60) + "…");
      continue;
    }
    for (const [pattern, what] of patterns) {
      const match = text.match(pattern);
      if (match) {
        const at = Math.max(0, match.index - 30);
        report.rawTex.push(what + ": …" + text.slice(at, match.index + 50).trim() + "…");
        break;
      }
    }
  }
  // Images: load lazy ones, then every one must have pixels; figures must be opaque.
  const images = [...document.images];
  report.counts.images = images.length;
  for (const img of images) img.loading = "eager";
  await Promise.all(images.map(img => img.decode().catch(() => null)));
  const content = document.querySelector("main, article, [role=main]") || document.body;
  for (const img of images) {
    if (!img.complete || img.naturalWidth === 0) {
      report.brokenImages.push(img.getAttribute("src"));
      continue;
    }
    if (!content.contains(img) || /\.svg(\?|$)/i.test(img.src)) continue;
    try {
      const canvas = document.createElement("canvas");
      canvas.width = img.naturalWidth; canvas.height = img.naturalHeight;
      const context = canvas.getContext("2d");
      context.drawImage(img, 0, 0);
      const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
      let transparent = 0;
      for (let i = 3; i < data.length; i += 4) if (data[i] < 255) transparent++;
      if (transparent > 0) {
        const share = (100 * transparent / (data.length / 4)).toFixed(1);
        report.transparentImages.push(img.getAttribute("src") + " (" + share + "% of pixels)");
      }
    } catch (e) { /* cross-origin: already reported as a network request */ }
  }
  // Theorem-like, exercise and solution blocks.
  const kinds = KINDS;
  for (const el of document.querySelectorAll("div.proof")) {
    const kind = kinds.find(k => el.classList.contains(k)) || "proof";
    report.blocks[kind] = (report.blocks[kind] || 0) + 1;
  }
  report.blocks.exercise = document.querySelectorAll("div.exercise").length;
  report.blocks.solution = document.querySelectorAll("div.solution").length;
  report.height = Math.ceil(Math.max(document.documentElement.scrollHeight,
                                     document.body ? document.body.scrollHeight : 0));
  return JSON.stringify(report);
})()
""".replace("KINDS", json.dumps(list(PROOF_KINDS)))

DARK_MODE = """
(async () => {
  document.documentElement.dataset.theme = "dark";
  document.documentElement.dataset.mode = "dark";
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
  return getComputedStyle(document.body).backgroundColor;
})()
"""


class BrowserError(RuntimeError):
    """Chromium is missing, died, or did not answer."""


def find_chromium(explicit: str | None = None) -> str | None:
    """The Chromium executable: ``explicit``, ``$CHROMIUM``, or the first on ``PATH``."""
    for name in (explicit, os.environ.get("CHROMIUM"), *CHROMIUM_NAMES):
        if name and (path := shutil.which(name)):
            return path
    return None


class Chromium:
    """Headless Chromium spoken to over the DevTools protocol on fds 3 and 4."""

    def __init__(self, executable: str) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="lincollapse-chromium-")
        to_browser_r, to_browser_w = os.pipe()
        from_browser_r, from_browser_w = os.pipe()
        # Chromium reads commands on fd 3 and writes replies on fd 4: move our ends above 10
        # first so that dup2 into 3/4 in the child cannot clobber one with the other.
        child_in = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_out = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser_r)
        os.close(from_browser_w)

        def map_fds() -> None:
            os.dup2(child_in, 3)
            os.dup2(child_out, 4)

        command = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}"]
        command += [f"--window-size={WIDTH},{HEIGHT}", "about:blank"]
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=map_fds,
            pass_fds=(3, 4),
        )
        os.close(child_in)
        os.close(child_out)
        self._write = to_browser_w
        self._messages: queue.Queue = queue.Queue()
        self._next_id = 0
        self.events: list[dict[str, Any]] = []
        threading.Thread(target=self._read, args=(from_browser_r,), daemon=True).start()
        self.version = self.send("Browser.getVersion")["product"]

    def _read(self, fd: int) -> None:
        buffer = b""
        with os.fdopen(fd, "rb", buffering=0) as stream:
            while chunk := stream.read(1 << 20):
                buffer += chunk
                *messages, buffer = buffer.split(b"\0")
                for message in messages:
                    self._messages.put(json.loads(message))
        self._messages.put(None)

    def send(
        self, method: str, params: dict | None = None, session: str | None = None, timeout=60.0
    ) -> dict[str, Any]:
        """Send one command and wait for its answer, keeping the events that arrive meanwhile."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._next_message(deadline, method)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error'].get('message')}")
                return reply.get("result", {})
            if "method" in reply:
                self.events.append(reply)

    def wait_for(self, method: str, session: str, timeout: float) -> None:
        """Wait for the event ``method`` of ``session`` (already received counts)."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event["method"] == method and event.get("sessionId") == session:
                    return
            seen = len(self.events)
            reply = self._next_message(deadline, method)
            if "method" in reply:
                self.events.append(reply)

    def _next_message(self, deadline: float, waiting_for: str) -> dict[str, Any]:
        try:
            reply = self._messages.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            raise BrowserError(f"Chromium did not answer {waiting_for} in time") from None
        if reply is None:
            raise BrowserError(f"Chromium exited (code {self._process.poll()})")
        return reply

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
        except (BrowserError, OSError):
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        os.close(self._write)
        self._profile.cleanup()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclasses.dataclass
class PageReport:
    """What the check found on one page."""

    page: str
    problems: list[str]
    stats: dict[str, Any]
    screenshots: list[str]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


def _serve(root: Path) -> http.server.ThreadingHTTPServer:
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def list_pages(html_dir: Path) -> list[Path]:
    """Every HTML page of the build, without Sphinx's own folders (``_static`` etc.)."""
    return sorted(
        path
        for path in html_dir.rglob("*.html")
        if not any(part.startswith(("_", ".")) for part in path.relative_to(html_dir).parts)
    )


def _source_of(page: Path, html_dir: Path, source_root: Path | None) -> str | None:
    relative = page.relative_to(html_dir).with_suffix("")
    candidates = [
        html_dir / "_sources" / f"{relative}.md",
        html_dir / "_sources" / f"{relative}.md.txt",
    ]
    if source_root is not None:
        candidates.append(source_root / f"{relative}.md")
    for candidate in candidates:
        if candidate.is_file():
            return candidate.read_text(encoding="utf-8")
    return None


def _is_local(url: str, origin: str) -> bool:
    scheme = urlsplit(url).scheme
    return scheme in ("data", "blob", "about", "chrome", "devtools") or url.startswith(origin)


def _browser_initiated(url: str, origin: str) -> bool:
    """Requests the browser makes by itself, not the page (a site with no favicon is fine)."""
    return url == origin + "favicon.ico"


def check_page(
    browser: Chromium,
    url: str,
    origin: str,
    name: str,
    source: str | None,
    screenshots: Path | None,
    redirect: str | None = None,
) -> PageReport:
    """Open ``url`` in a fresh tab and check it; see the module docstring for what fails."""
    start = time.perf_counter()
    problems: list[str] = []
    shots: list[str] = []
    if redirect:
        return PageReport(name, problems, {"redirect": redirect}, shots, 0.0)
    target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
        "sessionId"
    ]
    first_event = len(browser.events)
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            browser.send(f"{domain}.enable", session=session)
        browser.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": WIDTH, "height": HEIGHT, "deviceScaleFactor": 1, "mobile": False},
            session=session,
        )
        navigation = browser.send("Page.navigate", {"url": url}, session=session)
        if navigation.get("errorText"):
            problems.append(f"load: {navigation['errorText']}")
        else:
            browser.wait_for("Page.loadEventFired", session, PAGE_TIMEOUT_S)
        report = json.loads(_evaluate(browser, session, PAGE_PROBE))
        problems += _page_problems(report, source)
        if screenshots is not None:
            stem = name.removesuffix(".html").replace("/", "__")
            for mode in ("light", "dark"):
                if mode == "dark":
                    _evaluate(browser, session, DARK_MODE)
                path = screenshots / f"{stem}.{mode}.png"
                _screenshot(browser, session, report["height"], path)
                shots.append(str(path))
        browser.send("Runtime.evaluate", {"expression": "1"}, session=session)  # flush events
    finally:
        events = [e for e in browser.events[first_event:] if e.get("sessionId") == session]
        del browser.events[first_event:]
        browser.send("Target.closeTarget", {"targetId": target})
    problems += _event_problems(events, origin)
    stats = {"math": report.get("counts", {}).get("math", 0), "mathjax": report.get("mathjax")}
    stats |= {"images": report.get("counts", {}).get("images", 0), "blocks": report.get("blocks")}
    return PageReport(name, problems, stats, shots, time.perf_counter() - start)


def _evaluate(browser: Chromium, session: str, expression: str) -> Any:
    result = browser.send(
        "Runtime.evaluate",
        {"expression": expression, "awaitPromise": True, "returnByValue": True},
        session=session,
        timeout=PAGE_TIMEOUT_S,
    )
    if "exceptionDetails" in result:
        details = result["exceptionDetails"]
        raise BrowserError(f"probe failed: {details.get('exception', {}).get('description')}")
    return result["result"].get("value")


def _screenshot(browser: Chromium, session: str, height: int, path: Path) -> None:
    height = max(HEIGHT, min(int(height), MAX_SCREENSHOT_HEIGHT))
    shot = browser.send(
        "Page.captureScreenshot",
        {
            "format": "png",
            "captureBeyondViewport": True,
            "clip": {"x": 0, "y": 0, "width": WIDTH, "height": height, "scale": 1},
        },
        session=session,
        timeout=PAGE_TIMEOUT_S,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(base64.b64decode(shot["data"]))
    os.replace(tmp, path)


def _page_problems(report: dict[str, Any], source: str | None) -> list[str]:
    problems = []
    if report["counts"].get("math") and report["mathjax"] != "typeset":
        problems.append(f"math: MathJax {report['mathjax']}")
    problems += [f"math: not typeset: {text!r}" for text in report["unrendered"][:10]]
    problems += [f"math: MathJax error in {text!r}" for text in report["mathErrors"][:10]]
    problems += [f"raw TeX: {text}" for text in report["rawTex"][:10]]
    problems += [f"image: does not load: {src}" for src in report["brokenImages"]]
    problems += [f"transparent figure: {src}" for src in report["transparentImages"]]
    if source is not None:
        rendered = Counter(report["blocks"])
        for kind, expected in sorted(expected_blocks(source).items()):
            if rendered[kind] < expected:
                problems.append(
                    f"blocks: {expected} {kind} directive(s) in the source, "
                    f"{rendered[kind]} rendered"
                )
    return problems


def _event_problems(events: list[dict[str, Any]], origin: str) -> list[str]:
    problems = []
    for event in events:
        method, params = event["method"], event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            text = details.get("exception", {}).get("description") or details.get("text")
            problems.append(f"javascript: uncaught {str(text).splitlines()[0]}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params["args"])
            problems.append(f"javascript: console.{params['type']}: {text[:200]}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            entry = params["entry"]
            if _browser_initiated(entry.get("url", ""), origin):
                continue
            problems.append(f"javascript: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            request_url = params["request"]["url"]
            if not _is_local(request_url, origin):
                problems.append(f"network: request to {request_url}")
        elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
            response = params["response"]
            if not _browser_initiated(response["url"], origin):
                problems.append(f"network: HTTP {response['status']} for {response['url']}")
    problems = [p for p in problems if not any(noise.search(p) for noise in KNOWN_NOISE)]
    return list(dict.fromkeys(problems))  # keep order, drop repeats


def check_site(
    html_dir: Path,
    screenshots: Path | None = None,
    *,
    chromium: str | None = None,
    source_root: Path | None = None,
    pages: list[Path] | None = None,
    progress: bool = False,
) -> list[PageReport]:
    """Check every page of ``html_dir`` (or ``pages``); return one report per page."""
    executable = find_chromium(chromium)
    if executable is None:
        raise BrowserError(
            "no Chromium found (tried $CHROMIUM, " + ", ".join(CHROMIUM_NAMES) + "); install "
            "Debian's: apt-get update && apt-get install -y chromium"
        )
    html_dir = html_dir.resolve()
    pages = pages if pages is not None else list_pages(html_dir)
    server = _serve(html_dir)
    origin = f"http://127.0.0.1:{server.server_address[1]}/"
    reports = []
    try:
        with Chromium(executable) as browser:
            if progress:
                print(f"{browser.version}, serving {html_dir} at {origin}", flush=True)
            for page in pages:
                name = page.relative_to(html_dir).as_posix()
                redirect = REDIRECT.search(page.read_text(encoding="utf-8", errors="replace"))
                report = check_page(
                    browser,
                    origin + name,
                    origin,
                    name,
                    _source_of(page, html_dir, source_root),
                    screenshots,
                    redirect.group(1) if redirect else None,
                )
                if redirect and not (page.parent / redirect.group(1)).is_file():
                    report.problems.append(f"redirect: {redirect.group(1)} does not exist")
                reports.append(report)
                if progress:
                    print(_format(report), flush=True)
    finally:
        server.shutdown()
        server.server_close()
    return reports


def _format(report: PageReport) -> str:
    if "redirect" in report.stats:
        status = "ok  " if report.ok else "FAIL"
        return "\n".join(
            [f"{status} {report.page} (redirects to {report.stats['redirect']})"]
            + [f"       - {problem}" for problem in report.problems]
        )
    blocks = ", ".join(f"{k} {v}" for k, v in sorted((report.stats["blocks"] or {}).items()) if v)
    summary = (
        f"math {report.stats['math']}, images {report.stats['images']}"
        + (f", {blocks}" if blocks else "")
        + f"; {report.seconds:.1f} s"
    )
    lines = [f"{'ok  ' if report.ok else 'FAIL'} {report.page} ({summary})"]
    lines += [f"       - {problem}" for problem in report.problems]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", nargs="?", default="_build/html", help="the built HTML folder")
    parser.add_argument(
        "--screenshots",
        default=None,
        help="where to save screenshots (default: _build/screenshots next to the HTML folder)",
    )
    parser.add_argument("--no-screenshots", action="store_true", help="check only")
    parser.add_argument("--chromium", default=None, help="Chromium executable (default: PATH)")
    parser.add_argument(
        "--source", default=None, help="book root for chapter sources when _sources/ is absent"
    )
    args = parser.parse_args(argv)
    html_dir = Path(args.html)
    if not (html_dir / "index.html").is_file():
        parser.error(f"{html_dir} has no index.html; build the book first (make book)")
    screenshots = None
    if not args.no_screenshots:
        screenshots = Path(args.screenshots or html_dir.resolve().parent / "screenshots")
    start = time.perf_counter()
    try:
        reports = check_site(
            html_dir,
            screenshots,
            chromium=args.chromium,
            source_root=Path(args.source) if args.source else None,
            progress=True,
        )
    except BrowserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    failed = [report for report in reports if not report.ok]
    where = f"; screenshots in {screenshots}" if screenshots else ""
    print(
        f"browser check: {len(reports) - len(failed)} of {len(reports)} pages clean "
        f"in {time.perf_counter() - start:.1f} s{where}"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
