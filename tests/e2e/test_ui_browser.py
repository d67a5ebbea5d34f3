"""`llmft ui` in a real headless Chromium (Debian's chromium and chromium-driver, driven by Selenium).

One user's path through the UI on a tiny model: fill the form, see the validation error at the field it names,
fix it, launch, watch the run finish on the Runs page. Screenshots of each page are written to the test's folder,
and to `docs/images/` when LLMFT_UI_SCREENSHOTS=1 (how docs/ui.md's pictures are made).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
    pytest.skip(
        "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver; .ci/run installs them)",
        allow_module_level=True,
    )
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (the dev extra)")
pytest.importorskip("gradio", reason="needs the ui extra (gradio)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    root = tmp_path_factory.mktemp("ui")
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    rows = [
        {"messages": [{"role": "user", "content": f"Spell {w}"}, {"role": "assistant", "content": " ".join(w.upper())}]}
        for w in words * 2
    ]
    data = root / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    folder = root / "runs"
    command = [sys.executable, "-m", "llm_finetuning.cli.main", "ui", "--runs", str(folder), "--port", "0"]
    env = {**os.environ, "COLUMNS": "200", "GRADIO_ANALYTICS_ENABLED": "False"}
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=root)
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line)
        if "llmft ui on" in line and "http://" in line:
            url = "http://" + line.split("http://")[1].split()[0]
            break
    else:
        pytest.fail("llmft ui did not start:\n" + "".join(lines))
    drain = threading.Thread(target=lambda: lines.extend(process.stdout), daemon=True)
    drain.start()
    yield {"url": url, "folder": folder, "data": data, "root": root, "lines": lines}
    process.terminate()
    process.wait(timeout=30)
    output = "".join(lines)
    assert "Traceback" not in output, output[-4000:]


@pytest.fixture(scope="module")
def browser(ui):
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1800",
        f"--user-data-dir={ui['root'] / 'chromium-profile'}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=webdriver.ChromeService(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def shoot(driver, ui, name: str) -> None:
    driver.save_screenshot(str(ui["root"] / f"{name}.png"))
    if os.environ.get("LLMFT_UI_SCREENSHOTS"):
        (REPO / "docs" / "images").mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(REPO / "docs" / "images" / f"{name}.png"))


def field(driver, elem: str):
    """The text input of a form field, by the field's DOM id."""
    return driver.find_element(By.CSS_SELECTOR, f"#{elem} textarea, #{elem} input")


def type_into(driver, elem: str, text: str) -> None:
    box = field(driver, elem)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", box)
    box.clear()
    box.send_keys(text)
    box.send_keys("\t")  # leave the field: Gradio sends the value


def text_of(driver, elem: str) -> str:
    return driver.find_element(By.ID, elem).text


def value_of(driver, elem: str) -> str:
    """What a dropdown or text input holds (an input's value is not part of its text)."""
    return field(driver, elem).get_attribute("value") or ""


def wait_for(driver, condition, timeout: float = 60, what: str = ""):
    return WebDriverWait(driver, timeout, poll_frequency=0.5).until(lambda d: condition(d), message=what)


def click(driver, elem: str) -> None:
    button = driver.find_element(By.ID, elem)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    button.click()


