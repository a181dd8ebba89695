"""A headless Chromium for tests (Debian's ``chromium`` and ``chromium-driver``).

Installed on first use when missing and we are root (CI machines); the
browser is kept off every network but loopback: its host resolver maps
every name to nothing except 127.0.0.1, and its background services
(updates, sync, safe browsing, metrics) are off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = "chromium"
DRIVER = "chromedriver"

FLAGS = [
    "--headless=new",
    "--no-sandbox",  # tests run as root in containers
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--metrics-recording-only",
    "--disable-features=OptimizationHints,MediaRouter,Translate,AutofillServerCommunication",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
]


def ensure_chromium() -> tuple[str, str]:
    """Paths of chromium and chromedriver, installing Debian's packages if root."""
    browser, driver = shutil.which(CHROMIUM), shutil.which(DRIVER)
    if (browser is None or driver is None) and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "chromium", "chromium-driver"],
            env=env,
            capture_output=True,
            check=False,
            timeout=900,
        )
        browser, driver = shutil.which(CHROMIUM), shutil.which(DRIVER)
    if browser is None or driver is None:
        raise RuntimeError(
            "the status-page test needs Debian's chromium and chromium-driver "
            "(apt-get install chromium chromium-driver)"
        )
    return browser, driver


@contextmanager
def headless_chromium() -> Iterator[Any]:
    """A selenium WebDriver on headless Chromium; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    browser, driver = ensure_chromium()
    options = Options()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    web = webdriver.Chrome(service=Service(executable_path=driver), options=options)
    try:
        web.set_page_load_timeout(30)
        yield web
    finally:
        web.quit()
