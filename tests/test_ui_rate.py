"""The Rate pairs tab in a real browser: two annotators logged in from a users file vote at once in
two browser contexts (keys and buttons), never get the same pair with overlap 1, undo works, the
app is killed with kill -9 mid-queue and every vote is still there after the restart; the Votes
tab then shows both annotators."""

from __future__ import annotations

import re
import time

import pytest
from playwright.sync_api import expect

from studio.prefs import pairs, store
from studio.prefs.pairs import Pair, Source
from tests.support.app import screenshot

pytestmark = [pytest.mark.browser]

N = 6


def _job() -> str:
    prompts = [[{"role": "user", "content": f"Prompt number {i}?"}] for i in range(N)]
    job = pairs.new_job(prompts, Source(model="default"), Source(model="default", adapter="runs/r/adapter"))
    for p in job.prompts:
        i = p["id"]
        pair = Pair(
            pairs.pair_id(job.job_id, i), i, p["messages"], f"Answer A{i}.", f"Answer B{i}.", "A", "B"
        )
        pairs.append_pair(job.job_id, pair)
    pairs.write_status(job.job_id, state="completed", done=N)
    return job.job_id


def _login(page, url: str, user: str, password: str) -> None:
    page.goto(url)
    page.get_by_label("username").fill(user)
    page.get_by_label("password").fill(password)
    page.get_by_role("button", name="Login").click()
    page.get_by_role("tab", name="Rate pairs", exact=True).click()


def _prompt(page) -> str:
    """The prompt on screen once the page is idle ('' while an update is pending)."""
    text = page.locator("#rate-prompt").inner_text().strip()
    return text if text.startswith(("Prompt:", "Nothing left")) else ""


def _settled(page) -> str:
    deadline = time.monotonic() + 20
    while not (text := _prompt(page)):
        assert time.monotonic() < deadline, "the Rate tab did not finish updating"
        time.sleep(0.05)
    return text


def _next(page) -> str:
    page.locator("#rate-next").click()
    expect(page.locator("#rate-prompt")).to_contain_text(re.compile("Prompt:|Nothing left"))
    return _settled(page)


def _vote_key(page, key: str) -> None:
    before = _settled(page)
    page.locator("#rate-progress").click()  # focus off any text box: the keys act on the page
    page.keyboard.press(key)
    deadline = time.monotonic() + 20
    while _prompt(page) in ("", before):
        assert time.monotonic() < deadline, f"key {key} did not move on from {before!r}"
        time.sleep(0.1)


def test_two_annotators_vote_at_once_and_votes_survive_kill_9(app, browser, studio_home):
    job_id = _job()
    users = studio_home / "users.txt"
    users.write_text("# the team\nalice:pw-alice\n\nbob:pw-bob\n")
    server = app({"STUDIO_AUTH": str(users)})
    ctx_a, ctx_b = browser.new_context(), browser.new_context()
    alice, bob = ctx_a.new_page(), ctx_b.new_page()
    for page, user in ((alice, "alice"), (bob, "bob")):
        page.set_default_timeout(30_000)
        _login(page, server.url, user, f"pw-{user}")
    try:
        shown_a, shown_b = _next(alice), _next(bob)
        assert shown_a != shown_b  # a pair on alice's screen is held for her
        _vote_key(alice, "1")
        bob.locator("#rate-second").click()
        expect(bob.locator("#rate-prompt")).not_to_have_text(shown_b)
        assert _settled(alice) != _settled(bob)
        _vote_key(alice, "u")  # undo: alice's vote is deleted and her pair shown again
        assert _settled(alice) == shown_a
        _vote_key(alice, "3")  # tie this time
        expect(alice.locator("#rate-progress")).to_contain_text("you rated 1")
        screenshot(alice, "rate")
        assert len(store.pair_votes(job_id + "/")) == 2

        server.kill()  # kill -9 mid-queue, then start again on the same workspace
        server = app({"STUDIO_AUTH": str(users)})
        for page, user in ((alice, "alice"), (bob, "bob")):
            _login(page, server.url, user, f"pw-{user}")
        assert len(store.pair_votes(job_id + "/")) == 2
        for _ in range(N):
            a, b = _next(alice), _next(bob)
            assert a.startswith("Nothing left") or a != b
            for page, text in ((alice, a), (bob, b)):
                if not text.startswith("Nothing left"):
                    _vote_key(page, "2")
        expect(alice.locator("#rate-prompt")).to_contain_text("Nothing left")
        expect(alice.locator("#rate-progress")).to_contain_text(f"{N} of {N}")
    finally:
        ctx_a.close()
        ctx_b.close()
    votes = store.pair_votes(job_id + "/")
    assert sorted(v.pair_id for v in votes) == sorted(pairs.pair_id(job_id, i) for i in range(N))  # each once
    assert {v.annotator for v in votes} == {"alice", "bob"}
    assert votes[0].verdict == "B" or votes[0].verdict in ("A", "tie")
    assert all(v.source_b == "B" and v.answer_a.startswith("Answer A") for v in votes)


