"""Drive the demo in headless Chromium (Debian's chromium + chromium-driver) like a person would:
teach a category, load the examples, predict a photo, and take a screenshot."""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


def drive_demo(url: str, teach_photos: list[Path], query_photo: Path, screenshot: Path,
               category: str = "My watches") -> str:
    """Returns the prediction message the page showed."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                 "--no-first-run", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    wait = WebDriverWait(driver, 60)
    try:
        driver.get(url)
        name = wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "#category-name textarea, #category-name input")))
        name.send_keys(category)
        driver.find_element(By.CSS_SELECTOR, "#example-photos input[type=file]").send_keys(
            "\n".join(str(p) for p in teach_photos))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#example-photos .file-preview-holder tr, "
                                                                   "#example-photos tbody tr")) >= len(teach_photos))
        driver.find_element(By.ID, "teach-button").click()
        wait.until(ready.text_to_be_present_in_element((By.ID, "teach-status"), "Learned"))
        driver.find_element(By.ID, "examples-button").click()
        wait.until(ready.text_to_be_present_in_element((By.ID, "teach-status"), "Loaded"))
        driver.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Predict')]").click()
        upload = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#query-image input[type=file]")))
        upload.send_keys(str(query_photo))
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#query-image img")))
        driver.find_element(By.ID, "predict-button").click()
        wait.until(ready.text_to_be_present_in_element((By.ID, "predict-status"), "Best guess"))
        message = driver.find_element(By.ID, "predict-status").text
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))
        return message
    finally:
        driver.quit()
