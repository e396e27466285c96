"""Scores of an answer against a reference answer, and the reference log-likelihood of a model.

- exact match and token F1: SQuAD's normalisation (lower case, no punctuation, no articles "a",
  "an", "the", single spaces), then equality / the F1 of the bag of words;
- ROUGE-L: the `rouge-score` library (Google's reference implementation), F-measure, with its
  Porter stemmer;
- reference likelihood: each record is tokenized by `studio.data.templates.tokenize_sft`, the very
  function that builds the trainer's input_ids and labels, and scored teacher-forced: the negative
  log-likelihood of exactly the tokens training learns from (the answers and their end-of-turn
  marker), summed. Perplexity = exp(total NLL / total tokens), which is exp of the trainer's own
  mean loss over the same rows;
- general text likelihood: plain text, every token counted (the forgetting check).

Knows nothing about the chat engine, the eval folder or the UI.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from dataclasses import dataclass

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's normalisation).

    >>> normalize("The  Capital, of France!")
    'capital of france'
    """
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def exact_match(answer: str, reference: str) -> float:
    return float(normalize(answer) == normalize(reference))


def token_f1(answer: str, reference: str) -> float:
    """F1 of the normalised words (SQuAD); 1.0 when both are empty.

    >>> round(token_f1("Paris is the capital", "the capital is Paris, France"), 4)
    0.8571
    """
    got, want = normalize(answer).split(), normalize(reference).split()
    if not got or not want:
        return float(got == want)
    common = sum((Counter(got) & Counter(want)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)


_ROUGE = None


def rouge_l(answer: str, reference: str) -> float:
    """ROUGE-L F-measure (longest common subsequence of words, stemmed)."""
    global _ROUGE
    if _ROUGE is None:
        from rouge_score import rouge_scorer

        _ROUGE = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    return float(_ROUGE.score(reference, answer)["rougeL"].fmeasure)


def reference_scores(answer: str, reference: str) -> dict[str, float]:
    return {
        "exact": exact_match(answer, reference),
        "f1": token_f1(answer, reference),
        "rouge_l": rouge_l(answer, reference),
    }


# ---------------------------------------------------------------- likelihood


@dataclass(frozen=True)
class Likelihood:
    """Summed negative log-likelihood (nats) of `tokens` scored tokens."""

    nll: float
    tokens: int


def perplexity(parts: list[Likelihood]) -> float | None:
    """exp(total NLL / total tokens) over many rows; None when nothing was scored."""
    tokens = sum(p.tokens for p in parts)
    return math.exp(sum(p.nll for p in parts) / tokens) if tokens else None


def mean_log_likelihood(parts: list[Likelihood]) -> float | None:
    """Mean log-likelihood per scored token (higher is better; -log of the perplexity)."""
    tokens = sum(p.tokens for p in parts)
    return -sum(p.nll for p in parts) / tokens if tokens else None


def masked_rows(records: list[dict], tokenizer, data) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of SFT records, masked as training masks them (`data`: the recipe's
    data section: chat_template, max_length, train_on)."""
    from studio.data import templates

    tokenized = templates.tokenize_sft_batch(
        records, tokenizer, max_length=data.max_length, template=data.chat_template, train_on=data.train_on
    )
    return [(t.input_ids, t.labels) for t in tokenized]


def text_rows(texts: list[str], tokenizer, max_length: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) of plain texts with every token scored (the forgetting check)."""
    rows = []
    for text in texts:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"][:max_length]
        rows.append((ids, list(ids)))
    return rows


def score_rows(model, rows: list[tuple[list[int], list[int]]]) -> list[Likelihood]:
    """Teacher-forced NLL of each row's labelled tokens (labels -100 are skipped), one row a pass.

    The label at position t is predicted from the tokens before it: the same shift the trainer's
    causal-LM loss applies.
    """
    import torch

    device = next(model.parameters()).device
    out = []
    with torch.inference_mode():
        for ids, labels in rows:
            if len(ids) < 2:
                out.append(Likelihood(0.0, 0))
                continue
            logits = model(input_ids=torch.tensor([ids], device=device)).logits[0, :-1].float()
            targets = torch.tensor(labels[1:], device=device)
            keep = targets != -100
            if not bool(keep.any()):
                out.append(Likelihood(0.0, 0))
                continue
            nll = torch.nn.functional.cross_entropy(logits[keep], targets[keep], reduction="sum")
            out.append(Likelihood(float(nll), int(keep.sum())))
    return out
