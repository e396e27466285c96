"""Token statistics of canonical records, rendered exactly as the trainer will see them.

SFT records go through `templates.tokenize_sft_batch` (the trainer's own function); preference
and KTO records through `templates.render_preference`. Counts what a max length does to the data:
examples cut short (truncated) and examples whose answer would be cut away entirely (dropped:
nothing left to learn). Knows nothing about files, trainers or the UI.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from studio.data import templates

_BATCH = 256


@dataclass
class TokenStats:
    kind: str
    max_length: int
    prompt_lengths: list[int] = field(default_factory=list)  # tokens before the first trained token
    total_lengths: list[int] = field(default_factory=list)  # whole example (longest side for pairs)
    truncated: int = 0  # longer than max_length, cut short but still trains
    dropped: int = 0  # prompt alone reaches max_length: nothing left to train on
    tokens_per_epoch: int = 0  # tokens the model reads in one epoch, after truncation
    trained_tokens: int = 0  # tokens that carry the loss in one epoch, after truncation

    @property
    def count(self) -> int:
        return len(self.total_lengths)

    @property
    def over_max(self) -> int:
        return self.truncated + self.dropped

    @property
    def histogram(self) -> list[int]:
        """Total lengths, ready for a histogram."""
        return self.total_lengths

    def summary(self) -> str:
        if not self.total_lengths:
            return "no examples to measure"
        ordered = sorted(self.total_lengths)
        p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
        return (
            f"{self.count} examples: {ordered[len(ordered) // 2]} tokens median, {p95} at the 95th "
            f"percentile, {ordered[-1]} longest; {self.truncated} truncated and {self.dropped} dropped "
            f"at max_length {self.max_length}; {self.tokens_per_epoch} tokens per epoch, "
            f"{self.trained_tokens} trained"
        )


def token_stats(
    records: list[dict], tokenizer, max_length: int, template: str | None = None, kind: str = "sft"
) -> TokenStats:
    """Lengths and truncation counts of `records` (kind "sft", "preference" or "kto")."""
    stats = TokenStats(kind, max_length)
    for start in range(0, len(records), _BATCH):
        batch = records[start : start + _BATCH]
        if kind == "sft":
            _add_sft(stats, batch, tokenizer, template)
        else:
            _add_preference(stats, batch, tokenizer, template)
    return stats


def _add_sft(stats: TokenStats, batch: list[dict], tokenizer, template: str | None) -> None:
    for tok in templates.tokenize_sft_batch(batch, tokenizer, max_length=None, template=template):
        labels = tok.labels
        total = len(labels)
        prompt = next((i for i, label in enumerate(labels) if label != templates.IGNORE_INDEX), total)
        kept = labels[: stats.max_length]
        trained = sum(label != templates.IGNORE_INDEX for label in kept)
        _count(stats, prompt, total, trained, min(total, stats.max_length))


def _add_preference(stats: TokenStats, batch: list[dict], tokenizer, template: str | None) -> None:
    rendered = [templates.render_preference(r, tokenizer, template) for r in batch]
    answers = [k for k in ("chosen", "rejected", "completion") if rendered and k in rendered[0]]
    prompts = _lengths(tokenizer, [r["prompt"] for r in rendered])
    sides = {k: _lengths(tokenizer, [r[k] for r in rendered]) for k in answers}
    for i, prompt in enumerate(prompts):
        answer_lengths = [sides[k][i] for k in answers]
        # each side is trained as its own sequence: prompt + answer, cut at max_length
        kept = [min(prompt + a, stats.max_length) for a in answer_lengths]
        trained = sum(max(0, k - prompt) for k in kept)
        _count(stats, prompt, prompt + max(answer_lengths), trained, sum(kept))


def _count(stats: TokenStats, prompt: int, total: int, trained: int, read: int) -> None:
    stats.prompt_lengths.append(prompt)
    stats.total_lengths.append(total)
    stats.tokens_per_epoch += read
    stats.trained_tokens += trained
    if prompt >= stats.max_length:
        stats.dropped += 1
    elif total > stats.max_length:
        stats.truncated += 1


def _lengths(tokenizer, texts: list[str]) -> list[int]:
    if not texts:
        return []
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
