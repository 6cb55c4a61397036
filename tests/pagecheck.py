"""Checks of generated HTML pages: every local link, image and in-page anchor resolves (no browser needed), and
the same pages rendered in headless Chromium load every image (skipped, saying why, without Chromium)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


class _Refs(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[tuple[str, str]] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        for key in ("href", "src"):
            if attrs.get(key):
                self.refs.append((tag, attrs[key]))


def broken_references(page: Path) -> list[str]:
    """Each link, image or anchor of `page` that does not resolve, as 'tag -> target'."""
    parser = _Refs()
    parser.feed(page.read_text())
    broken = []
    for tag, ref in parser.refs:
        url = urlparse(ref)
        if url.scheme in ("http", "https", "mailto"):
            continue
        if not url.path:
            if url.fragment not in parser.ids:
                broken.append(f"{tag} -> #{url.fragment} (no such id)")
            continue
        target = Path(unquote(url.path)) if url.scheme == "file" else page.parent / unquote(url.path)
        if url.scheme == "file":
            broken.append(f"{tag} -> {ref} (absolute file URL: breaks when reports/ moves)")
        elif not target.exists():
            broken.append(f"{tag} -> {ref} (missing)")
    return broken


def browser() -> str | None:
    return next((b for b in BROWSERS if shutil.which(b)), None)


# appended to a copy of the page: after load, the page's title lists images that failed to decode
_PROBE = (
    "<script>window.addEventListener('load', () => { const bad = [...document.images]"
    ".filter(i => !i.complete || i.naturalWidth === 0).map(i => i.getAttribute('src'));"
    " document.title = 'IMAGES-BROKEN:' + bad.join(',') + ':END'; });</script>"
)


def images_broken_in_browser(page: Path, exe: str) -> list[str]:
    """Render the page in headless Chromium and return the images it could not load."""
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    try:
        with tempfile.TemporaryDirectory() as profile:
            dom = subprocess.run(
                [
                    exe,
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--no-first-run",
                    f"--user-data-dir={profile}",
                    "--virtual-time-budget=10000",
                    "--dump-dom",
                    probe.resolve().as_uri(),
                ],
                capture_output=True,
                text=True,
                timeout=120,
            ).stdout
    finally:
        probe.unlink()
    start, end = dom.find("IMAGES-BROKEN:"), dom.find(":END")
    if start < 0:
        return ["(the page did not finish loading)"]
    listed = dom[start + len("IMAGES-BROKEN:") : end]
    return [x for x in listed.split(",") if x]


def screenshot(page: Path, exe: str, out: Path) -> None:
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                exe,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={profile}",
                "--window-size=1280,1600",
                f"--screenshot={out}",
                page.resolve().as_uri(),
            ],
            capture_output=True,
            timeout=120,
        )
