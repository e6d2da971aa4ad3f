#!/usr/bin/env python3
"""The API page in a real browser: headless Chromium (Debian's chromium and chromium-driver) through Selenium.

    browser_check.py BASE_URL SCREENSHOT_PATH [IMAGE_PATH] [--api-key KEY]

Loads BASE_URL/docs and checks that Swagger UI lists every operation of the spec the server serves at
/openapi.yaml (one block per operation and tag, with its operationId's id, method and path), then makes real
requests from the page, as a person would, with "Try it out": POST /v1/sentiment and POST /v1/generate with JSON
bodies, POST /v1/classify and POST /v1/stylize with IMAGE_PATH uploaded through the page's file input (default
tests/data/images/china.jpg); each must be answered 200 with the fields of its response, the restyled image shown.
With --api-key (a server with --api-keys-file), a request from the page is first answered 401, then the key is
entered in the "Authorize" dialog, as a person would, and every request after it must be served.
The browser may reach BASE_URL's origin only: every other host name resolves to nothing, and every request the
page made (Chrome's network log and the page's resource timings) is checked for its origin; the console must have
no error (a Content-Security-Policy violation is one). Saves a full-page screenshot to SCREENSHOT_PATH (of the
failure, when a check fails), and prints `docs browser checks passed`.
"""

import argparse
import base64
import json
import os
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml
from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
REPO = Path(__file__).resolve().parents[2]
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
# Seconds for the page to render the spec, and for one request made from it to be answered.
RENDER_TIMEOUT = 60
REQUEST_TIMEOUT = 90


def fail(message):
    raise AssertionError(message)


def served_spec(base):
    with urllib.request.urlopen(base + "/openapi.yaml", timeout=30) as response:
        return yaml.safe_load(response.read())


def expected_blocks(spec):
    """The DOM ids Swagger UI gives the spec's operations (deepLinking): one per operation and tag."""
    ids = {}
    for path, item in spec["paths"].items():
        for method in METHODS:
            operation = item.get(method)
            if operation is None:
                continue
            for tag in operation.get("tags") or ["default"]:
                ids[f"operations-{tag}-{operation['operationId']}"] = f"{method.upper()} {path}"
    return ids


def start_browser(base):
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    if missing:
        fail(f"{' and '.join(missing)} missing: `make browser-tools` installs Debian's chromium and chromium-driver")
    host = urllib.parse.urlsplit(base).hostname
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1024",
        # Nothing but the server under test: every other host name resolves to nothing, and Chromium's own
        # background traffic (component updates, safe browsing, sync, metrics) is off.
        f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {host}",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-default-apps",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--metrics-recording-only",
        "--password-store=basic",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


def wait(driver, timeout, condition, what):
    try:
        return WebDriverWait(driver, timeout, poll_frequency=0.1).until(lambda d: condition(d))
    except TimeoutException:
        fail(f"timed out after {timeout} s waiting for {what}")


def operation_block(driver, block_id):
    return driver.find_element(By.ID, block_id)


def open_operation(driver, block_id):
    """Expands the operation and turns on "Try it out" (already on with tryItOutEnabled)."""
    block = operation_block(driver, block_id)
    if "is-open" not in (block.get_attribute("class") or ""):
        block.find_element(By.CSS_SELECTOR, ".opblock-summary-control").click()
    wait(driver, 10, lambda d: operation_block(d, block_id).find_elements(By.CSS_SELECTOR, "button.execute")
         or operation_block(d, block_id).find_elements(By.CSS_SELECTOR, "button.try-out__btn"), f"{block_id} to open")
    block = operation_block(driver, block_id)
    if not block.find_elements(By.CSS_SELECTOR, "button.execute"):
        block.find_element(By.CSS_SELECTOR, "button.try-out__btn").click()
        wait(driver, 10, lambda d: operation_block(d, block_id).find_elements(By.CSS_SELECTOR, "button.execute"),
             f"the Execute button of {block_id}")
    return operation_block(driver, block_id)


def set_json_body(driver, block_id, body):
    textarea = operation_block(driver, block_id).find_element(By.CSS_SELECTOR, "textarea.body-param__text")
    # As an edit would: the textarea's own value setter, then the input event React listens to (typing the text
    # key by key takes seconds, one re-render of the page per key).
    driver.execute_script(
        "var area = arguments[0];"
        "Object.getOwnPropertyDescriptor(HTMLTextAreaElement.prototype, 'value').set.call(area, arguments[1]);"
        "area.dispatchEvent(new Event('input', {bubbles: true}));",
        textarea, json.dumps(body))
    wait(driver, 5, lambda d: json.loads(textarea.get_attribute("value") or "null") == body,
         f"the request body of {block_id} to read {json.dumps(body)}")


