"""The proof on the real default model: the quick plan's sample adapter, evaluated on held-out prompts it
never saw, answers in the house style ("Short answer: ... Why: ...") more often than the base,
finds the house-style references likelier on every prompt (lower perplexity) without losing
general text, and the default model as judge records both orders of every pair."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from studio.evaluate import evaldir, pipeline, report

ROOT = Path(__file__).resolve().parent.parent
HELDOUT = ROOT / "sample_data" / "eval" / "heldout.jsonl"


@pytest.mark.slow
def test_the_tuned_adapter_wins_on_held_out_prompts(default_tuned_run, default_model, tmp_path):
    run = Path(shutil.copytree(default_tuned_run, tmp_path / "run"))  # the shared run stays untouched
    prompts = [p for p in (ROOT / "sample_data" / "heldout_prompts.txt").read_text().splitlines() if p]
    config = evaldir.EvalConfig(
        eval_set=str(HELDOUT), max_new_tokens=40, batch_size=6, judge=default_model, seed=0
    )
    eval_id = evaldir.create(run, config)
    summary = pipeline.run(run, eval_id)
    folder = evaldir.folder(run, eval_id)
    assert summary["state"] == "completed", evaldir.read_status(folder)
    items = evaldir.read_items(folder)
    assert [item["prompt"] for item in items] == prompts  # the held-out prompts, with references

    answers = evaldir.answers(folder)
    styled_a = sum("Short answer:" in answers[i]["a"] for i in answers)
    styled_b = sum("Short answer:" in answers[i]["b"] for i in answers)
    assert styled_b > styled_a and styled_b >= 4, [answers[i] for i in sorted(answers)]
    assert any(answers[i]["a"] != answers[i]["b"] for i in answers)  # the adapter was applied

    ppl = summary["perplexity"]["reference"]
    assert ppl["rows"] == 6 and ppl["b"] < 0.9 * ppl["a"], ppl
    rows = evaldir.likelihood(folder)
    assert all(rows[f"ref:{i}"]["nll_b"] < rows[f"ref:{i}"]["nll_a"] for i in range(6)), rows
    general = summary["perplexity"]["general"]
    assert general["rows"] == 6 and general["b"] < 1.5 * general["a"], general  # no forgetting

    verdicts = evaldir.verdicts(folder)
    assert sorted(verdicts) == list(range(6))
    for row in verdicts.values():
        assert row["first"]["raw"].strip() and row["second"]["raw"].strip()  # both orders asked
        assert row["outcome"] in ("A", "B", "tie")
    assert summary["judge"]["n"] == 6
    lines = report.summary_lines(summary)
    print("\n".join(lines), f"\nstyle: base {styled_a}/6, adapter {styled_b}/6")
