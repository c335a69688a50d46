"""Open every page of the built book in headless Chromium and fail on what a reader would see.

``python -m tools.browser_check [_build/html]`` (what ``make browser-check`` runs) serves the HTML
on 127.0.0.1, opens each page in headless Chromium and fails when a page has

- a JavaScript error (uncaught exception, ``console.error``, a resource that failed to load);
- a request that leaves the machine (anything but 127.0.0.1 and ``data:``/``blob:`` URLs);
- raw TeX in the visible text after MathJax has finished (``$x$``, ``$$``, ``\\(``, ``\\begin{``,
  ``\\frac``...), a ``.math`` element MathJax did not typeset, or a MathJax error (``merror``, or an
  undefined macro drawn in red);
- an image that does not load (``naturalWidth == 0``), or a figure with transparent pixels (it
  would be unreadable in dark mode);
- an image in the chapter that is not in a ``<figure>`` with a numbered caption (``Fig. N``), or
  such a figure without one: every figure of the book is captioned and can be referred to;
- fewer theorem/lemma/proof/exercise/solution blocks than its MyST source has directives (the
  source is the copy Sphinx keeps in ``_sources/``).

It saves a light and a dark (``data-theme="dark"``) full-page screenshot of each page in
``_build/screenshots``. Chromium is Debian's (``apt-get install chromium``), driven by Playwright
(PyPI ``playwright``) through ``executable_path``: no browser download. Every host but 127.0.0.1
resolves to nothing, so no page can reach the network, and any attempt is reported.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import http.server
import json
import os
import re
import shutil
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# Added to Playwright's own flags (it already runs headless, without sandbox, sync, extensions,
# first-run and background networking).
CHROMIUM_ARGS = (
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--force-color-profile=srgb",
    "--hide-scrollbars",
    # No page may reach the network: every other host fails at once, and the attempt is
    # still seen (and reported) as a request.
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
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
                  brokenImages: [], transparentImages: [], uncaptioned: [], blocks: {},
                  counts: {}};
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
  // Figures: every image of the article sits in a <figure> whose caption has a number.
  const article = document.querySelector("article") || content;
  const numbered = fig => !!fig && [...fig.querySelectorAll("figcaption .caption-number")]
    .some(el => /\d/.test(el.textContent));
  const where = el => {
    const heading = el.closest("section")?.querySelector("h1, h2, h3, h4, h5, h6");
    return heading ? " (section “" + heading.textContent.replace(/[#¶]\s*$/, "").trim() + "”)" : "";
  };
  const figureImages = [...article.querySelectorAll("img")];
  report.counts.figures = figureImages.length;
  for (const img of figureImages) {
    if (!numbered(img.closest("figure"))) {
      report.uncaptioned.push(img.getAttribute("src") + where(img));
    }
  }
  for (const fig of article.querySelectorAll("figure")) {
    if (!fig.querySelector("img") && !numbered(fig)) {
      report.uncaptioned.push("<figure" + (fig.id ? " id=" + fig.id : "") + ">" + where(fig));
    }
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
    """Chromium or Playwright is missing, or the browser failed."""


def find_chromium(explicit: str | None = None) -> str | None:
    """The Chromium executable: ``explicit``, ``$CHROMIUM``, or the first on ``PATH``."""
    for name in (explicit, os.environ.get("CHROMIUM"), *CHROMIUM_NAMES):
        if name and (path := shutil.which(name)):
            return path
    return None


def playwright_missing() -> str | None:
    """Why Playwright cannot be used here (a sentence with the fix), or ``None``."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python package playwright is not installed; pip install -r requirements.txt"
    return None


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


