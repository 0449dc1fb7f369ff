"""The playground at / in headless Chromium, against the real server (`python -m api`) on the embedded model."""

from __future__ import annotations

import json
import re
import tempfile

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import Select, WebDriverWait

from steering.presets import read_preset
from tests.servers import start_api


@pytest.fixture(scope="module")
def server():
    with tempfile.TemporaryFile("w+") as log:
        proc, base = start_api([], log)
        try:
            yield base
        finally:
            proc.terminate()
            proc.wait(60)


@pytest.fixture
def page(browser, server):
    browser.get(server + "/")
    WebDriverWait(browser, 60).until(EC.text_to_be_present_in_element((By.ID, "status"), "ready"))
    WebDriverWait(browser, 30).until(lambda d: len(Select(d.find_element(By.ID, "preset")).options) > 1)
    return browser


def wait(driver, condition, seconds=60):
    return WebDriverWait(driver, seconds).until(condition)


def fill(driver, element_id: str, value: str) -> None:
    box = driver.find_element(By.ID, element_id)
    box.clear()
    box.send_keys(value)


def answers(driver) -> list[str]:
    return [a.text for a in driver.find_elements(By.CSS_SELECTOR, ".turn:last-child .answer")]


def send(driver, prompt: str) -> None:
    fill(driver, "prompt", prompt)
    driver.find_element(By.ID, "send").click()
    wait(driver, lambda d: d.find_element(By.ID, "send").is_enabled()
         and d.find_elements(By.CSS_SELECTOR, ".turn:last-child .finish")
         and all(f.text for f in d.find_elements(By.CSS_SELECTOR, ".turn:last-child .finish")))


