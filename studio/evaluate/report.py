"""The numbers of an evaluation, computed from its folder: the per-prompt table and the summary.

Works on a finished, stopped or killed evaluation alike (a partial one says so), so the UI, the
command line and the model card all show the same figures. Knows nothing about the UI.
"""

from __future__ import annotations

import math
from pathlib import Path

from studio.evaluate import evaldir, human, scores, stats

TABLE_COLUMNS = [
    "#",
    "prompt",
    "reference",
    "A",
    "B",
    "F1 A",
    "F1 B",
    "ROUGE-L A",
    "ROUGE-L B",
    "ppl A",
    "ppl B",
    "judge",
]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _ppl(row: dict | None, side: str) -> float | None:
    if not row or not row.get("tokens"):
        return None
    return math.exp(row[f"nll_{side}"] / row["tokens"])


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}"


def table(path: Path) -> list[list]:
    """One row per answered prompt: prompt, reference, both answers, scores, the judge's outcome."""
    items = evaldir.read_items(path) or []
    answers, likelihood, judged = evaldir.answers(path), evaldir.likelihood(path), evaldir.verdicts(path)
    out = []
    for item in items:
        i, answer = item["i"], answers.get(item["i"])
        if answer is None:
            continue
        ref = item.get("reference")
        sa = scores.reference_scores(answer["a"], ref) if ref else {}
        sb = scores.reference_scores(answer["b"], ref) if ref else {}
        verdict = judged.get(i)
        outcome = ""
        if verdict:
            outcome = f"{verdict['outcome']} ({verdict['first']['model']}, {verdict['second']['model']})"
        like = likelihood.get(f"ref:{i}")
        out.append(
            [
                i + 1,
                item["prompt"],
                ref or "",
                answer["a"],
                answer["b"],
                _fmt(sa.get("f1")),
                _fmt(sb.get("f1")),
                _fmt(sa.get("rouge_l")),
                _fmt(sb.get("rouge_l")),
                _fmt(_ppl(like, "a")),
                _fmt(_ppl(like, "b")),
                outcome,
            ]
        )
    return out


def _reference_means(items: list[dict], answers: dict) -> dict:
    per_side: dict[str, dict[str, list[float]]] = {"a": {}, "b": {}}
    n = 0
    for item in items:
        answer, ref = answers.get(item["i"]), item.get("reference")
        if answer is None or not ref:
            continue
        n += 1
        for side in ("a", "b"):
            for name, value in scores.reference_scores(answer[side], ref).items():
                per_side[side].setdefault(name, []).append(value)
    return {"n": n, **{side: {k: _mean(v) for k, v in d.items()} for side, d in per_side.items()}}


def _perplexities(likelihood: dict[str, dict], prefix: str) -> dict | None:
    rows = [row for key, row in likelihood.items() if key.startswith(prefix)]
    if not rows:
        return None
    out = {"rows": len(rows), "tokens": sum(r["tokens"] for r in rows)}
    for side in ("a", "b"):
        parts = [scores.Likelihood(r[f"nll_{side}"], r["tokens"]) for r in rows]
        out[side] = scores.perplexity(parts)
        out[f"mean_log_likelihood_{side}"] = scores.mean_log_likelihood(parts)
    return out


def _judge_and_humans(path: Path, run_dir: Path, items: list[dict], judged: dict) -> dict:
    config = evaldir.read_config(path)
    outcomes = [row["outcome"] for row in judged.values()]
    judge = None
    if config.judge:
        unparsed = sum(not row[o]["parsed"] for row in judged.values() for o in ("first", "second"))
        judge = {**stats.win_rate(outcomes).as_dict(), "both_orders": len(judged), "unreadable": unparsed}
    votes = human.verdicts(human.side_key(config.side_a, run_dir), human.side_key(config.side_b, run_dir))
    out: dict = {"judge": judge, "human": None, "agreement": None}
    if votes:
        out["human"] = stats.win_rate([v.outcome for v in votes]).as_dict()
        prompts = {item["i"]: item["prompt"] for item in items}
        pairs = [
            (row["outcome"], vote.outcome)
            for i, row in judged.items()
            for vote in votes
            if human.same_prompt(prompts.get(i, ""), vote.prompt)
        ]
        if pairs:
            agreement = stats.cohen_kappa([p[0] for p in pairs], [p[1] for p in pairs])
            out["agreement"] = {"n": agreement.n, "percent": agreement.percent, "kappa": agreement.kappa}
    return out


