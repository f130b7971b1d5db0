"""The live page at `/ui`, in headless Chromium against a running fleet (API, worker, sim).

A tenant signs in with its key, submits a batch whose lines partly fail upstream (a model the
sim answers 400), and watches the page: the batch appears without a reload, its progress bar
moves and reaches 100%, the failures list names the failed lines, and a failed job opens to
its error, its attempts and its webhook deliveries, each exactly as the JSON API answers them.
An operator key shows providers and queues instead. Everything the API answers is written as
text: a custom id made of HTML stays text. Screenshots land in `var/test-artifacts/ui/`.

Debian's `chromium` and `chromium-driver` drive the page (`.ci/run` installs them); without
them the test is skipped, and under `CI=true` it fails.
"""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from tests.conftest import IN_CI
from tests.fleet import Fleet, chat_body, run_fleet, sim_provider
from tests.sim_process import SimHandle
from tests.webhook_receiver import ReceiverHandle, run_receiver

pytestmark = pytest.mark.e2e

ARTIFACTS = Path(__file__).resolve().parents[2] / "var" / "test-artifacts" / "ui"
WAIT_S = 60
GOOD_LINES = 16
BAD_LINES = 4
# The sim answers this custom id's line 400 like the other bad ones; the page must show it as text.
HTML_CUSTOM_ID = '<img src=x onerror="document.title=`pwned`">bad'

T = TypeVar("T")


@pytest.fixture
def browser(request: pytest.FixtureRequest) -> Iterator[WebDriver]:
    """Headless Chromium; the page as the test left it is saved as `last-<test>.png`."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        message = (
            "Debian's chromium and chromium-driver are missing: apt-get install chromium chromium-driver"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1100"):
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=chromedriver))
    try:
        yield driver
        screenshot(driver, f"last-{request.node.name}")
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def receiver() -> Iterator[ReceiverHandle]:
    with run_receiver() as handle:
        yield handle


@pytest.fixture(scope="module")
def fleet(sim: SimHandle) -> Iterator[Fleet]:
    tag = uuid.uuid4().hex[:8]
    echo, broken = f"ui-echo-{tag}", f"ui-broken-{tag}"
    sim.configure(models={broken: {"fail_rate": 1.0, "fail_status": 400}})
    config = {
        # Two calls a second, so the batch takes seconds and the page sees it part done.
        "providers": {"sim": sim_provider(sim, rpm=120)},
        "models": {
            "fast": {"targets": [{"provider": "sim", "model": echo}]},
            "broken": {"targets": [{"provider": "sim", "model": broken}]},
        },
        "cache": {"default": False, "ttl_s": 60},
    }
    with run_fleet(
        sim=sim, config=config, workers=1, threads=8, settings={"webhook_allow_private": "true"}
    ) as deployment:
        yield deployment


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], T], what: str) -> T:
    """`condition`'s first truthy answer, re-asked while the page re-renders; fails after WAIT_S."""
    waiting = WebDriverWait(
        driver, WAIT_S, ignored_exceptions=(NoSuchElementException, StaleElementReferenceException)
    )
    result: T = waiting.until(condition, f"the page never showed {what}")
    return result


def text_of(driver: WebDriver, css: str) -> str:
    return str(driver.find_element(By.CSS_SELECTOR, css).text)


