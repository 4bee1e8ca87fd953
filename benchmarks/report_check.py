"""Open a ``snakemake --report`` HTML file in headless Chromium and check that it shows every
figure and table: each image result is displayed by the report's own viewer and has loaded
(``naturalWidth > 0``), each HTML table page is displayed and holds a table with rows. Writes a
screenshot of the report's start page and one per figure. Stdlib only, plus a Chromium binary.

    python benchmarks/report_check.py report.html --screenshots shots/   # exit 1 on a failure

The report is a single page app whose results are data URIs in the global ``results``; the check
is a script appended to a copy of the page, which drives the app (``app.setView``, as its own view
buttons do) and writes its verdict into the page; ``--dump-dom`` hands the page back.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome")

CHECK_SCRIPT = """
<script id="report-check">
(async () => {
  const wait = ms => new Promise(done => setTimeout(done, ms));
  for (let i = 0; i < 200 && typeof app === "undefined"; i++) await wait(50);
  const show = new URLSearchParams(location.search).get("show");
  const entries = Object.entries(results);
  if (show === "start") return;  // screenshot of the start page as the report opens
  if (show !== null) {  // screenshot mode: display one result and stop
    const [path, entry] = entries[Number(show)];
    app.setView({content: entry.mime_type.startsWith("image/") ? "img" : "html",
                 contentPath: entry.data_uri, resultPath: path});
    return;
  }
  const verdict = {results: [], app: typeof app !== "undefined"};
  for (const [path, entry] of entries) {
    const row = {path: path, mime: entry.mime_type, category: entry.category || null};
    if (entry.mime_type.startsWith("image/")) {
      app.setView({content: "img", contentPath: entry.data_uri, resultPath: path});
      let img;
      for (let i = 0; i < 100; i++) {
        await wait(50);
        img = Array.from(document.images).find(image => image.src === entry.data_uri);
        if (img && img.complete) break;
      }
      row.shown = Boolean(img);
      row.width = img ? img.naturalWidth : 0;
      row.height = img ? img.naturalHeight : 0;
      row.ok = Boolean(img && img.complete && img.naturalWidth > 0 && img.naturalHeight > 0);
    } else if (entry.mime_type === "text/html") {
      app.setView({content: "html", contentPath: entry.data_uri, resultPath: path});
      await wait(200);
      const frame = Array.from(document.querySelectorAll("iframe")).find(f => f.src === entry.data_uri);
      const page = await (await fetch(entry.data_uri)).text();
      const doc = new DOMParser().parseFromString(page, "text/html");
      row.shown = Boolean(frame);
      row.rows = doc.querySelectorAll("table tbody tr").length;
      row.ok = row.shown && row.rows > 0;
    } else {
      row.ok = null;  // offered as a download: nothing to display
    }
    verdict.results.push(row);
  }
  const pre = document.createElement("pre");
  pre.id = "report-check-verdict";
  pre.textContent = JSON.stringify(verdict);
  document.body.appendChild(pre);
})();
</script>
"""


def find_chromium() -> str | None:
    """The Chromium binary: $CHROMIUM, else the first of the usual names on PATH."""
    if os.environ.get("CHROMIUM"):
        return os.environ["CHROMIUM"]
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def _chromium(binary: str, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               f"--user-data-dir={profile}", "--window-size=1400,1000",
                               "--virtual-time-budget=20000", *args, url],
                              capture_output=True, text=True, timeout=300)


def check_report(report: Path, screenshots: Path | None = None, binary: str | None = None) -> dict:
    """The verdict for each result of ``report`` (see the module docstring); screenshots on request."""
    binary = binary or find_chromium()
    if binary is None:
        raise FileNotFoundError("no Chromium found (set CHROMIUM or install chromium)")
    text = report.read_text(encoding="utf-8")
    if "var results" not in text:
        raise ValueError(f"{report}: not a snakemake HTML report (no results record)")
    with tempfile.TemporaryDirectory() as work:
        page = Path(work) / "report.html"
        end = text.rfind("</body>")  # the page's own: embedded libraries hold the string too
        page.write_text(text[:end] + CHECK_SCRIPT + text[end:], encoding="utf-8")
        url = page.as_uri()
        dom = _chromium(binary, url, "--dump-dom")
        found = re.search(r'<pre id="report-check-verdict">(.*?)</pre>', dom.stdout, re.S)
        if not found:
            raise RuntimeError(f"{report}: the check did not finish in Chromium: {dom.stderr[-2000:]}")
        verdict = json.loads(html.unescape(found.group(1)))  # --dump-dom escapes the text node
        if screenshots is not None:
            screenshots.mkdir(parents=True, exist_ok=True)
            _chromium(binary, url + "?show=start", f"--screenshot={screenshots / 'report.png'}")
            for index, row in enumerate(verdict["results"]):
                if row["mime"].startswith("image/") or row["mime"] == "text/html":
                    name = re.sub(r"[^A-Za-z0-9._-]+", "_", row["path"]).strip("_")
                    shot = screenshots / f"{name}.png"
                    _chromium(binary, f"{url}?show={index}", f"--screenshot={shot}")
                    row["screenshot"] = str(shot)
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--screenshots", type=Path, help="folder for the screenshots")
    args = parser.parse_args(argv)
    verdict = check_report(args.report, args.screenshots)
    failed = [row for row in verdict["results"] if row["ok"] is False]
    for row in verdict["results"]:
        state = {True: "shown", False: "FAILED", None: "download"}[row["ok"]]
        detail = (f"{row['width']}x{row['height']} px" if "width" in row
                  else f"{row['rows']} table rows" if "rows" in row else "")
        print(f"{state:8} {row['mime']:14} {row['path']} {detail}")
    print(f"{len(verdict['results'])} results, {len(failed)} failed")
    return 1 if failed or not verdict["results"] else 0


if __name__ == "__main__":
    sys.exit(main())
