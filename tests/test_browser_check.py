"""The browser check has teeth, and the offline-maths wiring of the book build is in place.

The browser tests open hand-written pages in headless Chromium (Debian's, driven by Playwright):
one with every defect the check looks for, one clean, and a pair that differ only in whether
the figure's caption is numbered. They are skipped where no Chromium is installed (``.ci/run``
installs Debian's before running the tests).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image

from tools import browser_check, build_book

BAD_PAGE = r"""<!doctype html>
<html><head><meta charset="utf-8"><title>bad</title>
<script src="https://cdn.example.com/lib.js"></script>
</head><body><main>
<p>Raw inline $x^2$ in prose.</p>
<p>A display that was never typeset: \begin{equation} y = 1 \end{equation}</p>
<span class="math notranslate nohighlight">\(\sigma^2\)</span>
<p>A stray dollar: $<span class="math"><mjx-container>x</mjx-container></span>.</p>
<pre>code may contain $HOME and \(escapes\)</pre>
<img src="missing.png" alt="missing">
<img src="transparent.png" alt="transparent figure">
<figure id="unnumbered"><img src="opaque.png" alt="captioned, no number">
<figcaption><p><span class="caption-text">A caption without a number.</span></p></figcaption>
</figure>
<script>console.error("console boom");</script>
<script>throw new Error("uncaught boom");</script>
</main></body></html>
"""

GOOD_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>good</title></head><body><main>
<p>Prose with a price of 5 dollars and code <code>$HOME</code>.</p>
<div class="proof theorem admonition"><p>A theorem.</p></div>
<div class="proof admonition"><p>Its proof.</p></div>
<div class="exercise admonition"><p>An exercise.</p></div>
<div class="solution dropdown admonition"><p>Its solution.</p></div>
<figure class="align-default" id="fig-opaque"><img src="opaque.png" alt="opaque figure">
<figcaption><p><span class="caption-number">Fig. 1 </span>
<span class="caption-text">An opaque figure.</span></p></figcaption></figure>
</main></body></html>
"""

# A figure as a notebook cell draws it (myst-nb), with and without a numbered caption.
CELL_FIGURE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title></head><body><main><article>
<section id="results"><h2>Results<a class="headerlink" href="#results">#</a></h2>
{figure}
</section></article></main></body></html>
"""
OUTPUT = """<div class="cell_output docutils container"><div class="output text_plain">
<img alt="../_images/cell.png" src="opaque.png"></div></div>"""
CAPTIONED = CELL_FIGURE.format(
    title="captioned",
    figure=f"""<figure class="align-default" id="fig-cell">{OUTPUT}
<figcaption><p><span class="caption-number">Fig. 7 </span>
<span class="caption-text">What the cell drew.</span></p></figcaption></figure>""",
)
UNCAPTIONED = CELL_FIGURE.format(title="uncaptioned", figure=OUTPUT)

SOURCE = """
```{prf:theorem}
A theorem.
```

```{prf:proof}
Its proof.
```

```{exercise}
An exercise.
```

