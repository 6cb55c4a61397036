"""make review in a real browser (Debian's chromium driven through chromium-driver by selenium): accept, reject and
edit decisions, each checked in the saved CSVs at once; a bad value gets a message and loses nothing; a restarted
server resumes where the person stopped."""

from __future__ import annotations

import threading

import pandas as pd
import pytest
import requests

from maskcomp.analyze.review import review_server
from maskcomp.core.context import Context
from maskcomp.crop.stage import crop_faces
from maskcomp.data.folds import make_folds
from maskcomp.data.tables import load_train
from maskcomp.runs import resolve_run
from maskcomp.train.trainer import train

from conftest import TINY_MODEL, config_for

pytestmark = pytest.mark.slow


@pytest.fixture
def reviewed_run(tiny_root, tmp_path):
    """A trained run whose candidates file names three persons: a gender fix, an age fix, a swap."""
    cfg = config_for(tiny_root, tmp_path, *TINY_MODEL, "train.epochs=1")
    crop_faces(cfg)
    make_folds(cfg)
    train(cfg, folds=[0])
    run = resolve_run(cfg.paths.resolved, "sample")
    persons = load_train(Context(cfg)).drop_duplicates("person_id")["person_id"].tolist()[:3]
    rows = [
        (persons[0], "gender", "male", "female", "male"),
        (persons[1], "age", "61", "30-59 (45)", ">=60 (61)"),
        (persons[2], "swap_incorrect_normal", "", "as labelled", "swapped"),
    ]
    table = pd.DataFrame(
        [
            {
                "person_id": p,
                "fix": f,
                "value": v,
                "confidence": 0.9,
                "auto": False,
                "systematic": f == "age",
                "current": c,
                "suggested": s,
                "note": "test evidence",
            }
            for p, f, v, c, s in rows
        ]  # fmt: skip
    )
    table.to_csv(run.fix_candidates, index=False)
    return cfg, run, persons


def serve(cfg):
    server = review_server(cfg)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


def saved(run) -> tuple[pd.DataFrame, pd.DataFrame]:
    read = lambda p: pd.read_csv(p, dtype=str, keep_default_na=False) if p.exists() else pd.DataFrame()  # noqa: E731
    return read(run.reviewed_fixes), read(run.review_decisions)


def wait_text(browser, css: str, text: str) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 10).until(lambda b: text in b.find_element("css selector", css).text)


def test_decisions_are_saved_at_once_and_resumed(reviewed_run, browser):
    from selenium.webdriver.common.keys import Keys

    cfg, run, persons = reviewed_run
    server, url = serve(cfg)
    browser.get(url)
    cards = browser.find_elements("css selector", ".card")
    assert len(cards) == 3 and len(cards[0].find_elements("css selector", ".crops img")) == 7
    assert "data.label_fixes=[" in browser.page_source and str(run.reviewed_fixes) in browser.page_source

    cards[0].find_element("css selector", "button[data-decision=accept]").click()
    wait_text(browser, "#c0 .state", "saved: accept")
    fixes, decisions = saved(run)
    assert fixes[["person_id", "fix", "value"]].values.tolist() == [[persons[0], "gender", "male"]]

    box = cards[1].find_element("css selector", "input")
    box.clear()
    box.send_keys("abc", Keys.ENTER)
    wait_text(browser, "#msg", "'abc' is not an age")
    assert saved(run)[0].equals(fixes), "a bad value changes nothing saved"
    box.clear()
    box.send_keys("58", Keys.ENTER)
    wait_text(browser, "#c1 .state", "saved: edit -> 58")
    fixes, _ = saved(run)
    assert fixes[["person_id", "fix", "value"]].values.tolist()[-1] == [persons[1], "age", "58"]

    browser.find_element("css selector", "body").send_keys("r")  # the selection moved on to the swap
    wait_text(browser, "#c2 .state", "saved: reject")
    fixes, decisions = saved(run)
    assert len(fixes) == 2 and decisions["decision"].tolist() == ["accept", "edit", "reject"]

    bad = requests.post(url + "api/decide", json={"person_id": "nobody", "fix": "gender", "decision": "accept"})
    assert bad.status_code == 400 and "person 'nobody' has no 'gender' candidate" in bad.json()["error"]
    assert saved(run)[1].equals(decisions)
    server.shutdown()
    server.server_close()

    server, url = serve(cfg)  # a restart: the page shows what was decided
    browser.get(url)
    states = [e.text for e in browser.find_elements("css selector", ".state")]
    assert states == ["saved: accept -> male", "saved: edit -> 58", "saved: reject"]
    browser.find_element("css selector", "body").send_keys("j", "a")  # all decided: from the first card to the age one
    wait_text(browser, "#c1 .state", "saved: accept -> 61")
    fixes, decisions = saved(run)
    assert fixes[fixes["fix"] == "age"]["value"].tolist() == ["61"] and len(decisions) == 3
    server.shutdown()
    server.server_close()