def test_fill_validate_fix_launch_and_watch_a_run_finish(ui, browser):
    driver = browser
    driver.get(ui["url"])
    wait_for(driver, lambda d: d.find_elements(By.ID, "field-model-name"), what="the form")
    type_into(driver, "field-model-name", "tiny")
    type_into(driver, "field-training-max_steps", "3")
    type_into(driver, "field-training-logging_steps", "1")
    wait_for(driver, lambda d: "max_steps: 3" in text_of(d, "config-yaml"), what="the YAML beside the form")

    # No training data yet: the error is shown at the data field, as `llmft train` words it.
    click(driver, "validate")
    wait_for(driver, lambda d: "problem" in text_of(d, "form-status"), what="the validation summary")
    assert "required key is missing" in text_of(driver, "field-data-train-0--dataset")
    driver.execute_script("document.getElementById('field-data-train-0--dataset').scrollIntoView({block: 'center'})")
    shoot(driver, ui, "ui-new-run-error")

    type_into(driver, "field-data-train-0--path", str(ui["data"]))
    wait_for(driver, lambda d: str(ui["data"]) in text_of(d, "config-yaml"), what="the data path in the YAML")
    click(driver, "validate")
    wait_for(driver, lambda d: "valid" in text_of(d, "form-status") and "problem" not in text_of(d, "form-status"))
    assert "required key is missing" not in text_of(driver, "field-data-train-0--dataset")
    shoot(driver, ui, "ui-new-run")

    # The data preview: what `llmft check` shows, with the tokens that carry loss highlighted.
    click(driver, "preview")
    wait_for(driver, lambda d: "rows sampled" in text_of(d, "preview-figures"), timeout=120, what="the preview")
    figures = text_of(driver, "preview-figures")
    assert "16 rows sampled, 0 malformed" in figures and "memory estimate" in figures
    assert "A L P H A" in text_of(driver, "preview-examples")
    driver.execute_script("document.getElementById('preview-examples').scrollIntoView({block: 'center'})")
    shoot(driver, ui, "ui-preview")

    click(driver, "launch")
    wait_for(driver, lambda d: "Started" in text_of(d, "launched"), what="the launch note")
    config_file = ui["folder"] / "my-run.yaml"
    assert config_file.is_file()

    driver.find_element(By.XPATH, "//button[@role='tab' and contains(., 'Runs')]").click()
    wait_for(driver, lambda d: "my-run" in text_of(d, "runs-table"), what="the run in the table")
    wait_for(driver, lambda d: "completed" in text_of(d, "runs-table"), timeout=240, what="the run to complete")
    wait_for(driver, lambda d: "step 3 of 3 (100%)" in text_of(d, "run-detail"), what="the run's progress")
    assert "peak memory" in text_of(driver, "run-detail")
    shoot(driver, ui, "ui-runs")

    manifest = json.loads((ui["folder"] / "my-run" / "manifest.json").read_text())
    assert manifest["status"] == "completed" and str(config_file) in manifest["command"]
    assert (ui["folder"] / "my-run" / "final").is_dir()


def open_tab(driver, name: str) -> None:
    driver.find_element(By.XPATH, f"//button[@role='tab' and contains(., '{name}')]").click()


def test_chat_with_the_run_and_its_base_side_by_side(ui, browser):
    driver = browser
    open_tab(driver, "Chat")
    wait_for(driver, lambda d: value_of(d, "chat-run-choice") == "my-run", what="the completed run offered")
    click(driver, "chat-start")
    wait_for(driver, lambda d: "serving" in text_of(d, "chat-status"), timeout=180, what="the chat server")
    assert "base" in text_of(driver, "chat-status")
    type_into(driver, "chat-prompt", "Spell alpha")
    click(driver, "chat-send")

    def answered(d) -> bool:
        bots = [d.find_element(By.ID, e) for e in ("chat-run", "chat-base")]
        return all(len(b.text.replace("Spell alpha", "").strip()) > 0 for b in bots)

    wait_for(driver, answered, timeout=120, what="both answers")
    assert "[error]" not in text_of(driver, "chat-run") and "[error]" not in text_of(driver, "chat-base")
    shoot(driver, ui, "ui-chat")


def test_export_buttons_write_where_they_say(ui, browser):
    driver = browser
    open_tab(driver, "Export")
    wait_for(driver, lambda d: value_of(d, "export-run-choice") == "my-run", what="the completed run offered")
    run = ui["folder"] / "my-run"
    click(driver, "export-merge")
    wait_for(driver, lambda d: "merged" in text_of(d, "export-result"), timeout=120, what="the merge")
    assert (run / "merged" / "config.json").is_file()
    click(driver, "export-ollama")
    wait_for(driver, lambda d: "exported to" in text_of(d, "export-result"), timeout=180, what="the Ollama export")
    assert "Modelfile" in text_of(driver, "export-result")
    assert (run / "export-ollama" / "Modelfile").is_file()
    assert str(run / "export-ollama") in text_of(driver, "export-result")
    shoot(driver, ui, "ui-export")
