"""`survey report` on a tiny survey with MEIs: every figure drawn from its query, rendered by headless Chromium with
no console error and no broken image; a warehouse with empty tables says which stage fills each figure."""

import copy
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

from survey.catalog import Warehouse, read_only
from survey.config import parse_config
from survey.report.html import SECTIONS, build_report
from survey.runtime.survey import run_survey

from .conftest import TINY, survey_cli

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--allow-file-access-from-files",
                  "--virtual-time-budget=10000"]

# Injected into a copy of the page by the test only: after load, records on <body> which images failed to decode
# and every error event (a missing file is one), so that --dump-dom shows them.
PROBE = """<script>
const errors = [];
window.addEventListener('error', e => errors.push(e.message || (e.target && (e.target.src || e.target.href))), true);
window.addEventListener('load', () => {
  const broken = [...document.images].filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src);
  document.body.dataset.images = document.images.length;
  document.body.dataset.broken = JSON.stringify(broken);
  document.body.dataset.errors = JSON.stringify(errors);
});
</script>"""


def tiny_with_meis() -> dict:
    config = copy.deepcopy(TINY)
    config["zoo"]["replicas"] = {"architectures": 1, "objectives": ["supervised"], "seeds": 1}
    config["prior"] = {"stimuli": "natural", "steps": 40, "n_patches": 300, "widths": [8, 16],  # mechanics only
                       "check_samples": 8, "check_steps": 20}
    config["mei"] = {"stimuli": "natural", "seeds": [0], "steps": 40, "methods": ["ga", "egg"], "egg": {"steps": 8},
                     "targets_sql": "SELECT name AS network, layers[len(layers) - 1] AS layer, unnest(range(2)) "
                                    "AS unit, NULL AS session, NULL AS area FROM networks "
                                    "WHERE name = 'zoo000-supervised'"}
    return config


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    warehouse = Warehouse(root / "wh")
    run_survey(parse_config(tiny_with_meis()), warehouse, progress=False)
    index, results = build_report(warehouse, root / "report")
    return warehouse, index, results


def browser() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI installs Debian's chromium (.ci/run); it is missing")
        pytest.skip("headless Chromium is not installed (apt-get install chromium)")
    return found


def test_every_figure_is_drawn_from_its_shown_read_only_query(reported) -> None:
    _, index, results = reported
    page = index.read_text()
    for section in SECTIONS:
        assert f'<section id="{section.name}">' in page
        assert f'<img src="{section.name}.png"' in page, f"{section.name}: no figure (its table is empty?)"
        assert (index.parent / f"{section.name}.png").stat().st_size > 5_000
        read_only(section.sql, section.name)
    assert "No rows yet" not in page
    assert page.count("<details><summary>SQL</summary>") == len(SECTIONS) + len(results)
    assert "http://" not in page and "https://" not in page  # nothing fetched from the network
    assert {f.paper for f in results} >= {"Williams et al. 2021", "Kuoch et al. 2023", "Wang & Ponce 2022"}


def test_the_report_renders_in_headless_chromium_without_errors(reported, tmp_path) -> None:
    _, index, _ = reported
    probe = index.parent / "probe.html"
    probe.write_text(index.read_text().replace("</head>", PROBE + "</head>"))
    chromium = browser()
    shown = subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
                            "--enable-logging=stderr", "--v=0", probe.as_uri()],
                           capture_output=True, text=True, timeout=180)
    body = re.search(r"<body([^>]*)>", shown.stdout)
    assert body, shown.stderr[-2000:]
    attributes = dict(re.findall(r'data-(\w+)="([^"]*)"', body.group(1)))
    assert int(attributes["images"]) == len(SECTIONS), attributes
    assert attributes["broken"] == "[]" and attributes["errors"] == "[]", attributes
    console = [line for line in shown.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    screenshot = tmp_path / "report.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
                    f"--screenshot={screenshot}", "--window-size=1400,2400", index.as_uri()],
                   capture_output=True, text=True, timeout=180, check=True)
    from PIL import Image

    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=np.float64)
    assert pixels.shape == (2400, 1400)
    assert pixels.std() > 10  # text and figures, not a blank page


def test_empty_tables_say_which_stage_fills_them(tmp_path) -> None:
    warehouse = Warehouse(tmp_path / "wh")
    run_survey(parse_config(copy.deepcopy(TINY)), warehouse, stages=("stimuli",), progress=False)
    index, results = build_report(warehouse, tmp_path / "report")
    page = index.read_text()
    for section in SECTIONS:
        assert f"the <code>{section.stage}</code> stage fills this figure" in page
    assert "<img" not in page
    assert results and all(finding.holds is None and finding.note for finding in results)


def test_survey_report_prints_the_findings_and_the_path(reported, tmp_path) -> None:
    warehouse, _, results = reported
    result = survey_cli("report", "-w", warehouse.root, "--out", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert "findings of the seed papers" in result.stdout
    assert str(tmp_path / "out" / "index.html") in result.stdout.replace("\n", "")
    assert (tmp_path / "out" / "index.html").exists()
    assert len(results) >= 8