def test_votes_tab_shows_annotators_and_agreement(app, page, studio_home):
    job_id = _job()
    for i, (x, y) in enumerate([("A", "A"), ("B", "B"), ("A", "B")]):
        for who, verdict in (("alice", x), ("bob", y)):
            store.record_vote(
                [{"role": "user", "content": f"Prompt number {i}?"}], f"Answer A{i}.", f"Answer B{i}.", verdict,
                annotator=who, pair_id=pairs.pair_id(job_id, i),
            )  # fmt: skip
    server = app()
    page.goto(server.url)
    page.get_by_role("tab", name="Votes", exact=True).click()
    team = page.locator("#votes-annotators")
    expect(team).to_contain_text("alice")
    expect(team).to_contain_text("bob")
    expect(team).to_contain_text("agreement on 3 pairs rated by several people (alice, bob): percent 0.667")
    page.get_by_role("button", name="Export team votes").click()
    expect(page.locator("#votes-team-exported")).to_contain_text("2 resolved, 1 tied pairs dropped")
    screenshot(page, "votes-team")


def test_make_pairs_in_the_browser_runs_a_background_job(app, page, tiny_model):
    server = app()
    page.goto(server.url)
    page.get_by_role("tab", name="Rate pairs", exact=True).click()
    page.get_by_text("Make pairs: two answers for every prompt").click()
    page.locator("#rate-lines textarea").fill("What is two plus two?\nName a colour.")
    page.locator("#rate-model-a textarea, #rate-model-a input").first.fill(str(tiny_model))
    page.locator("#rate-model-b textarea, #rate-model-b input").first.fill(str(tiny_model))
    page.get_by_role("button", name="Generate pairs", exact=True).click()
    status = page.locator("#rate-job-status")
    expect(status).to_contain_text("of 2")
    deadline = time.monotonic() + 240
    while "2 of 2 pairs made — all pairs made" not in status.inner_text():
        assert time.monotonic() < deadline, status.inner_text()
        page.get_by_role("button", name="Refresh", exact=True).first.click()
        time.sleep(2)
    [job_id] = pairs.list_jobs()
    assert sorted(p.prompt_id for p in pairs.read_pairs(job_id)) == [0, 1]
    page.locator("#rate-name textarea, #rate-name input").first.fill("solo")
    shown = _next(page)
    assert shown.startswith("Prompt:")
    page.locator("#rate-edit-1").click()
    first = page.locator("#rate-answer-1 textarea").input_value()
    expect(page.locator("#rate-edit textarea")).to_have_value(first)
    page.locator("#rate-edit textarea").fill("Four.")
    page.locator("#rate-tie").click()
    expect(page.locator("#rate-progress")).to_contain_text("you rated 1")
    [vote] = store.pair_votes(job_id + "/")
    assert (vote.annotator, vote.verdict, vote.edited) == ("solo", "tie", "Four.")


def test_a_late_tab_answer_keeps_the_job_that_generate_picked_and_refresh_finds_it(studio_home):
    """Opening the tab asks the server for the job list; under load that answer can arrive after
    "Generate pairs" picked the job it started. An answer with no job to pick leaves the pick
    alone, and Refresh with nothing picked picks the newest job (in CI the late answer once
    cleared the pick and the status said "No pair job yet" for good)."""
    from studio.ui import rate_tab

    assert pairs.list_jobs() == []
    late = rate_tab._on_show(None)[-1]  # computed before the job existed
    assert "value" not in late, "the tab's answer clears whatever job is picked meanwhile"
    assert rate_tab._refreshed(None)["value"] is None
    older = _job()
    newest = _job()
    assert pairs.list_jobs()[0] == newest != older
    assert rate_tab._refreshed(None)["value"] == newest
    assert rate_tab._refreshed(older)["value"] == older
    assert rate_tab._refreshed("deleted-job")["value"] == newest
    assert rate_tab._on_show(None)[-1]["value"] == newest
