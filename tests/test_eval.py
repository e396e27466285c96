"""Evaluation on a tiny model: the held-out split, the command line with a judge over real HTTP,
reference perplexity against the trainer's own loss, human votes and agreement, kill -9 and
resume, bad input, and the model card."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.evaluate import evaldir, evalset, job, pipeline, report
from studio.prefs import store as prefs
from studio.train import recipes
from tests.support.judgeserver import JudgeServer
from tests.support.runfolder import build_run

ROOT = Path(__file__).resolve().parent.parent


def make_run(studio_home: Path, model: Path, eval_split: float = 0.2, run_id: str = "run-1") -> Path:
    """A finished run folder of the tiny model whose recipe.yaml is a full, valid recipe."""
    run = build_run(studio_home / "runs", model, run_id=run_id)
    recipe = recipes.Recipe(model=str(model), dataset=str(ROOT / "sample_data" / "alpaca.jsonl"))
    recipe.data.eval_split = eval_split
    recipe.data.max_length = 256
    (run / "recipe.yaml").write_text(recipes.to_yaml(recipe))
    return run


def eval_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "studio", "eval", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def judge_server():
    server = JudgeServer(mode="longer", key="sk-test-123").start()
    yield server
    server.stop()


def test_heldout_split_is_the_trainers(studio_home, tiny_model):
    from studio.train import setup, tokenized

    run = make_run(studio_home, tiny_model)
    items = evalset.heldout(run)
    recipe = recipes.load(run / "recipe.yaml")
    tokenizer, _ = setup.setup_tokenizer(recipe)
    _, held = tokenized.build_datasets(recipe, tokenizer)
    assert len(items) == len(held) == int(42 * 0.2)
    ours = tokenized.sft_rows([item.record for item in items], tokenizer, recipe)
    assert [row["input_ids"] for row in ours] == held["input_ids"]
    assert all(item.reference.startswith("Short answer:") for item in items)


def test_cli_eval_with_an_openai_compatible_judge_over_http(studio_home, tiny_model, judge_server):
    run = make_run(studio_home, tiny_model)
    args = [str(run), "--limit", "4", "--max-new-tokens", "12", "--batch-size", "2"]
    args += ["--judge", judge_server.url, "--judge-model", "stand-in"]
    proc = eval_cli(*args, env={"OPENAI_API_KEY": "sk-test-123"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "win rate" in proc.stdout and "reference perplexity" in proc.stdout

    (eval_id,) = evaldir.list_ids(run)
    folder = evaldir.folder(run, eval_id)
    answers, verdicts = evaldir.answers(folder), evaldir.verdicts(folder)
    assert sorted(answers) == sorted(verdicts) == [0, 1, 2, 3]
    # both orders went over HTTP, with the key in the header, and are recorded
    assert len(judge_server.requests) == 8
    assert {r["headers"]["authorization"] for r in judge_server.requests} == {"Bearer sk-test-123"}
    assert {r["body"]["model"] for r in judge_server.requests} == {"stand-in"}
    expected = []
    for i in range(4):
        a, b = answers[i]["a"].strip(), answers[i]["b"].strip()
        want = "tie" if len(a) == len(b) else ("A" if len(a) > len(b) else "B")
        row = verdicts[i]
        assert row["first"]["parsed"] and row["second"]["parsed"]
        assert row["first"]["model"] == row["second"]["model"] == want  # the judge follows the answer
        assert row["outcome"] == want
        expected.append(want)
    summary = evaldir.read_summary(folder)
    assert summary["state"] == "completed" and not summary["partial"]
    judged = summary["judge"]
    assert (judged["wins"], judged["ties"], judged["losses"]) == (
        expected.count("B"),
        expected.count("tie"),
        expected.count("A"),
    )
    assert judged["low"] <= judged["win_rate"] <= judged["high"]
    assert summary["references"]["n"] == 4 and summary["perplexity"]["general"]["rows"] == 6
    assert summary == report.summarize(folder, run) | {"state": "completed"}
    # the key never reaches the disk, nor does the endpoint's address reach the summary
    for file in folder.iterdir():
        assert "sk-test-123" not in file.read_text(encoding="utf-8"), file.name
    assert "127.0.0.1" not in json.dumps(summary)


def _trainer_perplexity(recipe, records: list[dict], adapter: Path | None) -> float:
    """exp(mean loss) as the trainer computes it: its own rows, the model's own masked loss."""
    import torch
    from peft import PeftModel

    from studio import models
    from studio.train import setup, tokenized

    tokenizer, _ = setup.setup_tokenizer(recipe)
    rows = tokenized.sft_rows(records, tokenizer, recipe)
    model = models.load_model(recipe.model, dtype=torch.float32).eval()
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).eval()
    total, count = 0.0, 0
    with torch.inference_mode():
        for row in rows:
            n = sum(label != -100 for label in row["labels"][1:])
            loss = model(
                input_ids=torch.tensor([row["input_ids"]]), labels=torch.tensor([row["labels"]])
            ).loss
            total, count = total + float(loss) * n, count + n
    return math.exp(total / count)