def execute(driver, block_id):
    """Clicks Execute and waits for the live response; returns (status, body text, seconds)."""
    start = time.monotonic()
    operation_block(driver, block_id).find_element(By.CSS_SELECTOR, "button.execute").click()
    selector = ".live-responses-table .response .response-col_status"
    cell = wait(driver, REQUEST_TIMEOUT,
                lambda d: operation_block(d, block_id).find_elements(By.CSS_SELECTOR, selector),
                f"the response to {block_id}")[0]
    seconds = time.monotonic() - start
    block = operation_block(driver, block_id)
    bodies = block.find_elements(By.CSS_SELECTOR, ".live-responses-table .response-col_description pre")
    # A request that got no answer reads "Undocumented" with the browser's error ("Failed to fetch") instead.
    details = block.find_elements(By.CSS_SELECTOR, ".live-responses-table .response .response-col_description")
    body = (bodies or details)[0].get_attribute("textContent") if bodies or details else ""
    # The cell reads the code, then "Undocumented" when the spec does not list it.
    status = cell.get_attribute("textContent").strip()
    status = status[:3] if status[:3].isdigit() else status
    return status, body, seconds


def expect_json_response(block_id, status, body, fields):
    if status != "200":
        fail(f"{block_id}: the page's request was answered {status}: {body[:500]}")
    try:
        answer = json.loads(body)
    except ValueError:
        fail(f"{block_id}: the response body the page shows is not JSON: {body[:500]}")
    missing = [field for field in fields if field not in answer]
    if missing:
        fail(f"{block_id}: the response lacks {missing}: {body[:500]}")
    return answer


def clear_response(driver, block_id):
    operation_block(driver, block_id).find_element(By.CSS_SELECTOR, "button.btn-clear").click()
    wait(driver, 10, lambda d: not operation_block(d, block_id).find_elements(By.CSS_SELECTOR, ".live-responses-table"),
         f"the response of {block_id} to clear")


def authorize(driver, key):
    """Enters `key` for the apiKey scheme in the Authorize dialog, applies it and closes the dialog."""
    driver.find_element(By.CSS_SELECTOR, ".auth-wrapper button.authorize").click()

    def api_key_scheme(d):
        found = [c for c in d.find_elements(By.CSS_SELECTOR, ".modal-ux .auth-container") if "apiKey" in c.text]
        return found[0] if found else None

    scheme = wait(driver, 10, api_key_scheme, "the Authorize dialog with the apiKey scheme")
    scheme.find_element(By.CSS_SELECTOR, "input[aria-label='auth-bearer-value']").send_keys(key)
    scheme.find_element(By.CSS_SELECTOR, "button.authorize").click()
    # Applied, the scheme shows its value masked in place of the input.
    wait(driver, 10, lambda d: "******" in api_key_scheme(d).text, "the dialog to show the key applied")
    api_key_scheme(driver).find_element(By.CSS_SELECTOR, "button.btn-done").click()
    wait(driver, 10, lambda d: not d.find_elements(By.CSS_SELECTOR, ".modal-ux"), "the Authorize dialog to close")
    wait(driver, 10, lambda d: d.find_elements(By.CSS_SELECTOR, ".auth-wrapper button.authorize.locked"),
         "the Authorize button to show a lock")


