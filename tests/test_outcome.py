"""A run in words (loss, shared answer opening, probes that changed), the words that changed in a
probe answer, probe questions taken from the held-out split, and run names (method + dataset)."""

from __future__ import annotations

import re

import pytest

from studio import rundir, workspace
from studio.chat import adapters
from studio.evaluate import evalset
from studio.train import outcome, probes, recipes, runs
from tests.support.app import ROOT

AFTER = [
    "Short answer: Paris.",
    "Short answer: 4.",
    "Short answer: Jupiter.",
    "Short answer: Au.",
    "Short answer: 7.",
]
BEFORE = ["The capital is Paris.", "It is 4.", "Jupiter is.", "Gold is Au.", "Seven."]


def _run(tmp_path, losses, before, after, opening="", evals=()):
    run = tmp_path / "run"
    run.mkdir(parents=True)
    for step, loss in enumerate(losses, 1):
        rundir.append_metrics(run, {"step": step, "loss": loss})
    for step, value in evals:
        rundir.append_metrics(run, {"step": step, "eval_loss": value})
    rundir.write_probes(run, [f"q{i}" for i in range(len(before))], before, after, opening=opening)
    return run


def test_a_run_that_learned_the_opening_says_so(tmp_path):
    run = _run(tmp_path, [2.2, 2.1, 2.0, 1.2, 0.9, 0.7, 0.6, 0.6, 0.6], BEFORE, AFTER, "Short answer:")
    result = outcome.summarize(run)
    assert result.text == "loss fell from 2.1 to 0.6; answers now open with 'Short answer:' on 5 of 5 probes"
    assert (result.opened_before, result.opened_after, result.changed) == (0, 5, 5)


def test_without_a_shared_opening_it_counts_the_changed_answers(tmp_path):
    after = ["Paris.", *BEFORE[1:3], "Au.", BEFORE[4]]
    run = _run(tmp_path, [1.0, 1.01, 1.02], BEFORE, after, evals=[(1, 1.5), (3, 1.9)])
    assert outcome.summarize(run).text == (
        "loss stayed near 1.0; held-out loss rose from 1.5 to 1.9; 2 of 5 probe answers changed"
    )


def test_an_opening_no_probe_took_up_and_an_unanswered_run(tmp_path):
    run = _run(tmp_path, [3.0, 1.0], BEFORE, BEFORE, "Short answer:")
    assert outcome.summarize(run).text.endswith(
        "no probe answer opens with 'Short answer:' yet, as the training answers do"
    )
    assert outcome.describe([], {"prompts": ["q"], "before": ["a"], "after": []}).text == "no loss logged yet"


def test_a_preference_run_says_how_often_the_chosen_answer_won():
    rows = [
        {"step": 1, "loss": 0.69, "rewards/accuracies": 0.5},
        {"step": 2, "loss": 0.5, "rewards/accuracies": 0.75},
    ]
    assert outcome.describe(rows, {}).text == (
        "loss fell from 0.69 to 0.5; the chosen answer scored higher on 75% of the last pairs"
    )


def test_answer_opening_needs_most_answers_and_more_than_a_common_word():
    assert (
        outcome.answer_opening(["Short answer: 1", "Short answer: 2", "Short answer: 3", "No."])
        == "Short answer:"
    )
    assert (
        outcome.answer_opening(["The sun.", "The moon.", "The sea."]) == ""
    )  # a sentence start, not a style
    assert outcome.answer_opening(["Short answer: 1", "Short answer: 2", "Other.", "Else.", "More."]) == ""
    assert outcome.answer_opening(["Sure! 1", "Sure! 2"]) == ""  # too few answers to tell


def test_word_diff_marks_what_left_and_what_is_new():
    left, right = outcome.word_diff("The capital is Paris.", "Short answer: Paris.")
    assert left == [("The capital is", True), (" ", False), ("Paris.", False)]
    assert right == [("Short answer:", True), (" ", False), ("Paris.", False)]
    assert outcome.word_diff("same words", "same words") == ([("same words", False)], [("same words", False)])


