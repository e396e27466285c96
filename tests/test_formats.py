"""Format detection and normalization into the canonical records, and row-level validation."""

from __future__ import annotations

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from studio.data import chat_text, formats
from studio.data.files import Row

U = {"role": "user", "content": "What is the capital of France?"}
A = {"role": "assistant", "content": "Short answer: Paris.\nWhy: It is the seat of government."}
S = {"role": "system", "content": "You are terse."}


def norm(*datas: dict) -> formats.Normalized:
    return formats.normalize([Row(i, d) for i, d in enumerate(datas, start=1)], "f.jsonl")


def one(data: dict) -> dict:
    result = norm(data)
    assert not result.problems, [str(p) for p in result.problems]
    return result.records[0]


def problem(data: dict) -> formats.Problem:
    result = norm(data)
    assert not result.records and len(result.problems) == 1
    return result.problems[0]


@pytest.mark.parametrize(
    ("data", "fmt", "expected"),
    [
        ({"instruction": U["content"], "output": A["content"]}, "alpaca", {"messages": [U, A]}),
        (
            {"instruction": "Translate", "input": "bonjour", "output": A["content"], "system": S["content"]},
            "alpaca",
            {"messages": [S, {"role": "user", "content": "Translate\n\nbonjour"}, A]},
        ),
        (
            {
                "conversations": [
                    {"from": "system", "value": S["content"]},
                    {"from": "human", "value": U["content"]},
                    {"from": "gpt", "value": A["content"]},
                ]
            },
            "sharegpt",
            {"messages": [S, U, A]},
        ),
        ({"messages": [U, A]}, "messages", {"messages": [U, A]}),
        (
            {"messages": [{"role": "user", "content": [{"type": "text", "text": U["content"]}]}, A]},
            "messages",
            {"messages": [U, A]},
        ),
        ({"prompt": U["content"], "completion": A["content"]}, "prompt_completion", {"messages": [U, A]}),
        (
            {
                "text": f"<|im_start|>system\n{S['content']}<|im_end|>\n<|im_start|>user\n{U['content']}<|im_end|>\n"
                f"<|im_start|>assistant\n{A['content']}<|im_end|>\n"
            },
            "chatml",
            {"messages": [S, U, A]},
        ),
        (
            {
                "text": f"<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n{U['content']}<|eot_id|>"
                f"<|start_header_id|>assistant<|end_header_id|>\n\n{A['content']}<|eot_id|>"
            },
            "llama3",
            {"messages": [U, A]},
        ),
        (
            {"prompt": U["content"], "chosen": A["content"], "rejected": "Paris."},
            "dpo",
            {"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "Paris."}]},
        ),
        (
            {"chosen": [U, A], "rejected": [U, {"role": "assistant", "content": "Paris."}]},
            "dpo",
            {"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "Paris."}]},
        ),
        (
            {
                "chosen": f"\n\nHuman: {U['content']}\n\nAssistant: {A['content']}",
                "rejected": f"\n\nHuman: {U['content']}\n\nAssistant: Paris.",
            },
            "dpo",
            {"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "Paris."}]},
        ),
        (
            {"prompt": [U], "chosen": [U, A], "rejected": [{"role": "assistant", "content": "Paris."}]},
            "dpo",
            {"prompt": [U], "chosen": [A], "rejected": [{"role": "assistant", "content": "Paris."}]},
        ),
        (
            {"prompt": U["content"], "completion": A["content"], "label": "true"},
            "kto",
            {"prompt": [U], "completion": [A], "label": True},
        ),
        (
            {"prompt": [U], "completion": [A], "label": 0},
            "kto",
            {"prompt": [U], "completion": [A], "label": False},
        ),
    ],
)
def test_each_format_normalizes_to_the_canonical_record(data, fmt, expected):
    result = norm(data)
    assert result.format == fmt
    assert result.kind == formats.KIND_OF_FORMAT[fmt]
    assert result.records == [expected] and not result.problems


def test_multi_turn_hh_prompt_keeps_the_earlier_turns():
    hh = "\n\nHuman: Hi\n\nAssistant: Short answer: Hello.\n\nHuman: And you?\n\nAssistant:"
    record = one({"chosen": hh + " Fine.", "rejected": hh + " Bad."})
    assert [m["role"] for m in record["prompt"]] == ["user", "assistant", "user"]
    assert record["chosen"] == [{"role": "assistant", "content": "Fine."}]


@pytest.mark.parametrize(
    ("parse", "template"),
    [
        (chat_text.parse_chatml, chat_text.CHATML_TEMPLATE),
        (chat_text.parse_llama3, chat_text.LLAMA3_TEMPLATE),
    ],
)
def test_chatml_and_llama3_text_round_trip(parse, template, tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    messages = [
        S,
        U,
        A,
        {"role": "user", "content": "And Spain?\n  "},
        {"role": "assistant", "content": "Madrid."},
    ]
    text = tok.apply_chat_template(messages, tokenize=False, chat_template=template)
    assert parse(text) == messages
    fmt = "chatml" if parse is chat_text.parse_chatml else "llama3"
    assert norm({"text": text}).format == fmt and one({"text": text}) == {"messages": messages}


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"instruction": "Hi"}, "output", "is missing"),
        ({"instruction": "Hi", "output": "  "}, "output", "is empty"),
        ({"instruction": "Hi", "output": 42}, "output", "is number, not text"),
        ({"messages": [U, U, A]}, "messages[1]", "two user turns in a row"),
        ({"messages": [A, U, A]}, "messages[0]", "assistant speaks first"),
        ({"messages": [U, A, U]}, "messages", "ends with a user turn"),
        ({"messages": [U, S, A]}, "messages[1]", "system message after the start"),
        ({"messages": [U, {"role": "robot", "content": "x"}]}, "messages[1].role", "'robot' is not system"),
        (
            {"conversations": [{"from": "human", "value": ""}, {"from": "gpt", "value": "x"}]},
            "conversations[0].value",
            "is empty",
        ),
        ({"prompt": "Q", "chosen": "Same.", "rejected": "Same."}, "rejected", "identical to chosen"),
        ({"chosen": "just text", "rejected": "other text"}, "prompt", "is missing"),
        ({"prompt": "Q", "completion": "A", "label": "maybe"}, "label", "'maybe' is not true or false"),
        ({"prompt": "Q", "completion": "A", "label": 2}, "label", "not true or false"),
        (
            {"text": "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nunclosed"},
            "text",
            "is not closed",
        ),
        ({"text": "Once upon a time"}, "text", "plain text with no chat turns"),
        ({"question": "Q", "answer": "A"}, None, "no known format"),
        ({"instruction": "Q", "output": math.inf}, "output", "NaN or Infinity"),
    ],
)
def test_row_problems_name_the_field_and_a_fix(data, field, words):
    p = problem(data)
    assert (p.file, p.line, p.field, p.severity) == ("f.jsonl", 1, field, "error")
    assert words in p.message and p.fix


