"""The web chat page in a real headless browser (Debian's chromium + chromedriver via selenium):
load the page, attach an image, send a question, read the streamed answer; it must equal the API's
greedy answer for the same image and question. Slow; skipped where chromium is not installed
(`apt-get install chromium chromium-driver`)."""

import os
import shutil
import tempfile

import pytest

from tests.helpers.serve_tiny import BackgroundServer, data_url, model_folder, write_image

pytestmark = pytest.mark.slow
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
QUESTION = "what is in this image ?"


@pytest.fixture(scope="module")
def browser():
    if not (CHROMIUM and DRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1000,900"):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def test_chat_page_streams_the_answer(browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    import openai

    ckpt = model_folder(tmp_path)
    image = write_image(str(tmp_path / "cat.png"), seed=1)
    srv = BackgroundServer(["--checkpoint", ckpt, "--template", "vicuna_v1", "--max-new-tokens", "24", "--chunk", "2"])
    try:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="unused")
        want = client.chat.completions.create(model="ckpt", temperature=0, max_tokens=24, messages=[
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(image)}},
                                         {"type": "text", "text": QUESTION}]}]).choices[0].message.content
        assert want

        browser.get(srv.url + "/")
        WebDriverWait(browser, 60).until(lambda d: "model: ckpt" in d.find_element(By.ID, "model").text)
        browser.find_element(By.ID, "image").send_keys(os.path.abspath(image))
        WebDriverWait(browser, 30).until(lambda d: d.find_element(By.ID, "preview").get_attribute("src").startswith("data:"))
        browser.find_element(By.ID, "max_tokens").clear()
        browser.find_element(By.ID, "max_tokens").send_keys("24")
        browser.find_element(By.ID, "prompt").send_keys(QUESTION)
        browser.find_element(By.ID, "send").click()

        WebDriverWait(browser, 180).until(lambda d: d.find_elements(By.CSS_SELECTOR, ".msg.complete"))
        assert not browser.find_elements(By.CSS_SELECTOR, ".msg.error"), browser.find_element(By.ID, "messages").text
        answer = browser.find_elements(By.CSS_SELECTOR, ".msg.assistant .text")[-1]
        assert answer.text == want.strip()
        assert int(answer.get_attribute("data-chunks")) >= 2  # the page read it in streamed pieces
        assert browser.find_elements(By.CSS_SELECTOR, ".msg.user img")  # the attached image is in the chat
        browser.save_screenshot(str(tmp_path / "chat.png"))
    finally:
        srv.stop()
