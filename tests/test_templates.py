"""The one render + loss-mask function: exactly the answers and their end-of-turn are trained."""

from __future__ import annotations

import pytest

from studio.data import stats, templates

SYSTEM = {"role": "system", "content": "You answer in the house style."}
Q1 = {"role": "user", "content": "What is the capital of France?"}
A1 = {"role": "assistant", "content": "Short answer: Paris.\nWhy: It is the seat of government."}
Q2 = {"role": "user", "content": "And of Spain?"}
A2 = {"role": "assistant", "content": "Short answer: Madrid."}
RECORD = {"messages": [SYSTEM, Q1, A1, Q2, A2]}

GENERATION_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<|im_end|>{% endgeneration %}\n"
    "{% else %}{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


@pytest.fixture(scope="module")
def tok(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.fixture(scope="module")
def llama3_tok(tiny_model):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    specials = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
    tokenizer.add_special_tokens({"additional_special_tokens": specials})
    return tokenizer


def trained_text(tokenizer, result: templates.Tokenized) -> list[str]:
    """Decoded runs of consecutive trained tokens."""
    runs, current = [], []
    for token, label in zip(result.input_ids, result.labels, strict=True):
        if label != templates.IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            runs.append(tokenizer.decode(current))
            current = []
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def check_preview_matches(tokenizer, result: templates.Tokenized) -> None:
    """What you preview is what you train: segments join into the decoded ids, flags match labels."""
    assert "".join(text for text, _ in result.segments) == tokenizer.decode(result.input_ids)
    shown = "".join(text for text, trained in result.segments if trained)
    assert shown == "".join(trained_text(tokenizer, result))


def test_chatml_mask_trains_answers_and_im_end_only(tok):
    result = templates.tokenize_sft(RECORD, tok)
    assert trained_text(tok, result) == [A1["content"] + "<|im_end|>", A2["content"] + "<|im_end|>"]
    assert result.input_ids == tok.apply_chat_template(RECORD["messages"], tokenize=True)["input_ids"]
    assert not result.truncated
    check_preview_matches(tok, result)
    untrained = "".join(text for text, trained in result.segments if not trained)
    assert untrained.startswith(f"<|im_start|>system\n{SYSTEM['content']}<|im_end|>\n<|im_start|>user\n")
    assert untrained.endswith("<|im_start|>assistant\n\n")  # header of answer 2, newline after the last turn


def test_generation_markers_give_the_same_mask(tok):
    plain = templates.tokenize_sft(RECORD, tok)
    tok_g = type(tok).from_pretrained(tok.name_or_path)
    tok_g.chat_template = GENERATION_TEMPLATE
    marked = templates.tokenize_sft(RECORD, tok_g)
    assert trained_text(tok_g, marked) == trained_text(tok, plain)


def test_llama3_mask_trains_answers_and_eot_only(llama3_tok):
    result = templates.tokenize_sft(RECORD, llama3_tok, template="llama3")
    assert trained_text(llama3_tok, result) == [A1["content"] + "<|eot_id|>", A2["content"] + "<|eot_id|>"]
    check_preview_matches(llama3_tok, result)
    assert "<|start_header_id|>assistant<|end_header_id|>\n\n" in result.segments[0][0]


def test_alpaca_template_trains_answers_and_eos(tok):
    result = templates.tokenize_sft({"messages": [Q1, A1]}, tok, template="alpaca")
    assert trained_text(tok, result) == [A1["content"] + tok.eos_token]
    assert result.segments[0] == (f"### Instruction:\n{Q1['content']}\n\n### Response:\n", False)


def test_train_on_all_trains_every_token(tok):
    result = templates.tokenize_sft(RECORD, tok, train_on="all")
    assert result.labels == result.input_ids
    with pytest.raises(ValueError, match="train_on"):
        templates.tokenize_sft(RECORD, tok, train_on="answers")


def test_truncation_keeps_the_start(tok):
    full = templates.tokenize_sft(RECORD, tok)
    cut = templates.tokenize_sft(RECORD, tok, max_length=12)
    assert cut.truncated and cut.input_ids == full.input_ids[:12] and cut.labels == full.labels[:12]
    check_preview_matches(tok, cut)


def test_batch_equals_one_by_one(tok):
    records = [RECORD, {"messages": [Q1, A1]}, {"messages": [Q2, A2]}]
    batch = templates.tokenize_sft_batch(records, tok, max_length=40)
    assert batch == [templates.tokenize_sft(r, tok, max_length=40) for r in records]


def test_model_without_template_needs_one_chosen(tiny_model_no_template):
    from transformers import AutoTokenizer

    bare = AutoTokenizer.from_pretrained(tiny_model_no_template)
    with pytest.raises(
        ValueError, match="has no chat template: choose one for it .chatml, llama3 or alpaca."
    ):
        templates.ensure_chat_template(bare, None)
    with pytest.raises(ValueError, match="has no chat template"):
        templates.tokenize_sft(RECORD, bare)
    templates.ensure_chat_template(bare, "chatml")
    assert trained_text(bare, templates.tokenize_sft(RECORD, bare))[0] == A1["content"] + "<|im_end|>"
    with pytest.raises(ValueError, match="has no chat template"):
        templates.ensure_chat_template(bare, None)  # back to the model's own: none
    with pytest.raises(ValueError, match="unknown chat template 'vicuna'"):
        templates.ensure_chat_template(bare, "vicuna")


def test_choosing_the_models_own_template_again_restores_it(tok):
    own = tok.chat_template
    templates.ensure_chat_template(tok, "alpaca")
    assert "### Response" in tok.chat_template
    templates.ensure_chat_template(tok, None)
    assert tok.chat_template == own


def test_render_preference_splits_prompt_and_answers(tok):
    pair = {"prompt": [Q1], "chosen": [A1], "rejected": [{"role": "assistant", "content": "Paris."}]}
    rendered = templates.render_preference(pair, tok)
    assert rendered == {
        "prompt": f"<|im_start|>user\n{Q1['content']}<|im_end|>\n<|im_start|>assistant\n",
        "chosen": f"{A1['content']}<|im_end|>\n",
        "rejected": "Paris.<|im_end|>\n",
    }
    kto = templates.render_preference({"prompt": [Q1], "completion": [A1], "label": True}, tok)
    assert set(kto) == {"prompt", "completion"} and kto["completion"] == rendered["chosen"]


def test_token_stats_for_sft(tok):
    records = [RECORD, {"messages": [Q1, A1]}]
    lengths = [len(templates.tokenize_sft(r, tok).input_ids) for r in records]
    result = stats.token_stats(records, tok, max_length=max(lengths))
    assert result.total_lengths == lengths and result.histogram == lengths
    assert (result.truncated, result.dropped, result.tokens_per_epoch) == (0, 0, sum(lengths))
    first = templates.tokenize_sft(records[1], tok)
    assert result.prompt_lengths[1] == next(i for i, label in enumerate(first.labels) if label != -100)
    assert result.trained_tokens == sum(
        sum(label != -100 for label in templates.tokenize_sft(r, tok).labels) for r in records
    )
    short = stats.token_stats(records, tok, max_length=result.prompt_lengths[1] + 2)
    assert (short.truncated, short.dropped) == (1, 1) and short.over_max == 2
    assert "2 examples" in short.summary()


def test_token_stats_for_pairs(tok):
    pair = {"prompt": [Q1], "chosen": [A1], "rejected": [{"role": "assistant", "content": "Paris."}]}
    result = stats.token_stats([pair], tok, max_length=1000, kind="preference")
    rendered = templates.render_preference(pair, tok)
    n = {k: len(tok(v, add_special_tokens=False)["input_ids"]) for k, v in rendered.items()}
    assert result.prompt_lengths == [n["prompt"]]
    assert result.total_lengths == [n["prompt"] + max(n["chosen"], n["rejected"])]
    assert result.trained_tokens == n["chosen"] + n["rejected"]


@pytest.mark.slow
def test_smollm2_template_without_generation_markers(default_model):
    from transformers import AutoTokenizer

    smol = AutoTokenizer.from_pretrained(default_model)
    assert "{% generation %}" not in smol.chat_template
    record = {"messages": [Q1, A1, Q2, A2]}
    result = templates.tokenize_sft(record, smol)
    assert trained_text(smol, result) == [A1["content"] + "<|im_end|>", A2["content"] + "<|im_end|>"]
    check_preview_matches(smol, result)
    untrained = result.segments[0][0]
    assert "You are a helpful AI assistant named SmolLM" in untrained  # injected system prompt: not trained
    assert untrained.endswith(f"<|im_start|>user\n{Q1['content']}<|im_end|>\n<|im_start|>assistant\n")
    assert result.input_ids == smol.apply_chat_template(record["messages"], tokenize=True)["input_ids"]
    with_system = templates.tokenize_sft(RECORD, smol)
    assert trained_text(smol, with_system) == trained_text(smol, result)
