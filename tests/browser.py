"""Render a page in headless Chromium: a screenshot at a 1,280-px window and what the page measures of itself.

Chromium's command line cannot run scripts against a page, so a copy of the
page (next to it, so that relative pictures resolve) gets a script that, once
everything has loaded, writes its measurements into an attribute of
``<body>``; ``--dump-dom`` prints the document with it.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

WIDTH = 1280

_MEASURE = """
<script>
window.addEventListener("load", () => {
  const sortColumn = %(sort_column)s;
  if (sortColumn !== null) document.querySelectorAll("th")[sortColumn].click();
  const images = Array.from(document.images);
  const firstRow = document.querySelector("tbody tr");
  const smallest = Math.min(
    ...images.filter(i => i.naturalWidth > 0 && !i.classList.contains("thumbnail"))
      .map(i => i.getBoundingClientRect().width / i.naturalWidth), 1);
  document.body.setAttribute("data-measured", JSON.stringify({
    scroll_width: document.documentElement.scrollWidth,
    images: images.length,
    images_loaded: images.filter(i => i.complete && i.naturalWidth > 0).length,
    smallest_image_scale: smallest,
    first_after_sort: firstRow ? firstRow.cells[1].textContent : null,
  }));
});
</script>
"""


def chromium() -> str | None:
    """The Chromium executable, or None where none is installed."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _run(browser: str, *arguments: str) -> str:
    command = [
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={WIDTH},1000",
        "--virtual-time-budget=10000",
        "--allow-file-access-from-files",
        *arguments,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True).stdout


def screenshot_and_measure(browser: str, page: Path, screenshot: Path, *, sort_column: int | None = None) -> dict:
    """Screenshot ``page`` at a 1,280-px-wide window and return its measurements.

    ``scroll_width`` (document width: above 1,280 means horizontal overflow),
    ``images`` and ``images_loaded`` (``naturalWidth > 0``),
    ``smallest_image_scale`` (displayed over natural width, 1 when none is
    shrunk), and ``first_after_sort`` (the second cell of the first row
    after clicking header ``sort_column``).
    """
    probe = page.with_name(f".measure-{page.name}")
    text = page.read_text()
    probe.write_text(text.replace("</body>", _MEASURE % {"sort_column": json.dumps(sort_column)} + "</body>"))
    try:
        dom = _run(browser, "--dump-dom", probe.as_uri())
        _run(browser, f"--screenshot={screenshot}", page.as_uri())
    finally:
        probe.unlink(missing_ok=True)
    found = re.search(r'data-measured="([^"]*)"', dom)
    if found is None:
        raise AssertionError(f"the page did not report its measurements; DOM starts {dom[:300]!r}")
    return json.loads(found.group(1).replace("&quot;", '"'))