def test_the_page_is_served_offline_and_the_api_docs_stay(server):
    page = httpx.get(server + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    for src in re.findall(r'(?:src|href)="([^"]+)"', page.text):
        assert src.startswith("/"), f"{src} would leave this server"
        assert httpx.get(server + src).status_code == 200
    assert httpx.get(server + "/docs").status_code == 200


def test_chat_streams_multi_turn_with_a_preset_and_shows_its_efficacy(page):
    Select(page.find_element(By.ID, "preset")).select_by_value("dogs")
    assert "Measured: concept in" in page.find_element(By.ID, "preset-info").text
    fill(page, "max-tokens", "12")
    send(page, "Tell me about your morning.")
    first = answers(page)
    assert len(first) == 1 and len(first[0].split("finish:")[0].strip()) > len("answer")
    send(page, "And then?")
    assert len(page.find_elements(By.CSS_SELECTOR, ".turn")) == 2
    assert len(page.execute_script("return window.playground.state.messages")) == 4  # two turns kept
    assert "Applied:" in page.find_element(By.ID, "report").text


def test_compare_shows_steered_and_baseline_side_by_side(page):
    Select(page.find_element(By.ID, "preset")).select_by_value("dogs")
    fill(page, "max-tokens", "10")
    page.find_element(By.ID, "compare").click()
    send(page, "What should I do today?")
    steered, baseline = answers(page)
    assert steered.startswith("STEERED") and baseline.startswith("BASELINE")
    page.find_element(By.ID, "compare").click()


def test_feature_search_card_and_clamp_then_export_a_preset_the_reader_accepts(page, server, tmp_path):
    page.find_element(By.ID, "clear").click()
    fill(page, "search", "dog")
    page.find_element(By.CSS_SELECTOR, "#search-form button").click()
    first = wait(page, lambda d: d.find_elements(By.CSS_SELECTOR, "#results li button"))[0]
    first.click()
    card = wait(page, EC.visibility_of_element_located((By.ID, "card")))
    wait(page, lambda d: "Feature #" in card.text)
    assert card.find_elements(By.TAG_NAME, "mark"), "top contexts mark their peak token"
    neighbours = card.find_elements(By.CSS_SELECTOR, "button.link")
    assert neighbours
    neighbours[0].click()  # a neighbour opens its own card
    wait(page, lambda d: "Feature #" in d.find_element(By.ID, "card").text)
    page.find_element(By.ID, "add-clamp").click()
    block = page.execute_script("return window.playground.steeringBlock()")
    assert len(block["features"]) == 1 and block["features"][0]["mode"] == "clamp"
    fill(page, "max-tokens", "8")
    send(page, "Say something.")
    assert "Applied:" in page.find_element(By.ID, "report").text
    preset = page.execute_script("return window.playground.presetFile()")
    (tmp_path / f"{preset['name']}.json").write_text(json.dumps(preset))
    read = read_preset(tmp_path / f"{preset['name']}.json")  # the strict reader of presets/
    ready = httpx.get(server + "/ready").json()
    assert (read.model, read.sae) == (ready["model"], ready["sae"]["id"])
    assert [c.index for c in read.spec.features] == [block["features"][0]["index"]]


def test_errors_are_shown_as_the_api_words_them(page):
    fill(page, "max-tokens", "100000")
    fill(page, "prompt", "Hello")
    page.find_element(By.ID, "send").click()
    error = wait(page, EC.visibility_of_element_located((By.ID, "error")))
    wait(page, lambda d: "param: max_tokens" in error.text)
    assert page.find_element(By.ID, "send").is_enabled()  # still usable


def test_stop_cancels_the_generation_on_the_server(page, server):
    def cancellations() -> float:
        text = httpx.get(server + "/metrics").text
        return float(re.search(r"^steering_cancellations_total (\S+)$", text, re.M).group(1))

    before = cancellations()
    fill(page, "max-tokens", "2000")
    fill(page, "prompt", "Write a very long story about a lighthouse.")
    page.find_element(By.ID, "send").click()
    wait(page, lambda d: d.find_element(By.ID, "stop").is_enabled())
    wait(page, lambda d: len(answers(d)[0]) > 20 if answers(d) else False)
    page.find_element(By.ID, "stop").click()
    wait(page, lambda d: "stopped" in d.find_element(By.CSS_SELECTOR, ".turn:last-child").text)
    wait(page, lambda d: cancellations() > before, 30)


def test_a_shared_link_restores_prompt_and_steering(page, server):
    fill(page, "prompt", "A shared question")
    fill(page, "concept", "mountains")
    page.execute_script("window.playground.state.clamps.push({index: 7, label: 'x', value: 3, mode: 'add', unit: 'max'})")
    page.find_element(By.ID, "share").click()
    url = page.find_element(By.ID, "export").get_attribute("value")
    assert url.startswith(server + "/#s=")
    page.get("about:blank")
    page.get(url)
    wait(page, EC.text_to_be_present_in_element((By.ID, "status"), "ready"))
    assert page.find_element(By.ID, "prompt").get_attribute("value") == "A shared question"
    block = page.execute_script("return window.playground.steeringBlock()")
    assert block["concept"] == "mountains" and block["features"] == [{"index": 7, "value": 3, "mode": "add", "unit": "max"}]


def test_look_inside_colours_tokens_and_shows_monitor_flags(page):
    page.find_element(By.ID, "clear").click()
    Select(page.find_element(By.ID, "preset")).select_by_value("watch-code")
    page.find_element(By.ID, "inspect").click()
    feature = page.execute_script("return window.playground.state.presets.find(p => p.name === 'watch-code')"
                                  ".monitors[0].index")
    fill(page, "colour-feature", str(feature))
    fill(page, "max-tokens", "24")
    send(page, "Write a Python function that adds two numbers.")
    tokens = page.find_elements(By.CSS_SELECTOR, ".turn:last-child .tok")
    assert len(tokens) >= 10 and all(t.get_attribute("title") for t in tokens)  # top features on hover
    assert any("background" in (t.get_attribute("style") or "") for t in tokens)  # coloured by the feature
    assert page.find_elements(By.CSS_SELECTOR, ".turn:last-child .flag")  # the code monitor flagged it
    page.find_element(By.ID, "inspect").click()
    Select(page.find_element(By.ID, "preset")).select_by_value("")


def test_one_prompt_at_three_strengths(page):
    page.find_element(By.ID, "clear").click()
    page.execute_script("window.playground.state.clamps.push({index: 16236, label: '', value: 1, mode: 'clamp', unit: 'max'})")
    fill(page, "max-tokens", "8")
    fill(page, "prompt", "Describe a walk.")
    page.find_element(By.ID, "strengths").click()
    wait(page, lambda d: len(d.find_elements(By.CSS_SELECTOR, ".turn:last-child .finish")) == 3
         and all(f.text for f in d.find_elements(By.CSS_SELECTOR, ".turn:last-child .finish")))
    assert [a.split("\n")[0] for a in answers(page)] == ["×1", "×2", "×4"]
    page.execute_script("window.playground.state.clamps.length = 0")


def test_auto_steer_by_concept_shows_the_features_it_picked(page):
    page.find_element(By.ID, "clear").click()
    fill(page, "concept", "mountains")
    fill(page, "max-tokens", "8")
    send(page, "Where should I go on holiday?")
    assert "Auto-steer picked [" in page.find_element(By.ID, "report").text
    page.find_element(By.ID, "concept").clear()
