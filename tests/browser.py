"""Drive the demo in headless Chromium (Debian's chromium + chromium-driver) like a person would:
teach a category, load the examples, predict a photo, take a screenshot, save the categories, load
them back from the zip, and predict again."""

from __future__ import annotations

import shutil
from pathlib import Path

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")


ANSWERED = ("Best guess", "Unknown")


def drive_demo(
    url: str,
    teach_photos: list[Path],
    query_photo: Path,
    screenshot: Path,
    saved_zip: Path,
    category: str = "<em>My watches",  # markup in a name must show as text, never render
    set_name: str = "browser-set",
) -> tuple[str, str]:
    """Returns the prediction messages the page showed before saving and after loading the saved zip
    (`saved_zip`: where the server writes the zip of `set_name`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ready
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    wait = WebDriverWait(driver, 60)
    try:
        driver.get(url)
        name = wait.until(
            ready.element_to_be_clickable((By.CSS_SELECTOR, "#category-name textarea, #category-name input"))
        )
        name.send_keys(category)
        driver.find_element(By.CSS_SELECTOR, "#example-photos input[type=file]").send_keys(
            "\n".join(str(p) for p in teach_photos)
        )
        wait.until(
            lambda d: (
                len(
                    d.find_elements(
                        By.CSS_SELECTOR, "#example-photos .file-preview-holder tr, #example-photos tbody tr"
                    )
                )
                >= len(teach_photos)
            )
        )
        driver.find_element(By.ID, "teach-button").click()
        wait.until(ready.text_to_be_present_in_element((By.ID, "teach-status"), "Learned"))
        taught = driver.find_element(By.ID, "teach-status")  # a name with markup is shown as typed
        assert category in taught.text and not taught.find_elements(By.CSS_SELECTOR, "em, img, script"), taught.text
        driver.find_element(By.ID, "examples-button").click()
        wait.until(ready.text_to_be_present_in_element((By.ID, "teach-status"), "Loaded"))
        driver.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Predict')]").click()
        upload = wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#query-image input[type=file]")))
        upload.send_keys(str(query_photo))
        wait.until(ready.presence_of_element_located((By.CSS_SELECTOR, "#query-image img")))
        driver.find_element(By.ID, "predict-button").click()
        status = (By.ID, "predict-status")
        wait.until(lambda d: any(word in d.find_element(*status).text for word in ANSWERED))
        message = driver.find_element(*status).text
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(screenshot))

        driver.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Teach')]").click()
        name = wait.until(ready.element_to_be_clickable((By.CSS_SELECTOR, "#set-name textarea, #set-name input")))
        name.send_keys(set_name)
        driver.find_element(By.ID, "save-button").click()
        wait.until(ready.text_to_be_present_in_element((By.ID, "teach-status"), "Saved"))
        driver.find_element(By.ID, "clear-button").click()
        wait.until(ready.text_to_be_present_in_element((By.ID, "teach-status"), "Cleared"))
        driver.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Predict')]").click()
        wait.until(ready.element_to_be_clickable((By.ID, "predict-button"))).click()
        wait.until(ready.text_to_be_present_in_element(status, "No categories yet"))
        driver.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Teach')]").click()
        wait.until(ready.element_to_be_clickable((By.ID, "load-zip-button")))
        driver.find_element(By.CSS_SELECTOR, "#upload-zip input[type=file]").send_keys(str(saved_zip))
        wait.until(
            lambda d: d.find_elements(By.CSS_SELECTOR, "#upload-zip .file-preview-holder tr, #upload-zip tbody tr")
        )
        driver.find_element(By.ID, "load-zip-button").click()
        wait.until(ready.text_to_be_present_in_element((By.ID, "teach-status"), "Loaded"))

        driver.find_element(By.XPATH, "//button[@role='tab'][contains(., 'Predict')]").click()
        wait.until(ready.element_to_be_clickable((By.ID, "predict-button"))).click()
        wait.until(lambda d: any(word in d.find_element(*status).text for word in ANSWERED))
        return message, driver.find_element(*status).text
    finally:
        driver.quit()
