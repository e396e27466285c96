"""A record as the Data tab shows it: chat turns whose trained flags come from the trainer's own
mask, the system prompt a chat template injects, the legend's kinds, and the length histogram."""

from __future__ import annotations

import re

import pytest

from studio.data import preview, stats, templates
from studio.ui import data_view

Q = {"role": "user", "content": "Name a primary colour."}
A = {"role": "assistant", "content": "Short answer: Red.\nWhy: it cannot be mixed."}
PAIR = {
    "prompt": [Q],
    "chosen": [{"role": "assistant", "content": "Short answer: Red."}],
    "rejected": [{"role": "assistant", "content": "Red I guess"}],
}


@pytest.fixture(scope="module")
def smol(default_model_home):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(default_model_home / "models" / "SmolLM2-135M-Instruct")


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


def test_the_default_models_injected_system_prompt_is_found_and_shown(smol):
    injected = preview.injected_system_prompt(smol)
    assert injected == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert preview.injected_system_prompt(smol, "chatml") is None  # the studio's chatml adds none
    view = preview.record_view({"messages": [Q, A]}, "sft", smol, None, 1024)
    assert view.injected_system == injected
    assert [(t.role, t.kind) for t in view.turns] == [
        ("system", None),
        ("user", None),
        ("assistant", "trained"),
    ]
    assert "chat template" in view.turns[0].note
    # the chat is the trainer's text: the pieces are tokenize_sft's segments, flags and all
    tok = templates.tokenize_sft({"messages": [Q, A]}, smol, max_length=1024)
    assert view.pieces == [(text, "trained" if t else None) for text, t in tok.segments]
    assert view.kinds == ["trained"]
    own_system = preview.record_view(
        {"messages": [{"role": "system", "content": "Be brief."}, Q, A]}, "sft", smol, None, 1024
    )
    assert own_system.injected_system is None and own_system.turns[0].note == ""
    assert "injected" not in data_view.chat_html(own_system) and data_view.system_note(own_system) == ""
    assert "Hugging Face" in data_view.system_note(view)


def test_an_answer_past_the_max_length_is_not_marked_trained(tok):
    long_question = {"role": "user", "content": "word " * 60}
    view = preview.record_view({"messages": [long_question, A]}, "sft", tok, None, 20)
    assert view.truncated and view.turns[-1].kind is None and "not trained" in view.turns[-1].note
    assert view.kinds == []
    assert data_view.legend_html(view.kinds).count('class="entry"') == 1  # only "not trained"


def test_pairs_show_chosen_and_rejected_in_their_own_colours(tok):
    view = preview.record_view(PAIR, "preference", tok, None, 1024)
    assert [t.kind for t in view.turns] == [None, "chosen", "rejected"]
    assert view.kinds == ["chosen", "rejected"]
    legend = data_view.legend_html(view.kinds)
    assert "chosen answer" in legend and "rejected answer" in legend and "trained (carries" not in legend
    assert len({data_view.COLORS[k] for k in preview.KINDS}) == len(preview.KINDS)
    kto = preview.record_view(
        {"prompt": [Q], "completion": PAIR["chosen"], "label": False}, "kto", tok, None, 1024
    )
    assert kto.kinds == ["completion"] and "undesirable" in kto.turns[-1].note


def _x_ticks(svg: str) -> list[float]:
    ticks = svg.split('<g id="xtick_')[1:]
    return [float(re.search(r">([^<]+)</text>", t).group(1).replace("−", "-")) for t in ticks]


def test_histogram_axis_fits_the_data_and_marks_a_cut_off_inside_it(tok):
    records = [{"messages": [{"role": "user", "content": "w " * n}, A]} for n in (5, 10, 20, 40)]
    far = stats.token_stats(records, tok, 1024)
    svg = data_view.length_histogram_svg(far, 1024)
    longest = max(far.total_lengths)
    assert max(_x_ticks(svg)) <= longest * 1.1 and "past the longest" in svg and "cut-off 1024" not in svg
    cut = longest // 2
    near = stats.token_stats(records, tok, cut)
    svg = data_view.length_histogram_svg(near, cut)
    assert f"cut-off {cut}" in svg and max(_x_ticks(svg)) <= longest * 1.1
