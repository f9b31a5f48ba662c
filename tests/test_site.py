"""The book as a website: jupyter-book 1.x (Sphinx) builds it offline, and headless Chromium
checks every chapter page renders its maths, shows its figures and has no broken links.
A screenshot of Chapter 5 is saved to build/test-artifacts/ as a test artifact."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BOOK = ROOT / "book"
ARTIFACTS = ROOT / "build" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROME_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chapters() -> list[str]:
    toc = (BOOK / "_toc.yml").read_text()
    return re.findall(r"(?:root|file):\s*(\S+)", toc)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    jb = Path(sys.executable).with_name("jupyter-book")
    proc = subprocess.run([str(jb), "build", str(BOOK), "--path-output", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    html = out / "_build" / "html"
    assert html.is_dir()
    return html


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.hrefs, self.imgs, self.scripts = [], [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.hrefs.append(a["href"])
        if tag == "img" and a.get("src"):
            self.imgs.append(a["src"])
        if tag == "script" and a.get("src"):
            self.scripts.append(a["src"])


def _local(ref: str) -> bool:
    return not re.match(r"^(https?:|mailto:|#|data:|javascript:)", ref)


def _notebook_facts(name: str) -> tuple[int, bool]:
    nb = json.loads((BOOK / f"{name}.ipynb").read_text())
    figures = sum(1 for c in nb["cells"] for o in c.get("outputs", []) if "image/png" in o.get("data", {}))
    maths = any("$" in "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    return figures, maths


@pytest.mark.parametrize("name", chapters())
def test_chapter_page_has_figures_and_no_broken_links(site, name):
    page = site / f"{name}.html"
    assert page.is_file(), f"{name}.html was not built"
    parser = _Links()
    parser.feed(page.read_text())
    for ref in parser.hrefs + parser.imgs + parser.scripts:
        if _local(ref):
            target = (page.parent / ref.split("#")[0].split("?")[0]).resolve()
            assert target.exists(), f"{name}.html links to missing {ref}"
    figures, _ = _notebook_facts(name)
    shown = [i for i in parser.imgs if _local(i) and not i.endswith(".svg")]
    assert len(shown) >= figures, f"{name}: {figures} figures in the notebook, {len(shown)} on the page"
    assert not any("cdn" in s or s.startswith("http") for s in parser.scripts), "page loads a remote script"


def _chromium(*args, timeout=60):
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs Debian's chromium)")
        pytest.skip("chromium not installed: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", *args],
                              capture_output=True, text=True, timeout=timeout)


class _Text(HTMLParser):
    """Visible text outside code blocks, scripts and styles."""

    SKIP = {"script", "style", "pre", "code", "mjx-assistive-mml"}

    def __init__(self):
        super().__init__()
        self.depth, self.text = 0, []

    def handle_starttag(self, tag, attrs):
        self.depth += tag in self.SKIP

    def handle_endtag(self, tag):
        self.depth -= tag in self.SKIP

    def handle_data(self, data):
        if self.depth == 0:
            self.text.append(data)


@pytest.mark.parametrize("name", chapters())
def test_chapter_maths_is_typeset_in_chromium(site, name):
    proc = _chromium("--virtual-time-budget=15000", "--dump-dom", (site / f"{name}.html").as_uri())
    dom = proc.stdout
    assert "<body" in dom, proc.stderr[-2000:]
    _, maths = _notebook_facts(name)
    if maths:
        assert dom.count("<mjx-container") > 0, f"{name}: MathJax did not typeset any maths"
    errors = re.findall(r'<mjx-merror[^>]*data-mjx-error="([^"]*)"', dom) or re.findall(r"<mjx-merror", dom)
    assert not errors, f"{name}: MathJax could not typeset {len(errors)} formulas: {errors[:3]}"
    parser = _Text()
    parser.feed(dom)
    text = "".join(parser.text)
    raw = re.findall(r"\$\$|\\(?:begin|end|tag|frac|mathbb|operatorname|hat|big|Big)\b|\\[\(\[]", text)
    assert not raw, f"{name}: raw TeX left on the page: {sorted(set(raw))}"


_CLIPPED = """<script>window.addEventListener("load", () => setTimeout(() => {
  const clipped = [...document.querySelectorAll("pre")].filter(p => p.scrollWidth > p.clientWidth + 1
      && (p.closest(".cell_output") || !["auto", "scroll"].includes(getComputedStyle(p).overflowX)));
  document.body.setAttribute("data-clipped-pre", String(clipped.length));
}, 0));</script></body>"""


@pytest.mark.parametrize("name", ["05_ppo", "10_rlhf_ppo", "12_throughput"])
def test_long_code_lines_wrap_or_scroll(site, name):
    """No code is cut off at the right edge: outputs wrap, source cells wrap or scroll sideways."""
    probe = site / f"_probe_{name}.html"
    probe.write_text((site / f"{name}.html").read_text().replace("</body>", _CLIPPED, 1))
    dom = _chromium("--virtual-time-budget=15000", "--window-size=1024,1400", "--dump-dom", probe.as_uri()).stdout
    found = re.search(r'data-clipped-pre="(\d+)"', dom)
    assert found, "the probe script did not run"
    assert found.group(1) == "0", f"{name}: {found.group(1)} code blocks are cut off at the right edge"


def test_screenshot_of_chapter_5(site):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "05_ppo.png"
    shot.unlink(missing_ok=True)
    _chromium("--virtual-time-budget=15000", "--window-size=1280,1800", f"--screenshot={shot}",
              (site / "05_ppo.html").as_uri())
    assert shot.is_file() and shot.stat().st_size > 20_000
