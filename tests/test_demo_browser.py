"""mmllava demo in a real headless Chromium (Debian's, driven by Playwright): an empty question is
refused in the page; upload an image, set greedy decoding, ask, and the page shows exactly
``ChatSession.ask``'s answer; a second turn with a second image gets the two-turn answer; after
"Clear history" the first question gets the first answer again."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from served_model import (CONVERSATION, IMAGES, MAX_NEW_TOKENS, greedy_answers, running,  # noqa: F401
                          served_chat_model, served_model)

CHROMIUM = Path('/usr/bin/chromium')  # Debian's package: tests never download a browser
# Flags for a headless browser run as root on a machine without network access.
CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync']


@pytest.fixture(scope='module')
def page(served_model, tmp_path_factory):  # noqa: F811
    if not CHROMIUM.exists():
        if os.environ.get('CI'):
            pytest.fail(f'{CHROMIUM} is missing: .ci/run installs Debian\'s chromium')
        pytest.skip(f'{CHROMIUM} is missing (apt-get install chromium)')
    from playwright.sync_api import sync_playwright

    log = tmp_path_factory.mktemp('demo') / 'demo.log'
    with running('demo', served_model, log, '/', '--examples', str(IMAGES)) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.set_default_timeout(60_000)
        page.goto(url)
        page.wait_for_selector('#send')
        yield page
        browser.close()


def bot_texts(page) -> list[str]:
    return page.locator('#chatbot [data-testid=bot] .message-content').evaluate_all(
        'els => els.map(e => e.textContent)')


def ask(page, question: str, image: Path | None, answers_before: int) -> str:
    """Ask in the page (uploading ``image``) and return the new answer once the turn is complete."""
    if image is not None:
        page.locator('#image input[type=file]').set_input_files(str(image))
        page.wait_for_selector('#image img')
    page.locator('#question textarea').fill(question)
    page.locator('#send').click()
    # Send is disabled from the first piece of the answer to the last: the turn is complete when the
    # new answer stands in the chat and Send is enabled again.
    page.wait_for_function('([n]) => document.querySelectorAll("#chatbot [data-testid=bot]").length === n + 1 && '
                           '!document.querySelector("#send").disabled', arg=[answers_before])
    texts = bot_texts(page)
    assert len(texts) == answers_before + 1
    return texts[-1]


def set_slider(page, slider: str, value: float, attempts: int = 5) -> None:
    """Type ``value`` into a Gradio slider's number box until the slider holds it: the value the
    next request sends. A box typed into while the page still settles can drop the value (seen in
    about one run in three on a loaded machine: the answer then ran to the default length)."""
    from playwright.sync_api import TimeoutError

    box = page.locator(f'{slider} input[type=number]')
    for _ in range(attempts):
        box.fill(str(value))
        box.press('Enter')
        box.press('Tab')
        try:
            page.wait_for_function('([slider, value]) => Number(document.querySelector(slider + " input[type=range]")'
                                   '.value) === value', arg=[slider, value], timeout=5_000)
            return
        except TimeoutError:
            continue
    raise AssertionError(f'{slider} never took the value {value}')


def test_demo_chats_about_images_in_the_browser(page, greedy_answers):  # noqa: F811
    page.locator('#send').click()
    page.get_by_text('Type a question first.').wait_for()  # an error in the page, not a dead page

    page.get_by_text('Generation settings').click()
    for slider, value in (('#max-new-tokens', MAX_NEW_TOKENS), ('#temperature', 0)):
        set_slider(page, slider, value)

    for turn, (question, image) in enumerate(CONVERSATION):
        assert ask(page, question, image, turn) == greedy_answers[turn]
    assert len(page.locator('#chatbot [data-testid=user] img').all()) == len(CONVERSATION)

    page.locator('#clear').click()
    page.wait_for_function('() => !document.querySelector("#chatbot [data-testid=bot]")')
    assert ask(page, *CONVERSATION[0], 0) == greedy_answers[0]