def summarize(path: Path, run_dir: Path, state: str | None = None) -> dict:
    """Every number of the evaluation in `path` (an eval folder of `run_dir`); `state` overrides
    the one in status.json (the job writes its summary before it says it has ended)."""
    path = Path(path)
    config = evaldir.read_config(path)
    status = evaldir.read_status(path)
    items = evaldir.read_items(path) or []
    answers, judged = evaldir.answers(path), evaldir.verdicts(path)
    likelihood = evaldir.likelihood(path)
    summary = {
        "eval_id": path.name,
        "run_id": Path(run_dir).name,
        "eval_set": config.eval_set,
        "side_a": status.get("label_a") or config.side_a,
        "side_b": status.get("label_b") or config.side_b,
        "judge_name": status.get("judge_label") or config.judge,
        "state": state or status.get("state", "unknown"),
        "n_prompts": len(items),
        "n_answered": len(answers),
        "settings": {
            "max_new_tokens": config.max_new_tokens,
            "seed": config.seed,
            "greedy": True,
            "repetition_penalty": config.repetition_penalty,
        },
        "references": _reference_means(items, answers),
        "perplexity": {
            "reference": _perplexities(likelihood, "ref:"),
            "general": _perplexities(likelihood, "general:"),
        },
        **_judge_and_humans(path, run_dir, items, judged),
    }
    complete = bool(items) and len(answers) == len(items) and (not config.judge or len(judged) == len(items))
    summary["partial"] = not (complete and summary["state"] == "completed")
    return summary


def headline(summary: dict) -> str:
    """The win rate in one line: 'B beats A: 0.62 [0.51, 0.72], n=80 (...)' or why there is none."""
    judge = summary.get("judge")
    if not judge or not judge.get("n"):
        return "no judged win rate (no judge chosen, or nothing judged yet)"
    rate = stats.WinRate(judge["wins"], judge["ties"], judge["losses"])
    return f"{summary.get('side_b', 'B')} vs {summary.get('side_a', 'A')}: win rate {rate.text()}"


def compare(run_dirs: list[Path]) -> list[dict]:
    """The newest evaluation summary of each run, for a side-by-side table."""
    out = []
    for run_dir in run_dirs:
        summary = evaldir.latest_summary(run_dir)
        if summary:
            out.append(summary)
    return out


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.0f}%"


def _num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def summary_lines(summary: dict) -> list[str]:
    """The summary in plain words, one Markdown bullet a figure (the UI, the CLI and the card)."""
    a, b = summary.get("side_a", "?"), summary.get("side_b", "?")
    seed = (summary.get("settings") or {}).get("seed", "?")
    lines = [
        f"- eval set: {summary.get('eval_set', '?')}, {summary.get('n_answered', 0)} of "
        f"{summary.get('n_prompts', 0)} prompts answered (greedy, seed {seed})"
        + (" — PARTIAL" if summary.get("partial", True) else ""),
        f"- A = {a}, B = {b}",
    ]
    judge = summary.get("judge")
    if judge and judge.get("n"):
        rate = stats.WinRate(judge["wins"], judge["ties"], judge["losses"])
        lines.append(f"- judge ({summary.get('judge_name', '?')}, both orders): B's win rate {rate.text()}")
    elif summary.get("judge_name"):
        lines.append("- judge: nothing judged yet")
    human_rate = summary.get("human")
    if human_rate and human_rate.get("n"):
        rate = stats.WinRate(human_rate["wins"], human_rate["ties"], human_rate["losses"])
        lines.append(f"- your blind votes: B's win rate {rate.text()}")
    agreement = summary.get("agreement")
    if agreement and agreement.get("n"):
        kappa = agreement.get("kappa")
        lines.append(
            f"- judge vs your votes: agree on {agreement['percent']:.0f}% of {agreement['n']} prompts, "
            f"Cohen's kappa {_num(kappa)}"
        )
    refs = summary.get("references") or {}
    if refs.get("n"):
        ra, rb = refs.get("a", {}), refs.get("b", {})
        lines.append(
            f"- against the {refs['n']} reference answers: exact match {_pct(ra.get('exact'))} vs "
            f"{_pct(rb.get('exact'))}, token F1 {_num(ra.get('f1'))} vs {_num(rb.get('f1'))}, "
            f"ROUGE-L {_num(ra.get('rouge_l'))} vs {_num(rb.get('rouge_l'))} (A vs B)"
        )
    ppl = summary.get("perplexity") or {}
    if ppl.get("reference"):
        r = ppl["reference"]
        lines.append(
            f"- reference perplexity (lower: the model finds the expected answers likelier): "
            f"{_num(r['a'])} vs {_num(r['b'])} (A vs B, {r['tokens']} answer tokens)"
        )
    if ppl.get("general"):
        g = ppl["general"]
        lines.append(
            f"- general-text perplexity (forgetting check: B far above A means the tune damaged "
            f"general ability): {_num(g['a'])} vs {_num(g['b'])} (A vs B)"
        )
    return lines