def requested_urls(driver):
    """Every URL the page asked for: Chrome's network log, then the page's own resource timings."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message.get("method") == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    urls += driver.execute_script(
        "return performance.getEntriesByType('resource').map(function (e) { return e.name; })")
    return urls


def origin(url):
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def full_page_screenshot(driver, path):
    width, height = driver.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.scrollHeight]")
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png",
        "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
    })
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(base64.b64decode(shot["data"]))
    return width, height


def check_page(driver, base, spec, image, screenshot, started, api_key):
    expected = expected_blocks(spec)
    driver.get(base + "/docs")
    wait(driver, RENDER_TIMEOUT,
         lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= len(expected),
         f"Swagger UI to list the spec's {len(expected)} operations")
    rendered = driver.execute_script(
        "return Array.from(document.querySelectorAll('.opblock')).map(function (e) { return e.id; })")
    if sorted(rendered) != sorted(expected):
        fail(f"the page lists {len(rendered)} operations, the spec has {len(expected)}: missing "
             f"{sorted(set(expected) - set(rendered))}, unexpected {sorted(set(rendered) - set(expected))}")
    for block_id, route in expected.items():
        block = operation_block(driver, block_id)
        method = block.find_element(By.CSS_SELECTOR, ".opblock-summary-method").get_attribute("textContent")
        path = block.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path")
        if f"{method} {path}" != route:
            fail(f"{block_id} should read {route}, reads {method} {path}")
    title = driver.find_element(By.CSS_SELECTOR, ".info .title").text
    if spec["info"]["title"] not in title:
        fail(f"the page's title reads {title!r}, the spec's is {spec['info']['title']!r}")
    servers = [o.get_attribute("value") for o in driver.find_elements(By.CSS_SELECTOR, ".servers select option")]
    if servers != [base]:
        fail(f"the page should send its requests to {base} only, its servers are {servers}")
    print(f"Swagger UI listed all {len(expected)} operations of the served spec in "
          f"{time.monotonic() - started:.1f} s")

    block = "operations-tasks-sentimentDefault"
    review = {"text": "A wonderful, moving film: the best I have seen all year."}
    if api_key:
        open_operation(driver, block)
        set_json_body(driver, block, review)
        status, body, _ = execute(driver, block)
        if status != "401" or json.loads(body).get("error_type") != "unauthorized":
            fail(f"{block}: before Authorize, the page's request was answered {status}, not 401: {body[:500]}")
        clear_response(driver, block)
        authorize(driver, api_key)
        print("before Authorize: POST /v1/sentiment from the page 401; the key entered in the Authorize dialog")
    open_operation(driver, block)
    set_json_body(driver, block, review)
    status, body, seconds = execute(driver, block)
    answer = expect_json_response(block, status, body, ["model", "results"])
    label = answer["results"][0]["label"]
    if label != "positive":
        fail(f"{block}: a glowing review was labelled {label!r}: {body}")
    print(f"POST /v1/sentiment from the page: 200, label {label} ({seconds:.1f} s)")

    block = "operations-tasks-generateDefault"
    open_operation(driver, block)
    set_json_body(driver, block, {"prompt": "ROMEO.\n", "max_tokens": 40, "temperature": 0.8, "seed": 7})
    status, body, seconds = execute(driver, block)
    answer = expect_json_response(block, status, body, ["text", "tokens", "finish_reason"])
    if answer["tokens"] != 40 or not answer["text"]:
        fail(f"{block}: asked for 40 tokens, got {body}")
    print(f"POST /v1/generate from the page: 200, {answer['tokens']} tokens ({seconds:.1f} s)")

    block = "operations-tasks-classifyDefault"
    open_operation(driver, block)
    # The request body's first content type, image/*, is a file input: the photo is uploaded through it.
    uploads = operation_block(driver, block).find_elements(By.CSS_SELECTOR, ".opblock-body input[type=file]")
    if not uploads:
        fail(f"{block}: no file input to upload a photo with")
    uploads[0].send_keys(str(image))
    status, body, seconds = execute(driver, block)
    answer = expect_json_response(block, status, body, ["model", "predictions"])
    top = answer["predictions"][0]
    print(f"POST /v1/classify from the page with {image.name} uploaded: 200, {top['label']} "
          f"{top['score']:.2f} ({seconds:.1f} s)")

    # An image answer: the page shows the PNG from a blob: URL (the Content-Security-Policy must allow it).
    block = "operations-tasks-stylizeDefault"
    open_operation(driver, block)
    operation_block(driver, block).find_element(By.CSS_SELECTOR, ".opblock-body input[type=file]") \
        .send_keys(str(image))
    status, _, seconds = execute(driver, block)
    if status != "200":
        fail(f"{block}: the page's request was answered {status}")
    shown = wait(driver, 10, lambda d: d.execute_script(
        "var i = arguments[0].querySelector('.live-responses-table img');"
        "return i && i.complete && i.naturalWidth > 0 ? [i.naturalWidth, i.naturalHeight] : null",
        operation_block(d, block)), f"{block}: the restyled image to show")
    print(f"POST /v1/stylize from the page with {image.name} uploaded: 200, a {shown[0]} x {shown[1]} image "
          f"shown ({seconds:.1f} s)")

    start = time.monotonic()
    width, height = full_page_screenshot(driver, screenshot)
    print(f"full-page screenshot {screenshot} ({width} x {height}, {time.monotonic() - start:.1f} s)")

    urls = requested_urls(driver)
    elsewhere = sorted({u for u in urls
                        if not u.startswith(("data:", "blob:", "about:")) and origin(u) != origin(base)})
    if elsewhere:
        fail(f"the page made requests beyond {base}: {elsewhere}")
    print(f"the page made {len(urls)} requests, all to {base}")
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    if api_key:
        # The one refusal asked for before Authorize, which Chromium logs as a failed load.
        refused = f"{base}/v1/sentiment - Failed to load resource: the server responded with a status of 401"
        logged = [e for e in errors if e.startswith(refused)]
        if len(logged) != 1:
            fail(f"the console should show the one 401 asked for before Authorize: {errors}")
        errors.remove(logged[0])
    if errors:
        fail(f"the browser's console has errors: {errors}")


def main():
    arguments = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    arguments.add_argument("base")
    arguments.add_argument("screenshot")
    arguments.add_argument("image", nargs="?", default=REPO / "tests/data/images/china.jpg", type=Path)
    arguments.add_argument("--api-key", help="the server's API key, entered under Authorize")
    args = arguments.parse_args()
    base = args.base.rstrip("/")
    screenshot = args.screenshot
    image = args.image.resolve()
    started = time.monotonic()
    spec = served_spec(base)
    driver = start_browser(base)
    try:
        check_page(driver, base, spec, image, screenshot, started, args.api_key)
    except Exception:
        try:
            full_page_screenshot(driver, screenshot)
            print(f"screenshot of the failure: {screenshot}", file=sys.stderr)
        except Exception as e:  # the browser itself may be what failed
            print(f"no screenshot of the failure: {e}", file=sys.stderr)
        raise
    finally:
        driver.quit()
    print(f"docs browser checks passed ({time.monotonic() - started:.1f} s)")


if __name__ == "__main__":
    main()