def test_reference_perplexity_is_exp_of_the_trainers_masked_loss(studio_home, tiny_model):
    run = make_run(studio_home, tiny_model)
    config = evaldir.EvalConfig(
        eval_set=str(ROOT / "sample_data" / "alpaca.jsonl"), limit=5, max_new_tokens=4
    )
    eval_id = evaldir.create(run, config)
    summary = pipeline.run(run, eval_id)
    assert summary["state"] == "completed", evaldir.read_status(evaldir.folder(run, eval_id))

    recipe = recipes.load(run / "recipe.yaml")
    records = [item.record for item in evalset.from_dataset(config.eval_set)[:5]]
    ppl = summary["perplexity"]["reference"]
    assert ppl["rows"] == 5
    assert ppl["a"] == pytest.approx(_trainer_perplexity(recipe, records, None), rel=1e-4)
    assert ppl["b"] == pytest.approx(_trainer_perplexity(recipe, records, run / "adapter"), rel=1e-4)
    assert ppl["a"] != pytest.approx(ppl["b"], rel=1e-3)  # the adapter really was applied
    general = summary["perplexity"]["general"]
    assert general["a"] > 1 and general["b"] > 1 and general["tokens"] > 300


def test_votes_give_a_human_win_rate_and_judge_agreement(studio_home, tiny_model, judge_server):
    run = make_run(studio_home, tiny_model)
    config = evaldir.EvalConfig(limit=3, max_new_tokens=12, judge=judge_server.url, judge_model="x")
    eval_id = evaldir.create(run, config)
    folder = evaldir.folder(run, eval_id)
    pipeline.run(run, eval_id, key="sk-test-123")
    items, verdicts = evaldir.read_items(folder), evaldir.verdicts(folder)
    adapter = str((run / "adapter").resolve())
    swap = {"A": "B", "B": "A", "tie": "tie"}
    # vote 1 agrees with the judge on prompt 0; vote 2 disagrees on prompt 1; vote 3 is on another
    # pair of models and must be ignored
    casts = [(0, verdicts[0]["outcome"]), (1, swap[verdicts[1]["outcome"]])]
    for i, outcome in casts:
        messages = [{"role": "user", "content": items[i]["prompt"]}]
        # the chat's column A held the adapter and column B the base: the reverse of the evaluation
        verdict = {"A": "B", "B": "A", "tie": "tie"}[outcome]
        prefs.record_vote(messages, "x", "y", verdict, adapter_a=adapter, shown_first="B")
    prefs.record_vote([{"role": "user", "content": "hi"}], "x", "y", "A", adapter_a="/elsewhere")

    summary = report.summarize(folder, run)
    outcomes = [o for _, o in casts]
    human = summary["human"]
    assert (human["wins"], human["ties"], human["losses"], human["n"]) == (
        outcomes.count("B"),
        outcomes.count("tie"),
        outcomes.count("A"),
        2,
    )
    assert summary["agreement"]["n"] == 2 and summary["agreement"]["percent"] == pytest.approx(50.0)
    assert any("your blind votes" in line for line in report.summary_lines(summary))


