"""The playground in a real browser (headless Chromium) against the live server on the tiny checkpoint.

CI needs, besides the test extra (the lead's .ci/run installs them):
    apt-get update && apt-get install -y --no-install-recommends chromium     # Debian's Chromium, /usr/bin/chromium
    .venv/bin/pip install 'playwright>=1.45'                                  # or the project's [browser] extra
No `playwright install`: Playwright drives the system Chromium (executable_path), nothing is downloaded.
Without either, these tests are skipped (by the browser fixture, before a server starts) and say which is
missing. Screenshots: tests/artifacts/browser/.
"""

from __future__ import annotations

import base64
import io
import re

from PIL import Image

from engine.frontend.vqgan import VQGANConfig


def _png(color: tuple[int, int, int], size: tuple[int, int] = (96, 80)) -> bytes:
    image = Image.new("RGB", size, color)
    image.paste((255, 255, 255), (10, 10, 40, 40))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _image(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")


def _drop(page, png: bytes, name: str) -> None:
    """Drag and drop a file onto the chat, as a person would from a file manager."""
    page.evaluate("""({data, name}) => {
        const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, {type: "image/png"}));
        const chat = document.getElementById("chat");
        for (const type of ["dragenter", "dragover", "drop"]) {
            chat.dispatchEvent(new DragEvent(type, {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }
    }""", {"data": base64.b64encode(png).decode(), "name": name})


def _send(page, text: str) -> object:
    """Send a message; the reply's element once it has finished streaming."""
    count = page.locator(".msg.assistant").count()
    page.fill("#prompt", text)
    page.press("#prompt", "Enter")
    reply = page.locator(".msg.assistant").nth(count)
    reply.and_(page.locator(":not(.busy)")).wait_for()
    return reply


def _clean(watch) -> None:
    assert watch.console == [] and watch.errors == [], (watch.console, watch.errors)
    assert watch.foreign == [], f"the page reached beyond {watch.origin}: {watch.foreign}"


def test_page_loads_clean(watch):
    page = watch.page
    assert page.title() == "chameleon-serve playground"
    assert page.locator("#model").text_content() == "tiny-chameleon"
    assert page.locator("#key-box").is_visible()  # this server was started with --api-key
    sizes = page.locator("#image_size option")
    sizes.nth(1).wait_for(state="attached")  # the sizes the model writes, from /playground/config
    assert sizes.all_text_contents() == ["auto", "64x64"]  # the tiny checkpoint's one square
    watch.shot("loaded")
    _clean(watch)


def test_errors_are_shown_then_a_request_succeeds(watch, api_key):
    page = watch.page
    page.fill("#api-key", "wrong-key")
    error = _send(page, "Hello").locator(".error")
    assert re.search(r"HTTP 401 .*invalid or missing API key", error.text_content())
    watch.shot("wrong-key")
    page.fill("#api-key", api_key)
    page.fill("#settings [name=temperature]", "5")
    error = _send(page, "Hello").locator(".error")
    assert re.search(r"HTTP 400 .*temperature", error.text_content())
    watch.shot("bad-temperature")
    page.fill("#settings [name=temperature]", "1")
    page.fill("#settings [name=max_tokens]", "8")
    reply = _send(page, "Hello")
    assert reply.locator(".error").count() == 0 and reply.locator(".text").count() == 1


def test_upload_images_and_ask_for_text(watch, api_key, tmp_path):
    page = watch.page
    page.fill("#api-key", api_key)
    picked = tmp_path / "red.png"
    picked.write_bytes(_png((200, 30, 30)))
    page.set_input_files("#file", str(picked))
    _drop(page, _png((30, 30, 200)), "blue.png")
    page.locator(".attachment").nth(1).wait_for()
    assert page.locator(".attachment img").count() == 2
    watch.shot("attached")
    page.fill("#settings [name=max_tokens]", "12")
    reply = _send(page, "What is in these pictures?")
    assert page.locator(".msg.user .thumb").count() == 2 and page.locator(".attachment").count() == 0
    assert reply.locator(".error").count() == 0 and reply.locator(".text").text_content()
    prompt_tokens = int(re.search(r"(\d+) prompt", reply.locator(".meta").text_content()).group(1))
    assert prompt_tokens > 2 * 1026  # both images reached the model: BOI + 1024 codes + EOI each
    _clean(watch)


def test_image_previews_sharpen_into_the_final_image(watch, api_key, tiny_dir, tmp_path):
    resolution = VQGANConfig.from_meta_yaml(tiny_dir / "vqgan.yaml").resolution
    page = watch.page
    page.fill("#api-key", api_key)
    page.select_option("#modalities", "image")
    page.fill("#partial_images", "3")
    page.fill("#settings [name=seed]", "3")
    page.evaluate("""() => new MutationObserver((records) => {  // every picture the page showed, in order
        for (const r of records) if (r.oldValue) (window.shown ||= []).push(r.oldValue);
    }).observe(document.getElementById("messages"),
               {subtree: true, attributeFilter: ["src"], attributeOldValue: true})""")
    reply = _send(page, "Draw a red circle on a white background.")
    figure = reply.locator("figure.image.final")
    img = figure.locator("img")
    assert img.evaluate("img => img.decode().then(() => [img.naturalWidth, img.naturalHeight])") == [resolution] * 2
    previews = [_image(url) for url in page.evaluate("window.shown || []")]  # replaced pictures: the previews
    assert 1 <= len(previews) <= 3 and int(figure.get_attribute("data-previews")) == len(previews)
    for preview in previews:  # the rows not yet written are mid-grey, and the picture is full size
        assert preview.size == (resolution, resolution) and preview.getpixel((0, resolution - 1)) == (128, 128, 128)
    final = img.get_attribute("src")
    assert figure.locator("a.download").get_attribute("href") == final
    watch.shot("image")
    with page.expect_download() as download:
        figure.locator("a.download").click()
    saved = tmp_path / download.value.suggested_filename
    download.value.save_as(saved)
    assert saved.name == "chameleon-1.png" and Image.open(saved).size == (resolution, resolution)
    _clean(watch)


def _keep_sent_mask(page) -> None:
    """Record the ``mask`` file of the page's next edit request as a data URL in ``window.sentMask`` (the
    browser hands the test no body of a request built from blobs)."""
    page.evaluate("""() => {
        const original = window.fetch;
        window.fetch = async (url, init) => {
            if (String(url).endsWith("/v1/images/edits")) {
                const mask = init.body.get("mask");
                window.sentMask = await new Promise((resolve) => {
                    const reader = new FileReader();
                    reader.onload = () => resolve(reader.result);
                    reader.readAsDataURL(mask);
                });
            }
            return original(url, init);
        };
    }""")


def test_edit_mode_paints_a_mask_and_streams_the_edit(watch, api_key, tiny_dir):
    resolution = VQGANConfig.from_meta_yaml(tiny_dir / "vqgan.yaml").resolution
    page = watch.page
    page.fill("#api-key", api_key)
    page.fill("#partial_images", "2")
    page.fill("#settings [name=seed]", "5")
    page.fill("#settings [name=max_tokens]", "4")
    _drop(page, _png((30, 200, 30)), "green.png")
    page.locator(".attachment").wait_for()
    _send(page, "Here is a picture.")
    page.locator(".msg.user button.edit").first.click()
    mask = page.locator("#edit-mask")
    mask.wait_for()
    box = mask.bounding_box()
    page.mouse.move(box["x"] + 4, box["y"] + 4)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] / 3, box["y"] + box["height"] / 3, steps=10)
    page.mouse.up()
    page.fill("#edit-prompt", "make the corner red")
    watch.shot("editor")
    count = page.locator(".msg.assistant").count()
    _keep_sent_mask(page)
    with page.expect_request("**/v1/images/edits"):
        page.click("#edit-apply")
    reply = page.locator(".msg.assistant").nth(count)
    reply.and_(page.locator(":not(.busy)")).wait_for()
    drawn = Image.open(io.BytesIO(base64.b64decode(page.evaluate("window.sentMask").split(",", 1)[1])))
    assert drawn.size == (96, 80) and drawn.mode == "RGBA"  # the image's own size
    assert drawn.getpixel((3, 3))[3] == 0 and drawn.getpixel((90, 75))[3] == 255  # painted: transparent
    figure = reply.locator("figure.image.final")
    img = figure.locator("img")
    assert img.evaluate("img => img.decode().then(() => [img.naturalWidth, img.naturalHeight])") == [resolution] * 2
    assert int(figure.get_attribute("data-previews")) >= 1
    assert reply.locator(".error").count() == 0 and "image tokens" in reply.locator(".meta").text_content()
    watch.shot("edited")
    _clean(watch)
