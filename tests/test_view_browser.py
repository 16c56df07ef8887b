"""`evol view`'s page in real headless Chromium (Debian's package; .ci/run installs it), loaded from disk
(file://) with no network: every kept id is on some page, each filter shows exactly the rows it should
across all pages, the search finds an item, a parent link jumps to the parent (and back), hostile model
text stays text. Skipped, saying why, when there is no chromium binary.

Chromium is driven by the DevTools protocol over --remote-debugging-pipe (NUL-separated JSON on file
descriptors 3 and 4): no websocket library, no chromedriver, no port. Every wait is for a state of the
page, checked each animation frame, with a deadline only as a guard (never a fixed sleep).
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from evolve_local.evolve import run_evolve
from pipeline.core.records import iter_attempts
from pipeline.view import VIEW_FILE, write_viewer
from tests.conftest import SEEDS, Factory, make_config, write_seeds
from tests.test_view import HOSTILE, MORE_SEEDS

# ---------------------------------------------------------------- a small DevTools client

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--remote-debugging-pipe",
)


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(RuntimeError):
    pass


class Chromium:
    def __init__(self, profile: Path, width: int = 1400, height: int = 900, deadline_s: float = 120.0):
        self.profile, self.size, self.deadline_s = Path(profile), (width, height), deadline_s
        self.next_id, self.buffer, self.events = 0, b"", []

    def __enter__(self) -> Chromium:
        to_browser_r, self.to_browser = os.pipe()
        self.from_browser, from_browser_w = os.pipe()

        def pipes_on_3_and_4():  # in the child, before exec: the protocol's fixed descriptors
            os.dup2(to_browser_r, 3)
            os.dup2(from_browser_w, 4)

        self.proc = subprocess.Popen(
            [
                chromium_binary(),
                *FLAGS,
                f"--user-data-dir={self.profile}",
                f"--window-size={self.size[0]},{self.size[1]}",
            ],
            preexec_fn=pipes_on_3_and_4,
            pass_fds=(3, 4),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Runtime.enable", session=True)
        width, height = self.size
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=True,
        )
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (BrowserError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.to_browser)
        os.close(self.from_browser)

    # ---- the protocol

    def _read_message(self, until: float) -> dict:
        while b"\0" not in self.buffer:
            left = until - time.monotonic()
            if left <= 0 or not select.select([self.from_browser], [], [], left)[0]:
                raise BrowserError("Chromium did not answer before the deadline.")
            chunk = os.read(self.from_browser, 1 << 20)
            if not chunk:
                raise BrowserError(f"Chromium closed the protocol pipe (exit status {self.proc.poll()}).")
            self.buffer += chunk
        message, self.buffer = self.buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, params: dict | None = None, session: bool = False, timeout: float | None = None):
        self.next_id += 1
        message = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        os.write(self.to_browser, json.dumps(message).encode() + b"\0")
        until = time.monotonic() + (timeout or self.deadline_s)
        while True:
            reply = self._read_message(until)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise BrowserError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str) -> dict:
        until = time.monotonic() + self.deadline_s
        while True:
            for event in self.events:
                if event.get("method") == method:
                    self.events.remove(event)
                    return event
            self.events.append(self._read_message(until))

    # ---- the page

    def open(self, path: Path) -> None:
        self.events.clear()
        self.call("Page.navigate", {"url": Path(path).resolve().as_uri()}, session=True)
        self.wait_event("Page.loadEventFired")

    def eval(self, expression: str):
        """The value of a JS expression (a promise is awaited); a thrown error fails the test with its text."""
        result = self.call(
            "Runtime.evaluate",
            {"expression": expression, "awaitPromise": True, "returnByValue": True},
            session=True,
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise BrowserError(details.get("exception", {}).get("description") or details.get("text"))
        return result["result"].get("value")

    def wait(self, condition: str) -> None:
        """Until the JS `condition` holds, checked after each animation frame."""
        ok = self.eval(
            f"new Promise((done) => {{ const until = performance.now() + {int(self.deadline_s * 1000)};"
            f" const check = () => {{ let ok = false; try {{ ok = !!({condition}); }} catch (e) {{}}"
            " if (ok || performance.now() > until) done(ok); else requestAnimationFrame(check); }; check(); })"
        )
        if not ok:
            raise BrowserError(f"the page never reached: {condition}")

    def screenshot(self, path: Path, full_page: bool = False) -> Path:
        params = {"format": "png", "captureBeyondViewport": full_page}
        data = self.call("Page.captureScreenshot", params, session=True)["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def console_errors(self) -> list[str]:
        return [
            json.dumps(e["params"])
            for e in self.events
            if e.get("method") == "Runtime.exceptionThrown"
            or (e.get("method") == "Runtime.consoleAPICalled" and e["params"].get("type") == "error")
        ]


# ---------------------------------------------------------------- the page

pytestmark = pytest.mark.skipif(
    chromium_binary() is None, reason="no chromium binary on PATH (apt-get install chromium; .ci/run installs it)"
)

# Every row of every page under the current filters, walking the pager from the first page.
ALL_PAGES = """(() => {
  document.getElementById("first").click();
  const ids = [];
  for (;;) {
    ids.push(...[...document.querySelectorAll("#rows tr")].map((tr) => tr.dataset.id));
    const next = document.getElementById("next");
    if (next.disabled) return ids;
    next.click();
  }
})()"""


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """The run of tests/test_view.py (twin, contaminated and hostile seeds, 42 of them), its data.html,
    and its records."""
    tmp = tmp_path_factory.mktemp("viewed")
    config = make_config(tmp, rounds=2, seeds=write_seeds(tmp, SEEDS + MORE_SEEDS))
    run_evolve(config, tmp / "run", Factory().models, quiet=True)
    write_viewer(tmp / "run")
    return tmp / "run" / VIEW_FILE, list(iter_attempts(tmp / "run"))


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    with Chromium(tmp_path_factory.mktemp("chromium-profile")) as chromium:
        yield chromium


@pytest.fixture
def opened(page, browser):
    path, records = page
    browser.open(path)
    browser.wait("document.body.dataset.ready === '1'")
    return browser, records


def choose(browser, **values) -> None:
    """Set filters as a user does (the control's value, then its change event)."""
    for name, value in values.items():
        browser.eval(
            f"(() => {{ const c = document.getElementById('f-{name}'); c.value = {json.dumps(str(value))};"
            f" c.dispatchEvent(new Event('change')); }})()"
        )


def test_every_kept_id_is_on_some_page_and_the_counts_match(opened):
    browser, records = opened
    assert browser.eval("document.getElementById('stats-check').dataset.ok") == "1"
    assert browser.eval("document.querySelectorAll('#counts-rules td.diff').length") == 0
    everything = browser.eval(ALL_PAGES)
    assert everything == [r.id for r in records]  # every attempt once, in the round files' order
    assert int(browser.eval("document.getElementById('page-info').dataset.pages")) == -(-len(records) // 50) > 1
    choose(browser, outcome="kept")
    kept = browser.eval(ALL_PAGES)
    assert sorted(kept) == sorted(r.id for r in records if r.kept)
    assert browser.console_errors() == []


@pytest.mark.parametrize(
    "filters",
    [
        {"outcome": "eliminated"},
        {"rule": "no_information_gain"},
        {"rule": "near_duplicate"},
        {"round": 2},
        {"round": 1, "outcome": "kept"},
        {"round": 2, "op": "deepen"},
    ],
    ids=lambda f: ",".join(f"{k}={v}" for k, v in f.items()),
)
def test_a_filter_shows_exactly_the_rows_it_should(opened, filters):
    browser, records = opened

    def wanted(r) -> bool:
        return (
            ("outcome" not in filters or (r.kept == (filters["outcome"] == "kept")))
            and ("rule" not in filters or r.elimination_rule == filters["rule"])
            and ("round" not in filters or r.round == filters["round"])
            and ("op" not in filters or r.operation == filters["op"])
        )

    expected = [r.id for r in records if wanted(r)]
    assert 0 < len(expected) < len(records)
    values = dict(filters)
    if "rule" in values:  # the controls hold indices into the page's vocabularies
        values["rule"] = browser.eval(
            f"[...document.getElementById('f-rule').options].find(o => o.text === '{values['rule']}').value"
        )
    if "op" in values:
        values["op"] = browser.eval(
            f"[...document.getElementById('f-op').options].find(o => o.text === '{values['op']}').value"
        )
    choose(browser, **values)
    assert browser.eval("document.getElementById('result-count').dataset.count") == str(len(expected))
    assert browser.eval("document.querySelectorAll('#rows tr').length") == min(50, len(expected))
    assert browser.eval(ALL_PAGES) == expected


def test_the_search_finds_an_item_and_hostile_text_stays_text(opened):
    browser, records = opened
    choose(browser, search="PWNED  onerror")  # every word, any case
    hostile = [r.id for r in records if "pwned" in r.instruction.lower() and "onerror" in r.instruction.lower()]
    assert hostile and browser.eval(ALL_PAGES) == hostile
    browser.eval(f"location.hash = '#item=' + encodeURIComponent({json.dumps(hostile[0])})")
    browser.wait(f"document.getElementById('detail-id').textContent === {json.dumps(hostile[0])}")
    assert browser.eval("document.querySelector('#detail pre.instruction').textContent") == HOSTILE
    assert browser.eval("typeof window.pwned") == "undefined"
    assert browser.eval("document.querySelectorAll('img, body script:not(#viewer):not(#evol-data)').length") == 0
    choose(browser, search=records[-1].id)
    assert browser.eval("document.getElementById('result-count').dataset.count") == "1"
    assert browser.eval("document.querySelector('#rows tr').dataset.id") == records[-1].id


def test_a_parent_link_jumps_to_the_parent_and_back(opened):
    browser, records = opened
    by_id = {r.id: r for r in records}
    # an evolution of round 2 whose parent is a kept evolution of round 1 (not the seed)
    item = next(r for r in records if r.round == 2 and r.parent_id and by_id[r.parent_id].round == 1)
    browser.eval(f"location.hash = '#item=' + encodeURIComponent({json.dumps(item.id)})")
    browser.wait(f"document.getElementById('detail-id').textContent === {json.dumps(item.id)}")
    browser.eval("document.querySelector('#detail a[data-rel=parent]').click()")
    browser.wait(f"document.getElementById('detail-id').textContent === {json.dumps(item.parent_id)}")
    assert browser.eval("document.querySelector('#rows tr.selected').dataset.id") == item.parent_id
    children = browser.eval("[...document.querySelectorAll('#detail a[data-rel=child]')].map(a => a.textContent)")
    assert children == [r.id for r in records if r.parent_id == item.parent_id]
    lineage = browser.eval("[...document.querySelectorAll('#detail a[data-rel=lineage]')].map(a => a.textContent)")
    assert lineage == [r.id for r in records if r.root_id == item.root_id]
    browser.eval("history.back()")
    browser.wait(f"document.getElementById('detail-id').textContent === {json.dumps(item.id)}")
