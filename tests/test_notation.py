"""Chapters keep the symbols that the page *Notation and conventions* reserves.

``book/notation.md`` gives every symbol one meaning. This test holds each chapter's prose (code
cells removed) against patterns that would give a reserved symbol a second meaning: the
log-likelihood written as the ELBO's 𝓛, ε as a perturbation or as noise, S as a sample count, d
for the entries of D, s for a singular value or a noise level, β for the squared-error weight
2σ², μ for the encoder's mean. The synthetic texts below show that each pattern catches what it
is meant to catch and lets the book's own notation pass.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

BOOK = Path(__file__).resolve().parents[1] / "book"

# One pattern per misuse; the message says what the book uses instead.
RESERVED: dict[str, tuple[str, str]] = {
    "loglik-as-L": (
        r"(?<!\\overline\{)\\mathcal\s?L\s*(\^\s*\*|\(\s*(W|\\cdot))",
        "𝓛 is the ELBO; the average log-likelihood is ℓ(W, σ²), its maximum over W is ℓ̂(σ²)",
    ),
    "loglik-as-L/N": (
        r"\\frac\s*\{?1\}?\s*\{?N\}?\s*\\mathcal\s?L",
        "the average log-likelihood is ℓ, not 𝓛/N",
    ),
    "epsilon-perturbation": (
        r"\\(?:var)?epsilon\s*(\^|u_|A\b|\\eta)|C_\\(?:var)?epsilon",
        "ε is the collapse threshold; a perturbation size is h",
    ),
    "epsilon-noise": (
        r"(\\sigma|\\odot|D\^\{1/2\})\s*\\(?:var)?epsilon|\\(?:var)?epsilon\s*\\sim",
        "ε is the collapse threshold; standard normal noise is ξ",
    ),
    "S-as-count": (
        r"\$S\s*=\s*\d|number \$S\$ of|\\sqrt\s*S\b",
        "S is the sample covariance; a number of samples is K",
    ),
    "d-entries": (
        r"(?<![A-Za-z\\])d_(?:[ijkq1-9]|\{i\})(?![A-Za-z])",
        "d is the data dimension; the entries of D are D_i",
    ),
    "s-not-encoder-std": (
        r"s_j\s*\(W\)|\\ell_s\b|(?<![A-Za-z\\])s\s*=\s*\\beta\s*\\sigma|noise \$s\$|"
        r"ELBO\}?_1\s*\(s\)|(?<![A-Za-z\\])s_j\^2\s*=\s*\\max",
        "s_i(x) is the encoder's standard deviation; singular values are ρ_j, "
        "the effective noise is τ",
    ),
    "beta-as-2sigma2": (
        r"\\beta\s*=\s*2\s*\\sigma",
        "β weighs the KL in a Gaussian ELBO; the weight against a squared error is κ = 2σ²",
    ),
    "mu-encoder-mean": (
        r"\\mu_\\phi|\\mu\s*\(x\)|\\mu_[ij]\s*(\(x\)|\^2|=\s*0)|\\mu\s*\\sim|\\tfrac12\s*\\mu\^2",
        "μ is the decoder's offset (μ̂ the data mean); the encoder's mean is m(x)",
    ),
    "xi-not-noise": (
        r"\\xi\s*\^\s*2\s*(\\le|<|collapses)",
        "ξ is standard normal noise, not a variance",
    ),
    "tau-not-noise": (
        r"\\max\s*\(\s*\\tau",
        "τ = βσ² is the effective noise, not a free-bits threshold",
    ),
    "h-not-perturbation": (
        r"\\nabla\s*h\b|\$h\s*=\s*\\frac",
        "h is a perturbation size, not a function",
    ),
}

# Every chapter is held to every reserved symbol; a chapter may add its own patterns here.
CHAPTER_EXTRAS: dict[str, dict[str, tuple[str, str]]] = {
    "ppca": {
        "ppca-total-loglik": (
            r"-\\frac\s*N\s*2\s*\\Big\[d\s*\\log",
            "pPCA's log-likelihood is averaged over the images (nats per image)",
        ),
    },
}

CODE_CELL = re.compile(r"^```\{code-cell\}.*?^```\s*$", re.M | re.S)
FRONT_MATTER = re.compile(r"\A---\n.*?\n---\n", re.S)


def chapter_prose(text: str) -> str:
    """The chapter's Markdown without its front matter and code cells (line numbers kept)."""
    blank = lambda match: "\n" * match.group(0).count("\n")  # noqa: E731
    return CODE_CELL.sub(blank, FRONT_MATTER.sub(blank, text))