class _Events:
    """What a page reports while it loads and runs: errors, console messages, requests."""

    def __init__(self, page: Any, origin: str) -> None:
        self.problems: list[str] = []
        self.origin = origin
        page.on("pageerror", self._page_error)
        page.on("console", self._console)
        page.on("request", self._request)
        page.on("response", self._response)

    def _page_error(self, error: Any) -> None:
        name = getattr(error, "name", "") or "Error"
        message = str(getattr(error, "message", error)).splitlines()[0]
        self.problems.append(f"javascript: uncaught {name}: {message}")

    def _console(self, message: Any) -> None:
        if message.type not in ("error", "assert"):
            return
        url = (message.location or {}).get("url", "")
        if _browser_initiated(url, self.origin):
            return
        self.problems.append(f"javascript: console.{message.type}: {message.text[:200]}")

    def _request(self, request: Any) -> None:
        if not _is_local(request.url, self.origin):
            self.problems.append(f"network: request to {request.url}")

    def _response(self, response: Any) -> None:
        if response.status >= 400 and not _browser_initiated(response.url, self.origin):
            self.problems.append(f"network: HTTP {response.status} for {response.url}")

    def found(self) -> list[str]:
        problems = [p for p in self.problems if not any(n.search(p) for n in KNOWN_NOISE)]
        return list(dict.fromkeys(problems))  # keep order, drop repeats


def check_page(
    browser: Any,
    url: str,
    origin: str,
    name: str,
    source: str | None,
    screenshots: Path | None,
    redirect: str | None = None,
) -> PageReport:
    """Open ``url`` in a fresh browser context and check it (the module docstring: what fails)."""
    from playwright.sync_api import Error as PlaywrightError

    start = time.perf_counter()
    problems: list[str] = []
    shots: list[str] = []
    if redirect:
        return PageReport(name, problems, {"redirect": redirect}, shots, 0.0)
    context = browser.new_context(
        viewport={"width": WIDTH, "height": HEIGHT}, device_scale_factor=1, service_workers="block"
    )
    report: dict[str, Any] = {}
    try:
        page = context.new_page()
        page.set_default_timeout(PAGE_TIMEOUT_S * 1000)
        events = _Events(page, origin)
        try:
            page.goto(url, wait_until="load")
        except PlaywrightError as error:
            problems.append(f"load: {str(error).splitlines()[0]}")
        else:
            try:
                report = json.loads(page.evaluate(PAGE_PROBE))
            except PlaywrightError as error:
                raise BrowserError(f"{name}: probe failed: {error}") from error
            problems += _page_problems(report, source)
            if screenshots is not None:
                stem = name.removesuffix(".html").replace("/", "__")
                for mode in ("light", "dark"):
                    if mode == "dark":
                        page.evaluate(DARK_MODE)
                    path = screenshots / f"{stem}.{mode}.png"
                    _screenshot(page, report["height"], path)
                    shots.append(str(path))
            page.evaluate("1")  # let pending console messages and errors arrive
        problems += events.found()
    finally:
        context.close()
    counts = report.get("counts", {})
    stats = {"math": counts.get("math", 0), "mathjax": report.get("mathjax")}
    stats |= {"images": counts.get("images", 0), "figures": counts.get("figures", 0)}
    stats["blocks"] = report.get("blocks")
    return PageReport(name, problems, stats, shots, time.perf_counter() - start)


def _screenshot(page: Any, height: int, path: Path) -> None:
    height = max(HEIGHT, min(int(height), MAX_SCREENSHOT_HEIGHT))
    image = page.screenshot(
        full_page=True, clip={"x": 0, "y": 0, "width": WIDTH, "height": height}, type="png"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(image)
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
    problems += [f"figure without a numbered caption: {src}" for src in report["uncaptioned"]]
    if source is not None:
        rendered = Counter(report["blocks"])
        for kind, expected in sorted(expected_blocks(source).items()):
            if rendered[kind] < expected:
                problems.append(
                    f"blocks: {expected} {kind} directive(s) in the source, "
                    f"{rendered[kind]} rendered"
                )
    return problems


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
    if (missing := playwright_missing()) is not None:
        raise BrowserError(missing)
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    html_dir = html_dir.resolve()
    pages = pages if pages is not None else list_pages(html_dir)
    server = _serve(html_dir)
    origin = f"http://127.0.0.1:{server.server_address[1]}/"
    reports = []
    try:
        with sync_playwright() as playwright:
            try:
                browser = playwright.chromium.launch(
                    executable_path=executable, args=list(CHROMIUM_ARGS), timeout=60_000
                )
            except PlaywrightError as error:
                raise BrowserError(f"{executable} did not start: {error}") from error
            try:
                if progress:
                    print(f"Chromium {browser.version}, serving {html_dir} at {origin}", flush=True)
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
                browser.close()
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
    parser = argparse.ArgumentParser(
        prog="python -m tools.browser_check", description=__doc__.splitlines()[0]
    )
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
