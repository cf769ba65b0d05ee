"""The console in a real browser: Playwright for Python driving Debian's chromium (scripts/setup
installs it; nothing is downloaded). Screenshots go to $TRISERVE_SCREENSHOTS (default: the test's
tmp_path); docs/ has the ones the README shows."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import shutil
import threading
from pathlib import Path
from typing import AsyncIterator, Callable, TypeVar

import httpx
import numpy as np
import pytest

from tests.conftest import free_port
from tests.console.models import console_repository
from tests.console.test_api import chelsea_jpeg
from tests.inprocess import triton_dataplane
from triserve.console import Console
from triserve.options import ServerOptions
from triserve.protocols.kserve import rest

pytestmark = pytest.mark.slow  # a browser process per test

T = TypeVar("T")

CAT = {"Egyptian cat", "tiger cat", "tabby"}
TIMEOUT_MS = 60_000  # generous: a busy 2-core machine; every wait is for an event, not a duration


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.fail("Debian's chromium is not installed: scripts/setup installs it (apt-get install -y chromium)")
    return path


def screenshots(tmp_path: Path) -> Path:
    out = Path(os.environ.get("TRISERVE_SCREENSHOTS", tmp_path))
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.asynccontextmanager
async def browser_page() -> AsyncIterator:
    os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=chromium(), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(TIMEOUT_MS)
            outside: list[str] = []
            page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(("http://127.0.0.1", "blob:", "data:")) else None)
            yield page, outside
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def on_own_loop(context: Callable[[], contextlib.AbstractAsyncContextManager[T]]) -> AsyncIterator[T]:
    """Enter `context()` in an event loop of its own on another thread, as if in another process.
    The server and the load run so, not in the test's loop: after each message from its driver,
    Playwright waits for its loop's queue to run empty (up to 100 turns), so a server or clients
    kept busy in that loop would hold back every browser action."""
    started: concurrent.futures.Future = concurrent.futures.Future()
    failed: list[BaseException] = []

    async def main() -> None:
        stop = asyncio.Event()
        async with context() as value:
            started.set_result((value, asyncio.get_running_loop(), stop))
            await stop.wait()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as e:
            if not started.done():
                started.set_exception(e)
            else:
                failed.append(e)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        value, loop, stop = await asyncio.wrap_future(started)
        try:
            yield value
        finally:
            loop.call_soon_threadsafe(stop.set)
    finally:
        await asyncio.to_thread(thread.join)
    if failed:
        raise failed[0]


def console_server(tmp_path: Path, **kwargs) -> contextlib.AbstractAsyncContextManager[str]:
    """The v2 HTTP front end with the console on a free port: its URL."""

    @contextlib.asynccontextmanager
    async def serve() -> AsyncIterator[str]:
        async with triton_dataplane(console_repository(tmp_path / "repo"), **kwargs) as dataplane:
            port = free_port()
            console = Console(dataplane, {"http": port})
            console.sampler.start()  # as server.py starts it
            frontend = rest.frontend(dataplane, ServerOptions(), port, extra_routes=console.routes())
            await frontend.start()
            try:
                yield f"http://127.0.0.1:{port}"
            finally:
                await frontend.stop()
                await console.sampler.stop()

    return on_own_loop(serve)


def clients(url: str, path: str, body: dict, count: int) -> contextlib.AbstractAsyncContextManager[list[int]]:
    """`count` clients posting `body` to `path`, each its next request as soon as the last is
    answered, until the context exits: the requests each one sent (every answer a 200)."""

    @contextlib.asynccontextmanager
    async def load() -> AsyncIterator[list[int]]:
        sent = [0] * count
        stop = asyncio.Event()

        async def client_loop(client: httpx.AsyncClient, i: int) -> None:
            while not stop.is_set():
                assert (await client.post(path, json=body)).status_code == 200
                sent[i] += 1

        async with httpx.AsyncClient(base_url=url, limits=httpx.Limits(max_connections=count)) as client:
            tasks = [asyncio.create_task(client_loop(client, i)) for i in range(count)]
            try:
                yield sent
            finally:
                stop.set()
                await asyncio.gather(*tasks)

    return on_own_loop(load)


@pytest.mark.anyio
async def test_console_shows_models_traffic_and_controls_them(tmp_path):
    from playwright.async_api import expect

    names = ["colors", "doubler", "scores", "simple"]
    async with console_server(tmp_path, control_mode="explicit", load_models=names) as url:
        async with browser_page() as (page, outside):
            await page.goto(url + "/")
            for name in names:
                await expect(page.locator(f'#models-table tr[data-model="{name}"] .state')).to_have_text("READY")
            await expect(page.locator("#server")).to_contain_text("control mode explicit")

            # Traffic: the counter and the requests/s chart move after requests.
            await page.click('nav a[data-tab="traffic"]')
            counter = page.locator("#request-counter")
            await expect(counter).to_have_text("0")
            async with httpx.AsyncClient(base_url=url) as client:
                body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 5], "data": [1, 2, 3, 4, 5]}]}
                for _ in range(5):
                    assert (await client.post("/v2/models/scores/infer", json=body)).status_code == 200
            await expect(counter).to_have_text("5")
            await expect(page.locator("#chart-rps path.l0")).to_have_count(1)
            await page.select_option("#traffic-model", "scores")
            await expect(counter).to_have_text("5")
            await page.select_option("#traffic-model", "simple")
            await expect(counter).to_have_text("0")

            # Model page.
            await page.goto(url + "/#model/scores")
            await expect(page.locator("#model-pbtxt")).to_contain_text('name: "scores"')
            await expect(page.locator("#model-labels")).to_contain_text("zero, one, two")

            # Control: unload and load again (explicit mode).
            await page.click('nav a[data-tab="control"]')
            row = page.locator('#control-table tr[data-model="colors"]')
            await row.locator('button[data-action="unload"]').click()
            await expect(row.locator(".state")).to_have_text("UNAVAILABLE")
            await expect(page.locator("#control-status")).to_have_text("unload colors: done")
            await row.locator('button[data-action="load"]').click()
            await expect(row.locator(".state")).to_have_text("READY")
            await page.click('nav a[data-tab="models"]')
            await expect(page.locator('#models-table tr[data-model="colors"] .state')).to_have_text("READY")
            assert outside == []


@pytest.mark.anyio
async def test_control_buttons_are_off_unless_explicit_mode(tmp_path):
    from playwright.async_api import expect

    async with console_server(tmp_path) as url:
        async with browser_page() as (page, _outside):
            await page.goto(url + "/#control")
            await expect(page.locator("#control-mode")).to_contain_text("Model control mode is none")
            await expect(page.locator('#control-table tr[data-model="simple"] button[data-action="unload"]')).to_be_disabled()


@pytest.mark.anyio
async def test_try_it_with_the_tiny_classifier(tmp_path):
    from playwright.async_api import expect

    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(chelsea_jpeg())
    async with console_server(tmp_path) as url:
        async with browser_page() as (page, _outside):
            await page.goto(url + "/#try")
            await page.set_input_files("#photo", str(photo))
            result = page.locator('#try-results .result[data-model="colors"]')
            await expect(result.locator(".bar.top .name")).to_have_text("red")
            await expect(result.locator(".bar")).to_have_count(3)


def test_try_it_chelsea_is_a_cat_for_every_example_classifier(start_server, example_repo, tmp_path):
    """The exported examples (real ImageNet weights) in a `triserve serve` process."""
    server = start_server("--model-repository", example_repo)
    url = f"http://127.0.0.1:{server.ports['http']}"
    photo = tmp_path / "chelsea.jpg"
    photo.write_bytes(chelsea_jpeg())
    classifiers = [
        "efficientnet_lite0_jpeg", "efficientnet_lite0_onnx", "efficientnet_lite0_openvino", "efficientnet_lite0_tf",
        "efficientnet_lite0_torch",
    ]

    async def run() -> None:
        from playwright.async_api import expect

        async with browser_page() as (page, outside):
            await page.goto(url + "/")
            for name in [*classifiers, "preprocess"]:
                await expect(page.locator(f'#models-table tr[data-model="{name}"] .state')).to_have_text("READY")
            await page.screenshot(path=str(screenshots(tmp_path) / "console-models.png"))
            await page.click('nav a[data-tab="try"]')
            await page.set_input_files("#photo", str(photo))
            await expect(page.locator("#try-results .result")).to_have_count(len(classifiers))
            for name in classifiers:
                top = page.locator(f'#try-results .result[data-model="{name}"] .bar.top .name')
                await expect(top).to_have_text(top_label_pattern())
            await page.screenshot(path=str(screenshots(tmp_path) / "console-try-it.png"), full_page=True)
            assert outside == []

    asyncio.run(run())


def top_label_pattern():
    import re

    return re.compile("^(" + "|".join(map(re.escape, sorted(CAT))) + ")$")


@pytest.mark.anyio
async def test_docs_render_the_v2_api_in_swagger_ui(tmp_path):
    from playwright.async_api import expect

    async with console_server(tmp_path) as url:
        async with browser_page() as (page, outside):
            await page.goto(url + "/docs")
            await expect(page.locator(".info .title").first).to_contain_text("KServe v2 HTTP")
            await expect(page.locator('.opblock-summary-path[data-path="/v2/models/{model}/infer"]').first).to_be_visible()
            await page.screenshot(path=str(screenshots(tmp_path) / "docs.png"))
            assert outside == []


@pytest.mark.anyio
async def test_charts_keep_updating_under_16_concurrent_clients(tmp_path):
    from playwright.async_api import expect

    async with console_server(tmp_path) as url:
        async with browser_page() as (page, _outside):
            await page.goto(url + "/#traffic")
            counter = page.locator("#request-counter")
            await expect(counter).to_have_text("0")
            body = {"inputs": [{"name": "INPUT", "datatype": "FP32", "shape": [1, 5], "data": [1, 2, 3, 4, 5]}]}
            async with clients(url, "/v2/models/scores/infer", body, 16) as sent_by_each:
                await expect(counter).not_to_have_text("0")
                first = await counter.text_content()
                await expect(counter).not_to_have_text(first)  # a later sample, while the load goes on
                second = await counter.text_content()
                await expect(counter).not_to_have_text(second)
                await page.screenshot(path=str(screenshots(tmp_path) / "console-traffic.png"))
            sent = sum(sent_by_each)
            await expect(counter).to_have_text(str(sent))  # every request counted once the load stops
