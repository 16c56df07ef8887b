"""The run report in real headless Chromium (as tests/test_view_browser.py drives it), 1280 px wide:
the headline table is the first table of report.html, it holds every instrument of report.json's
headline, and the page needs no horizontal scrolling. Skipped, saying why, without a chromium binary."""

import pytest

from pipeline.core.jsonio import read_json
from tests.test_eval_intervals import graded_run
from tests.test_view_browser import Chromium, chromium_binary

pytestmark = pytest.mark.skipif(
    chromium_binary() is None, reason="no chromium binary on PATH (apt-get install chromium; .ci/run installs it)"
)


def test_the_headline_is_the_first_table_and_fits_1280_pixels(tmp_path):
    run = tmp_path / "run"
    graded_run(run)
    instruments = [i["name"] for i in read_json(run / "report.json")["headline"]["instruments"]]
    with Chromium(tmp_path / "profile", width=1280, height=900) as browser:
        browser.open(run / "report.html")
        first = browser.eval(
            "[...document.querySelector('table').querySelectorAll('th')].map((th) => th.textContent.trim())"
        )
        assert first[0] == "model" and first[1:] == instruments
        assert browser.eval("[...document.querySelectorAll('h2')][0].textContent").startswith("Headline")
        width = browser.eval("document.documentElement.scrollWidth")
        assert width <= 1280, f"the page is {width} px wide at a 1280 px window"
        browser.screenshot(tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 10_000