def patterns_for(chapter: str) -> dict[str, tuple[str, str]]:
    return {**RESERVED, **CHAPTER_EXTRAS.get(chapter, {})}


def violations(text: str, chapter: str = "") -> list[str]:
    """``line: pattern name — what to use instead`` for each reserved symbol misused in ``text``."""
    prose = chapter_prose(text)
    found = []
    for name, (pattern, message) in patterns_for(chapter).items():
        for match in re.finditer(pattern, prose):
            line = prose.count("\n", 0, match.start()) + 1
            found.append(f"{chapter}.md:{line}: {match.group(0)!r} ({name}) — {message}")
    return found


CHAPTERS = sorted(path.stem for path in BOOK.glob("*.md"))


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_chapter_keeps_the_reserved_symbols(chapter):
    text = (BOOK / f"{chapter}.md").read_text(encoding="utf-8")
    found = violations(text, chapter)
    assert not found, "symbols used against book/notation.md:\n" + "\n".join(found)


def test_the_notation_page_is_first_in_the_foundations():
    toc = (BOOK.parent / "_toc.yml").read_text(encoding="utf-8")
    foundations = toc.split("caption: Foundations", 1)[1]
    first = re.search(r"file:\s*(\S+)", foundations).group(1)
    assert first == "book/notation"


# Each reserved pattern, with a misuse it must catch and the book's notation it must let pass.
MISUSES = {
    "loglik-as-L": (r"$\mathcal L(W, \sigma^2) = 1$", r"$\overline{\mathcal L}^*(W, \sigma^2)$"),
    "loglik-as-L/N": (r"$\frac1N\mathcal L$", r"$\ell(W, \sigma^2)$ and $\mathcal L(x)$"),
    "epsilon-perturbation": (r"moving it to $\varepsilon u_i$", r"below $\varepsilon = 0.01$ nats"),
    "epsilon-noise": (r"$x = Wz + \mu + \sigma\varepsilon$", r"$x = Wz + \mu + \sigma\xi$"),
    "S-as-count": (r"with $S = 4$ samples", r"the trace $\operatorname{tr} S$"),
    "d-entries": (
        r"$D = \operatorname{diag}(d_1, \dots, d_q)$",
        r"$D_i = \sigma^2/M_{ii}$, $\frac{d}{d\tau}$",
    ),
    "s-not-encoder-std": (r"put $s = \beta\sigma^2$", r"$s_i^2(x) = \sigma^2/M_{ii}$"),
    "beta-as-2sigma2": (r"so $\beta = 2\sigma^2$", r"so $\kappa = 2\sigma^2$ and $\beta = 1$"),
    "mu-encoder-mean": (
        r"$\mathcal N(\mu_\phi(x), s^2)$",
        r"$\mathcal N(m_\phi(x), s^2)$, $x - \mu$",
    ),
    "xi-not-noise": (r"a variance $\xi^2 \le \beta$", r"$z = m + s \odot \xi$"),
    "tau-not-noise": (r"$\max(\tau, \operatorname{KL}_j)$", r"$\tau = \beta\sigma^2$"),
    "h-not-perturbation": (r"so $\nabla h = 0$", r"moving it to $h u_i$"),
}


def test_every_reserved_pattern_has_a_synthetic_check():
    assert set(MISUSES) == set(RESERVED)


@pytest.mark.parametrize("name", sorted(MISUSES))
def test_an_injected_misuse_fails_and_the_books_notation_passes(name):
    misuse, correct = MISUSES[name]
    chapter = f"---\nkernelspec:\n  name: python3\n---\n# A chapter\n\nText {correct}.\n"
    assert violations(chapter, "synthetic") == []
    injected = chapter + f"\nA new paragraph uses {misuse}.\n"
    found = violations(injected, "synthetic")
    assert found and all(f"({name})" in line for line in found), found
    assert found[0].startswith("synthetic.md:9:")


def test_code_cells_are_not_prose():
    chapter = "# A chapter\n\n```{code-cell} ipython3\nlabel = r'$\\mathcal L(W, s)$'\n```\n"
    assert violations(chapter) == []
    assert violations(chapter.replace("```{code-cell} ipython3", "```")) != []