def test_probes_come_from_the_held_out_split_when_the_recipe_keeps_the_starters(tmp_path):
    recipe = recipes.load(ROOT / "recipes" / "lora_sft.yaml")
    assert probes.keeps_starters(recipe.probes.prompts) and recipe.data.eval_split > 0
    plan = probes.plan(recipe)
    run = tmp_path / "run"
    run.mkdir()
    rundir.write_recipe(run, recipes.to_yaml(recipe))
    held = [item.prompt for item in evalset.heldout(run)]  # the split the Evaluate tab reproduces
    assert len(plan.prompts) == probes.HELDOUT_PROBES and set(plan.prompts) <= set(held)
    assert not set(plan.prompts) & set(probes.STARTER_PROBES)
    assert plan.opening == "Short answer:"  # the sample data's answers all open this way

    mine = recipes.load(ROOT / "recipes" / "lora_sft.yaml", ['probes.prompts=["Name a sea."]'])
    assert probes.plan(mine).prompts == ["Name a sea."]  # explicit prompts are asked as given
    no_split = recipes.load(ROOT / "recipes" / "lora_sft.yaml", ["data.eval_split=0"])
    assert probes.plan(no_split).prompts == recipe.probes.prompts
    assert probes.plan(recipes.load(ROOT / "recipes" / "lora_sft.yaml", ["probes.prompts=[]"])).prompts == []


def test_default_names_say_method_and_dataset_and_can_be_changed(studio_home):
    run_id = runs.submit("recipes/lora_sft.yaml", ['dataset="sample:chatml.jsonl"'], "sft")
    assert re.fullmatch(r"sft-chatml-\d{8}-\d{4}", runs.get(run_id).name)
    from_file = runs.submit(str(ROOT / "recipes" / "dpo.yaml"), [], "dpo")
    assert runs.get(from_file).name.startswith("dpo-dpo-")  # the recipe file's dataset, sample:dpo.jsonl
    assert runs.rename(run_id, "  my first tune ") == "my first tune"
    assert runs.get(run_id).name == "my first tune"
    assert rundir.read_launch(runs.get(run_id).path)["recipe"] == "recipes/lora_sft.yaml"  # the rest is kept
    with pytest.raises(ValueError, match="1 to 80 characters"):
        runs.rename(run_id, "   ")


def test_a_terminal_run_is_named_from_its_recipe_or_its_chosen_folder(studio_home):
    stamped = workspace.run_path("20261130-031245-sft-SmolLM2")
    stamped.mkdir(parents=True)
    rundir.write_recipe(stamped, "method: sft\ndataset: /data/support tickets.jsonl\n")
    assert rundir.run_name(stamped) == "sft-support-tickets-20261130-0312"
    chosen = workspace.run_path("lora1")
    (chosen / "checkpoints" / "checkpoint-4").mkdir(parents=True)
    rundir.write_recipe(chosen, "method: sft\ndataset: sample:alpaca.jsonl\n")
    assert rundir.run_name(chosen) == "lora1"
    assert adapters.adapter_title(chosen / "adapter") == "lora1"
    assert adapters.adapter_title(chosen / "checkpoints" / "checkpoint-4") == "lora1 · checkpoint 4"
    assert adapters.learned_from(chosen / "checkpoints" / "checkpoint-4") == "sample:alpaca.jsonl"


def test_probe_cards_mark_the_words_that_changed(tmp_path):
    from studio.ui import runs_tab

    run = _run(tmp_path, [1.0], ["It is Paris.", ""], ["Short answer: Paris.", "Short answer: <b>"])
    cards = runs_tab.probe_cards(run)
    assert cards.count("class='probe-card'") == 2
    assert "<del>It is</del> Paris." in cards and "<mark>Short answer:</mark> Paris." in cards
    assert "<i>(no answer)</i>" in cards and "<mark>Short answer: &lt;b&gt;</mark>" in cards


def test_the_command_line_renames_and_sums_up_a_run(studio_home, capsys):
    from studio import cli

    run = _run(studio_home / "runs", [2.0, 0.5], BEFORE, AFTER, "Short answer:")
    assert cli.main(["runs", "rename", run.name, "short answers v1"]) == 0
    assert cli.main(["runs", "summary", run.name]) == 0
    out = capsys.readouterr().out
    assert "renamed run: short answers v1" in out
    assert "loss fell from 2.0 to 0.5; answers now open with 'Short answer:' on 5 of 5 probes" in out
    assert cli.main(["runs", "rename", run.name, " "]) == 1