def test_duplicates_warn_and_keep_the_first():
    result = norm({"messages": [U, A]}, {"messages": [U, A]})
    assert result.lines == [1]
    (p,) = result.problems
    assert p.severity == "warning" and p.line == 2 and "duplicate of line 1" in p.message


def test_mixed_kinds_drop_the_minority_and_say_which_lines_are_which():
    rows = [{"instruction": f"Q{i}", "output": "A"} for i in range(3)] + [
        {"prompt": "Q", "chosen": "a", "rejected": "b"}
    ]
    result = norm(*rows)
    assert result.format == "alpaca" and result.lines == [1, 2, 3]
    (p,) = result.problems
    assert p.line == 4 and "is DPO pairs but most of the file is Alpaca (lines 1-3)" in p.message


def test_mixed_formats_of_one_kind_are_kept_with_a_warning():
    result = norm(
        {"instruction": "Q1", "output": "A"}, {"messages": [U, A]}, {"instruction": "Q2", "output": "A"}
    )
    assert result.lines == [1, 2, 3]
    (p,) = result.problems
    assert p.severity == "warning" and "line 2 is OpenAI messages, the rest Alpaca" in p.message


def test_kind_for_method():
    assert [formats.kind_for_method(m) for m in ("sft", "dpo", "simpo", "orpo", "kto")] == [
        "sft",
        "preference",
        "preference",
        "preference",
        "kto",
    ]
    with pytest.raises(ValueError, match="unknown method 'ppo'"):
        formats.kind_for_method("ppo")


def test_preference_data_is_unpaired_for_kto():
    data = norm({"prompt": "Q", "chosen": "good", "rejected": "bad"})
    kto = formats.for_method(data, "kto", "f.jsonl")
    assert kto.kind == "kto" and kto.lines == [1, 1]
    assert [(r["completion"][0]["content"], r["label"]) for r in kto.records] == [
        ("good", True),
        ("bad", False),
    ]


def test_sft_data_cannot_feed_dpo():
    data = norm({"instruction": "Q", "output": "A"})
    result = formats.for_method(data, "dpo", "f.jsonl")
    assert result.records == []
    assert "this file is SFT data (Alpaca); DPO needs chosen/rejected pairs" in result.problems[-1].message


# ---- properties -------------------------------------------------------------------------------

KEYS = [
    "instruction",
    "input",
    "output",
    "messages",
    "conversations",
    "prompt",
    "completion",
    "chosen",
    "rejected",
    "label",
    "text",
    "system",
    "role",
    "content",
    "from",
    "value",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 3)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "user",
            "assistant",
            "gpt",
            "human",
            "system",
            "<|im_start|>user\nhi<|im_end|>",
            "\n\nHuman: a\n\nAssistant: b",
        ]
    )
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=4),
    max_leaves=12,
)
rows = st.lists(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=5), max_size=6)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows)
def test_normalize_never_crashes_and_accounts_for_every_row(datas):
    result = norm(*datas)
    errors = {p.line for p in result.problems if p.severity == "error" and p.line}
    duplicates = {p.line for p in result.problems if "duplicate" in p.message}
    assert sorted([*result.lines, *errors, *duplicates]) == list(range(1, len(datas) + 1))


words = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=20).filter(
    lambda s: s.strip() and "<|" not in s
)


@st.composite
def valid_sft_rows(draw):
    turns = draw(st.integers(1, 3))
    messages = []
    for _ in range(turns):
        messages += [{"role": "user", "content": draw(words)}, {"role": "assistant", "content": draw(words)}]
    style = draw(st.sampled_from(["alpaca", "messages", "sharegpt"]))
    if style == "alpaca":
        return {"instruction": messages[0]["content"], "output": messages[1]["content"]}
    if style == "sharegpt":
        return {
            "conversations": [
                {"from": "human" if m["role"] == "user" else "gpt", "value": m["content"]} for m in messages
            ]
        }
    return {"messages": messages}


@settings(max_examples=100, deadline=None)
@given(st.lists(valid_sft_rows(), min_size=1, max_size=6, unique_by=lambda d: repr(d)))
def test_valid_rows_are_never_dropped(datas):
    result = norm(*datas)
    assert not [p for p in result.problems if p.severity == "error"]
    assert len(result.records) + sum("duplicate" in p.message for p in result.problems) == len(datas)