````{solution-start} ex
````
"""


def test_expected_blocks_counts_directives_not_prose():
    source = SOURCE + "\nProse that mentions `{exercise}` is not a directive.\n"
    counts = browser_check.expected_blocks(source)
    assert counts == {"theorem": 1, "proof": 1, "exercise": 1, "solution": 1}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("site")
    (root / "bad.html").write_text(BAD_PAGE)
    (root / "good.html").write_text(GOOD_PAGE)
    (root / "captioned.html").write_text(CAPTIONED)
    (root / "uncaptioned.html").write_text(UNCAPTIONED)
    (root / "_sources").mkdir()
    (root / "_sources" / "bad.md").write_text(SOURCE)
    (root / "_sources" / "good.md").write_text(SOURCE)
    Image.new("RGBA", (40, 30), (255, 255, 255, 255)).save(root / "opaque.png")
    Image.new("RGBA", (40, 30), (0, 0, 0, 0)).save(root / "transparent.png")
    return root


@pytest.fixture(scope="module")
def reports(site, tmp_path_factory) -> dict[str, browser_check.PageReport]:
    if browser_check.find_chromium() is None:
        pytest.skip("no Chromium (apt-get install chromium); .ci/run installs it")
    if (missing := browser_check.playwright_missing()) is not None:
        pytest.skip(missing)
    shots = tmp_path_factory.mktemp("screenshots")
    return {r.page: r for r in browser_check.check_site(site, shots)}


def test_clean_page_passes_and_is_screenshotted(reports):
    good = reports["good.html"]
    assert good.problems == []
    assert good.stats["blocks"] == {"theorem": 1, "proof": 1, "exercise": 1, "solution": 1}
    assert [Path(p).name for p in good.screenshots] == ["good.light.png", "good.dark.png"]
    for path in good.screenshots:
        assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "expected",
    [
        "javascript: uncaught Error: uncaught boom",
        "javascript: console.error: console boom",
        "network: request to https://cdn.example.com/lib.js",
        "raw TeX: $...$",
        "raw TeX: \\begin/\\end",
        "raw TeX: $ next to typeset math",
        "math: not typeset",
        "image: does not load: missing.png",
        "transparent figure: transparent.png",
        "figure without a numbered caption: transparent.png",
        "figure without a numbered caption: missing.png",
        "figure without a numbered caption: opaque.png",
        "blocks: 1 theorem directive(s) in the source, 0 rendered",
        "blocks: 1 exercise directive(s) in the source, 0 rendered",
        "blocks: 1 solution directive(s) in the source, 0 rendered",
    ],
)
def test_each_defect_is_reported(reports, expected):
    problems = reports["bad.html"].problems
    assert any(problem.startswith(expected) for problem in problems), "\n".join(problems)


def test_a_figure_needs_a_numbered_caption(reports):
    assert reports["captioned.html"].problems == []
    assert reports["captioned.html"].stats["figures"] == 1
    assert reports["uncaptioned.html"].problems == [
        "figure without a numbered caption: opaque.png (section “Results”)"
    ]


def test_code_is_not_mistaken_for_raw_tex(reports):
    problems = reports["bad.html"].problems
    assert not any("HOME" in problem or "escapes" in problem for problem in problems), problems


def test_book_build_serves_mathjax_from_the_book(tmp_path):
    """The build config points MathJax at _static and keeps the book's TeX macros."""
    root = Path(__file__).resolve().parents[1]
    (tmp_path / "_config.yml").write_text((root / "_config.yml").read_text())
    static = tmp_path / "_build" / "mathjax" / "static"
    config_path = build_book.write_build_config(tmp_path, "fast", static)
    sphinx = yaml.safe_load(config_path.read_text())["sphinx"]
    assert sphinx["config"]["mathjax_path"] == build_book.MATHJAX_PATH
    assert sphinx["config"]["lincollapse_extra_static"] == [str(static.resolve())]
    assert sphinx["local_extensions"] == {"tools.build_book": str(build_book.TOOLS_PARENT)}
    assert "KL" in sphinx["config"]["mathjax3_config"]["tex"]["macros"]


def test_duplicate_inline_scripts_are_dropped():
    from sphinx.builders.html._assets import _JavaScript

    body = 'const THEBE_JS_URL = "x"'
    scripts = [
        _JavaScript("_static/a.js"),
        _JavaScript(None, body=body),
        _JavaScript("", body=body),
        _JavaScript("", body="other"),
    ]
    context = {"script_files": scripts}
    build_book._drop_duplicate_scripts(None, "page", "page.html", context, None)
    assert [getattr(s, "attributes", {}).get("body") for s in context["script_files"]] == [
        None,
        body,
        "other",
    ]


def test_pdf_build_explains_a_missing_latex(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(build_book, "missing_latex_tools", lambda: ["pdflatex", "latexmk"])
    assert build_book.build(tmp_path, "pdflatex") == 2
    message = capsys.readouterr().err
    assert "pdflatex, latexmk" in message and "LaTeX" in message


def test_mathjax_fetch_failure_names_the_fixes(tmp_path, monkeypatch):
    monkeypatch.setenv(build_book.MATHJAX_SOURCE_VAR, "npm")
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm on PATH
    with pytest.raises(build_book.MathJaxUnavailable, match="Install Node"):
        build_book.ensure_mathjax(tmp_path)