def _wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_eval_survives_kill_9_and_resumes(studio_home, tiny_model):
    run = make_run(studio_home, tiny_model)
    config = evaldir.EvalConfig(
        eval_set=str(ROOT / "sample_data" / "alpaca.jsonl"), limit=12, max_new_tokens=32, batch_size=1
    )
    eval_id = job.start(run, config)
    folder = evaldir.folder(run, eval_id)
    _wait(lambda: len(evaldir.answers(folder)) >= 2, 120, "the first answers")
    os.killpg(evaldir.read_status(folder)["pid"], signal.SIGKILL)
    _wait(lambda: job.state(run, eval_id) == "interrupted", 30, "the job to show as interrupted")
    done = len(evaldir.answers(folder))
    assert 2 <= done < 12, "the job finished before it could be killed: make it longer"
    partial = report.summarize(folder, run)
    assert partial["partial"] and partial["n_answered"] == done
    with open(folder / "answers.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"i": 99, "a": "torn')  # what a kill in the middle of a write leaves

    job.resume(run, eval_id)
    _wait(lambda: job.state(run, eval_id) in ("completed", "failed"), 240, "the resumed job")
    status = evaldir.read_status(folder)
    assert status["state"] == "completed", status.get("error") or (folder / "eval.log").read_text()[-2000:]
    lines = (folder / "answers.jsonl").read_text(encoding="utf-8").splitlines()
    good = [json.loads(line) for line in lines if line.endswith("}") and '"torn' not in line]
    assert sorted(row["i"] for row in good) == list(range(12))  # each prompt once, none lost
    summary = evaldir.read_summary(folder)
    assert not summary["partial"] and summary["n_answered"] == 12


def test_stop_ends_the_job_with_a_partial_summary(studio_home, tiny_model):
    run = make_run(studio_home, tiny_model)
    config = evaldir.EvalConfig(
        eval_set=str(ROOT / "sample_data" / "alpaca.jsonl"), limit=20, max_new_tokens=32, batch_size=1
    )
    eval_id = job.start(run, config)
    folder = evaldir.folder(run, eval_id)
    _wait(lambda: len(evaldir.answers(folder)) >= 1, 120, "the first answer")
    job.stop(run, eval_id)
    _wait(lambda: job.state(run, eval_id) in ("stopped", "completed"), 60, "the job to stop")
    assert job.state(run, eval_id) == "stopped"
    summary = evaldir.read_summary(folder)
    assert summary["partial"] and 1 <= summary["n_answered"] < 20


def test_bad_input_is_named_with_its_fix(
    studio_home, tiny_model, judge_server, tmp_path, capsys, monkeypatch
):
    from studio import cli

    def run_eval(*args: str) -> tuple[int, str]:
        code = cli.main(["eval", *args])
        return code, capsys.readouterr().err

    run = make_run(studio_home, tiny_model, eval_split=0.0)
    code, err = run_eval(str(run), "--max-new-tokens", "4")
    assert code == 1 and "data.eval_split is 0" in err and "Traceback" not in err

    judging = tmp_path / "judge.txt"
    judging.write_text("Which is better? Say [[1]] or [[2]].")
    code, err = run_eval(str(run), "--prompt", "Hi", "--judge", "default", "--judge-prompt", str(judging))
    assert code == 1 and "lacks {question}, {answer_1}, {answer_2}" in err

    monkeypatch.setenv("OPENAI_API_KEY", "wrong")
    code, err = run_eval(str(run), "--prompt", "Hi", "--max-new-tokens", "4", "--judge", judge_server.url)
    assert code == 1 and "answered 401" in err and "check the API key" in err

    code, err = run_eval("no-such-run")
    assert code == 1 and "run 'no-such-run' not found" in err


def test_model_card_carries_the_eval_summary(studio_home, tiny_model, judge_server):
    from studio.publish import card, export

    run = make_run(studio_home, tiny_model)
    assert "## Evaluation" not in card.model_card(export.load_run(run), "me/x", False, False)
    config = evaldir.EvalConfig(eval_set="prompts", prompts=["Hi", "Name a colour."], max_new_tokens=6)
    config.judge, config.judge_model = judge_server.url, "stand-in"
    pipeline.run(run, evaldir.create(run, config), key="sk-test-123")
    text = card.model_card(export.load_run(run), "me/x", False, False)
    section = text.split("## Evaluation", 1)[1]
    assert "eval set: prompts, 2 of 2 prompts" in section
    assert "judge (stand-in (OpenAI-compatible endpoint), both orders): B's win rate" in section
    assert "n=2" in section and "[" in section
    assert "127.0.0.1" not in text and str(studio_home) not in text


def test_runs_are_compared_by_their_newest_evaluation(studio_home, tiny_model, judge_server):
    from studio.ui.evaluate_tab import compare_table

    first, second = (
        make_run(studio_home, tiny_model, run_id="one"),
        make_run(studio_home, tiny_model, run_id="two"),
    )
    config = evaldir.EvalConfig(eval_set="prompts", prompts=["Hi"], max_new_tokens=4)
    config.judge, config.judge_model = judge_server.url, "stand-in"
    pipeline.run(first, evaldir.create(first, config), key="sk-test-123")
    table = compare_table(["one", "two"])  # "two" has no evaluation yet: no row, no error
    assert list(table["run"]) == ["one"]
    row = table.iloc[0]
    summary = evaldir.latest_summary(first)
    assert row["win rate [95%]"] == f"{summary['judge']['win_rate']:.2f} [{summary['judge']['low']:.2f}, " + (
        f"{summary['judge']['high']:.2f}]"
    )
    assert row["n"] == 1 and " / " in row["general ppl A/B"]
    assert second.is_dir()


def test_a_studio_model_judges_both_orders(studio_home, tiny_model):
    run = make_run(studio_home, tiny_model)
    config = evaldir.EvalConfig(eval_set="prompts", prompts=["Hi", "Name a colour."], max_new_tokens=6)
    config.judge = str(tiny_model)
    eval_id = evaldir.create(run, config)
    summary = pipeline.run(run, eval_id)
    assert summary["state"] == "completed", evaldir.read_status(evaldir.folder(run, eval_id))
    verdicts = evaldir.verdicts(evaldir.folder(run, eval_id))
    assert sorted(verdicts) == [0, 1]
    for row in verdicts.values():
        assert row["first"]["raw"] and row["second"]["raw"]  # the model was asked twice
        assert row["outcome"] == pipeline.stats.both_orders(row["first"]["model"], row["second"]["model"])
    assert summary["judge"]["n"] == 2 and summary["judge_name"] == tiny_model.name


def test_the_studios_own_server_is_a_judge(studio_home, tiny_model, tmp_path):
    """`python -m studio serve` as the OpenAI-compatible judge: every prompt is judged in both
    orders over real HTTP (the tiny model's verdicts are noise, so they are counted, not scored)."""
    import socket
    import urllib.request

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "studio", "serve", "--model", str(tiny_model), "--port", str(port)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "serve.log", "wb"),  # noqa: SIM115 - the child owns it
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/models", timeout=2)
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, (
                    tmp_path / "serve.log"
                ).read_text()
                time.sleep(0.5)
        run = make_run(studio_home, tiny_model)
        args = [str(run), "--limit", "3", "--max-new-tokens", "8", "--batch-size", "3"]
        proc = eval_cli(*args, "--judge", url, "--judge-model", "base")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    finally:
        server.terminate()
        server.wait(timeout=60)
    (eval_id,) = evaldir.list_ids(run)
    verdicts = evaldir.verdicts(evaldir.folder(run, eval_id))
    assert sorted(verdicts) == [0, 1, 2]
    assert all(
        isinstance(row[order]["raw"], str) for row in verdicts.values() for order in ("first", "second")
    )
    summary = evaldir.read_summary(evaldir.folder(run, eval_id))
    judged = summary["judge"]
    assert judged["wins"] + judged["ties"] + judged["losses"] == 3