def test_many_candidates_progress_filters_jump_zoom_lazy_photos_uncropped_undo_unsure_skip(reviewed_run, browser):
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select, WebDriverWait

    cfg, run, persons = reviewed_run
    server, url = serve(cfg)
    browser.get(url)
    wait_text(browser, "#progress", "0 / 3 decided")
    photos = browser.find_elements("css selector", "#c0 .crops img")
    assert {p.get_attribute("loading") for p in photos} == {"lazy"}  # thousands of crops load as they scroll in
    names = [f.text for f in browser.find_elements("css selector", "#c0 .crops figcaption")]
    assert names[:2] == ["mask1", "mask2"] and "normal" in names
    photos[0].click()
    assert "zoom" in photos[0].get_attribute("class")

    browser.find_element("css selector", "#c0 button[data-decision=accept]").click()
    wait_text(browser, "#progress", "1 / 3 decided")

    Select(browser.find_element("id", "kind")).select_by_value("age")  # one kind at a time
    visible = [c.get_attribute("id") for c in browser.find_elements("css selector", ".card") if c.is_displayed()]
    assert visible == ["c1"]
    Select(browser.find_element("id", "kind")).select_by_value("")
    Select(browser.find_element("id", "flag")).select_by_value("systematic")  # the model's failures apart
    visible = [c.get_attribute("id") for c in browser.find_elements("css selector", ".card") if c.is_displayed()]
    assert visible == ["c1"]
    assert "3 candidates (2 label suspects, 1 systematic (the model's failure))" in browser.page_source
    Select(browser.find_element("id", "flag")).select_by_value("")
    browser.find_element("id", "open").click()  # undecided only: the accepted one goes
    visible = [c.get_attribute("id") for c in browser.find_elements("css selector", ".card") if c.is_displayed()]
    assert visible == ["c1", "c2"]

    browser.find_element("id", "jump").send_keys(persons[2], Keys.ENTER)
    assert "sel" in browser.find_element("id", "c2").get_attribute("class")
    browser.find_element("css selector", "body").send_keys("a")
    wait_text(browser, "#progress", "2 / 3 decided")
    assert saved(run)[1]["person_id"].tolist() == [persons[0], persons[2]]

    browser.find_element("css selector", "body").send_keys("p")  # the uncropped photos: hair and clothes
    wait_photos = lambda b: all("/photo/" in i.get_attribute("src") for i in b.find_elements("css selector", "#c2 img"))  # noqa: E731
    WebDriverWait(browser, 10).until(wait_photos)
    WebDriverWait(browser, 10).until(
        lambda b: b.execute_script("const i=document.querySelector('#c2 img');return i.complete&&i.naturalWidth")
    )
    size = browser.execute_script("const i=document.querySelector('#c2 img');return [i.naturalWidth,i.naturalHeight]")
    assert size == [384, 512], "the whole photo, not the face crop"

    browser.find_element("css selector", "body").send_keys("z")  # undo the accept of c2: undecided again
    wait_text(browser, "#progress", "1 / 3 decided")
    assert browser.find_element("css selector", "#c2 .state").text == ""
    fixes, decisions = saved(run)
    assert decisions["person_id"].tolist() == [persons[0]] and fixes["person_id"].tolist() == [persons[0]]

    browser.find_element("css selector", "body").send_keys("u")  # unsure: remembered, fixes nothing, still open
    wait_text(browser, "#progress", "1 / 3 decided, 1 unsure")
    fixes, decisions = saved(run)
    assert decisions["decision"].tolist() == ["accept", "unsure"] and fixes["person_id"].tolist() == [persons[0]]
    visible = [c.get_attribute("id") for c in browser.find_elements("css selector", ".card") if c.is_displayed()]
    assert visible == ["c1", "c2"], "an unsure candidate stays among the undecided"
    browser.find_element("id", "jump").send_keys(persons[1], Keys.ENTER)
    browser.find_element("css selector", "body").send_keys("s")  # skip: on to the next without deciding
    assert "sel" in browser.find_element("id", "c2").get_attribute("class")
    assert len(saved(run)[1]) == 2
    server.shutdown()
    server.server_close()