def screenshot(driver: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def sign_in(driver: WebDriver, fleet: Fleet, key: str) -> None:
    driver.get(f"{fleet.api_url}/ui")
    driver.find_element(By.ID, "api-key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#sign-in-form button[type=submit]").click()


def submit_batch(fleet: Fleet, webhook_url: str) -> tuple[str, dict[str, str]]:
    """A batch of good and bad lines; its id and the bad lines' job ids by custom id."""
    requests: list[dict[str, Any]] = [
        {"custom_id": f"good-{i}", "body": chat_body("fast", f"live page {i}")} for i in range(GOOD_LINES)
    ]
    bad_ids = [f"bad-{i}" for i in range(BAD_LINES - 1)] + [HTML_CUSTOM_ID]
    requests += [{"custom_id": custom_id, "body": chat_body("broken", custom_id)} for custom_id in bad_ids]
    response = fleet.http.post("/v1/batches", json={"requests": requests, "webhook_url": webhook_url})
    assert response.status_code == 201, response.text
    batch_id = str(response.json()["id"])
    jobs = fleet.batch_jobs(batch_id)
    return batch_id, {job["custom_id"]: job["id"] for job in jobs if job["custom_id"] in bad_ids}


def batch_progress(driver: WebDriver, batch_id: str) -> int:
    row = driver.find_element(By.CSS_SELECTOR, f'#batches tr[data-batch-id="{batch_id}"]')
    return int(row.find_element(By.CSS_SELECTOR, ".pct").text.rstrip("%"))


def test_page_is_served_without_a_key_under_a_content_security_policy(fleet: Fleet) -> None:
    page = httpx.get(f"{fleet.api_url}/ui")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy and "unsafe" not in policy
    assert fleet.api_key not in page.text
    for asset, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        answer = httpx.get(f"{fleet.api_url}/ui/{asset}")
        assert answer.status_code == 200 and answer.headers["content-type"].startswith(kind)
    assert "innerHTML" not in httpx.get(f"{fleet.api_url}/ui/app.js").text


def test_a_tenant_watches_its_batch_finish_and_reads_a_failed_jobs_error(
    browser: WebDriver, fleet: Fleet, receiver: ReceiverHandle
) -> None:
    sign_in(browser, fleet, fleet.api_key)
    wait_for(browser, lambda d: text_of(d, "#who") == "Tenant key", "the tenant view")

    batch_id, bad_jobs = submit_batch(fleet, receiver.url)
    part_done = wait_for(
        browser, lambda d: 0 < batch_progress(d, batch_id) < 100, "the batch part done, without a reload"
    )
    assert part_done
    row = f'#batches tr[data-batch-id="{batch_id}"]'
    rate = wait_for(browser, lambda d: text_of(d, f"{row} td:nth-child(7)").endswith("/s"), "a rate")
    assert rate
    screenshot(browser, "1-batch-in-progress")

    wait_for(browser, lambda d: batch_progress(d, batch_id) == 100, "the batch at 100%")
    batch = fleet.batch(batch_id)
    assert batch["counts"] == {
        "total": GOOD_LINES + BAD_LINES,
        "queued": 0,
        "running": 0,
        "succeeded": GOOD_LINES,
        "failed": BAD_LINES,
        "cancelled": 0,
    }
    cells = [td.text for td in browser.find_elements(By.CSS_SELECTOR, f"{row} td")]
    assert cells[1:6] == [
        batch["status"],
        "100%",
        f"{GOOD_LINES + BAD_LINES} / {GOOD_LINES + BAD_LINES}",
        str(GOOD_LINES),
        str(BAD_LINES),
    ]
    assert cells[7] == "done"
    counts = fleet.http.get("/v1/job-counts").json()["counts"]
    assert counts["failed"] >= BAD_LINES and counts["queued"] == counts["running"] == 0
    for state, count in counts.items():
        shown = f'#counts dd[data-state="{state}"]'
        wait_for(browser, lambda d, s=shown, c=count: text_of(d, s) == str(c), f"{count} jobs {state}")

    # Every failed line is listed; the one whose custom id is HTML shows it as text.
    for custom_id, job_id in bad_jobs.items():
        button = f'#failures button[data-job-id="{job_id}"]'
        wait_for(browser, lambda d, b=button: d.find_element(By.CSS_SELECTOR, b), f"failed job {custom_id}")
        cell = browser.find_element(By.CSS_SELECTOR, f'#failures tr[data-key="{job_id}"] td:nth-child(3)')
        assert cell.text == custom_id
    assert browser.find_elements(By.CSS_SELECTOR, "#failures img") == []
    assert browser.title == "jobgate"
    screenshot(browser, "2-batch-done")

    job_id = bad_jobs["bad-0"]
    job = fleet.wait_for_job(job_id, timeout_s=WAIT_S)
    assert job["status"] == "failed" and job["error"]["type"] == "bad_request"
    browser.find_element(By.CSS_SELECTOR, f'#failures button[data-job-id="{job_id}"]').click()
    wait_for(browser, lambda d: d.find_element(By.ID, "job-detail").get_attribute("data-status"), "the job")
    assert text_of(browser, "#job-id") == job_id
    assert text_of(browser, "#job-error-type") == job["error"]["type"]
    assert text_of(browser, "#job-error-message") == job["error"]["message"]
    attempts = fleet.http.get(f"/v1/jobs/{job_id}/attempts").json()["data"]
    wait_for(
        browser,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, "#attempts tbody tr")) == len(attempts),
        "every attempt",
    )
    outcomes = [
        tr.find_elements(By.TAG_NAME, "td")[3].text
        for tr in browser.find_elements(By.CSS_SELECTOR, "#attempts tbody tr")
    ]
    assert outcomes == [attempt["outcome"] for attempt in attempts] and outcomes[-1] == "bad_request"
    # The batch's webhook: the job.failed event, delivered (the page polls until it is).
    wait_for(
        browser,
        lambda d: (
            [td.text for td in d.find_elements(By.CSS_SELECTOR, "#deliveries tbody tr td")][:3]
            == ["job.failed", receiver.url, "delivered"]
        ),
        "the job's webhook delivery",
    )
    assert f"#job={job_id}" in browser.current_url
    screenshot(browser, "3-failed-job")

    # A reload keeps the session (sessionStorage) and the open job (the URL's fragment).
    browser.refresh()
    wait_for(browser, lambda d: text_of(d, "#job-error-message") == job["error"]["message"], "the job again")
    browser.find_element(By.ID, "sign-out").click()
    wait_for(browser, lambda d: d.find_element(By.ID, "sign-in").is_displayed(), "the sign-in form")
    assert browser.execute_script("return sessionStorage.length") == 0


def test_an_operator_sees_provider_health_and_queue_depth(browser: WebDriver, fleet: Fleet) -> None:
    fleet.wait_for_job(fleet.submit_job(chat_body("fast", "warm up"))["id"], timeout_s=WAIT_S)
    sign_in(browser, fleet, fleet.operator_key)
    wait_for(browser, lambda d: text_of(d, "#who") == "Operator key", "the operator view")
    provider = wait_for(
        browser,
        lambda d: [td.text for td in d.find_elements(By.CSS_SELECTOR, '#providers tr[data-key="sim"] td')],
        "the sim provider",
    )
    assert provider[:3] == ["sim", "openai", "closed"]
    assert provider[3].endswith("/ 120")
    queues = wait_for(
        browser, lambda d: [tr.text for tr in d.find_elements(By.CSS_SELECTOR, "#queues tbody tr")], "queues"
    )
    assert queues
    assert not browser.find_element(By.ID, "tenant-view").is_displayed()
    screenshot(browser, "4-operator")


def test_a_wrong_key_is_refused_with_the_apis_message(browser: WebDriver, fleet: Fleet) -> None:
    sign_in(browser, fleet, "jg_not_a_key")
    message = wait_for(browser, lambda d: text_of(d, "#sign-in-error"), "a refusal")
    assert message.startswith("Cannot sign in:")
    assert not browser.find_element(By.ID, "tenant-view").is_displayed()
