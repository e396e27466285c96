"""One evaluation from start to end: the stages that fill an eval folder.

Stages, each resumable: the eval set is frozen into items.jsonl; both models answer in batches
(greedy, seeded) on the chat engine; the references and the general text are scored
teacher-forced; the judge compares every pair in both orders; summary.json is written last.
Rows already on disk are skipped, so a job killed with -9 and started again continues where the
last durable line left off. `run` is what `python -m studio eval` executes, in the foreground
or as the app's background process (studio/evaluate/job.py). Knows nothing about the UI.
"""

from __future__ import annotations

import os
import signal
import threading
import traceback
from collections import deque
from datetime import UTC, datetime
from pathlib import Path

from studio import processes
from studio.evaluate import evaldir, evalset, judge, report, stats

GENERAL_TEXT = "general_text.txt"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _say(path: Path, text: str) -> None:
    print(f"[eval {path.name}] {text}", flush=True)


# ---------------------------------------------------------------- the stages


def _items(path: Path, run_dir: Path, config: evaldir.EvalConfig) -> list[dict]:
    items = evaldir.read_items(path)
    if items is None:
        built = evalset.build(run_dir, config.eval_set, config.prompts, config.limit)
        evaldir.write_items(path, [item.as_dict() for item in built])
        items = evaldir.read_items(path) or []
    return sorted(items, key=lambda item: item["i"])


def _adapter(engine, side: str, run_dir: Path) -> str | None:
    if side == "base":
        return None
    return engine.add_adapter(Path(run_dir) if side == "adapter" else Path(side))


def _progress(path: Path, stage: str, done: int, total: int) -> None:
    evaldir.write_status(path, stage=stage, done=done, total=total)


def answer_all(path: Path, items: list[dict], engine, names: tuple, config, stop) -> None:
    """Both models answer every prompt not answered yet, `batch_size` prompts per batch."""
    from studio.chat.engine import GenSettings

    settings = GenSettings(
        temperature=0.0,
        max_new_tokens=config.max_new_tokens,
        repetition_penalty=config.repetition_penalty,
        seed=config.seed,
    )
    done = evaldir.answers(path)
    todo = [item for item in items if item["i"] not in done]
    for start in range(0, len(todo), config.batch_size):
        if stop.is_set():
            return
        batch = todo[start : start + config.batch_size]
        _progress(path, "answers", len(items) - len(todo) + start, len(items))
        requests = [(item["messages"], name) for item in batch for name in names]
        last = deque(engine.stream_batch(requests, settings, stop), maxlen=1)  # decode to the end
        replies = last[0] if last else ()
        if stop.is_set() or any(r.finish in ("stopped", "unloaded") for r in replies):
            return  # a half-answered batch is not written: it is answered again on resume
        for k, item in enumerate(batch):
            a, b = replies[2 * k], replies[2 * k + 1]
            row = {"i": item["i"], "a": a.text, "b": b.text, "finish_a": a.finish, "finish_b": b.finish}
            evaldir.append(path, "answers.jsonl", row)
    _progress(path, "answers", len(items), len(items))


def _general_texts() -> list[str]:
    from studio.data import store

    text = (store.SAMPLE_DIR / "eval" / GENERAL_TEXT).read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def score_likelihoods(path: Path, items: list[dict], run_dir: Path, config, stop) -> None:
    """Reference and general-text NLL under both models (the run's base, its adapters on / off)."""
    import torch

    from studio import models
    from studio.data import templates
    from studio.evaluate import scores

    recipe = evalset.run_recipe(run_dir)
    done = evaldir.likelihood(path)
    rows = {f"ref:{item['i']}": item["record"] for item in items if item.get("record")}
    texts = {f"general:{k}": text for k, text in enumerate(_general_texts())}
    todo = [key for key in [*rows, *texts] if key not in done]
    if not todo:
        return
    _progress(path, "likelihood", len(done), len(done) + len(todo))
    tokenizer = models.load_tokenizer(recipe.model)
    templates.ensure_chat_template(tokenizer, recipe.data.chat_template)
    model = models.load_model(recipe.model, dtype=torch.float32).eval()
    sides = _likelihood_sides(model, config, run_dir)
    for n, key in enumerate(todo):
        if stop.is_set():
            return
        if key in rows:
            row = scores.masked_rows([rows[key]], tokenizer, recipe.data)
        else:
            row = scores.text_rows([texts[key]], tokenizer, recipe.data.max_length)
        got = {side: use(row)[0] for side, use in sides.items()}
        evaldir.append(
            path,
            "likelihood.jsonl",
            {"key": key, "nll_a": got["a"].nll, "nll_b": got["b"].nll, "tokens": got["a"].tokens},
        )
        _progress(path, "likelihood", len(done) + n + 1, len(done) + len(todo))


def _likelihood_sides(model, config, run_dir: Path) -> dict:
    """side -> a function scoring rows with that side's weights (base: every adapter off)."""
    from peft import PeftModel

    from studio.chat.adapters import adapter_folder
    from studio.evaluate import scores

    folders = {
        side: adapter_folder(Path(run_dir) if spec == "adapter" else Path(spec))
        for side, spec in (("a", config.side_a), ("b", config.side_b))
        if spec != "base"
    }
    peft = None
    for side, folder in folders.items():
        if peft is None:
            peft = PeftModel.from_pretrained(model, str(folder), adapter_name=side, is_trainable=False)
        else:
            peft.load_adapter(str(folder), adapter_name=side, is_trainable=False)

    def scorer(side: str):
        def use(rows):
            if side not in folders:
                if peft is None:
                    return scores.score_rows(model, rows)
                with peft.disable_adapter():
                    return scores.score_rows(peft, rows)
            peft.set_adapter(side)
            return scores.score_rows(peft, rows)

        return use

    return {"a": scorer("a"), "b": scorer("b")}


def judge_all(path: Path, items: list[dict], the_judge, config, stop) -> None:
    """The judge's verdict on every answered prompt, A first and then B first."""
    answers, done = evaldir.answers(path), evaldir.verdicts(path)
    todo = [item for item in items if item["i"] in answers and item["i"] not in done]
    for start in range(0, len(todo), config.batch_size):
        if stop.is_set():
            return
        batch = todo[start : start + config.batch_size]
        _progress(path, "judge", len(done) + start, len(done) + len(todo))
        texts = []
        for item in batch:
            a, b = answers[item["i"]]["a"], answers[item["i"]]["b"]
            texts.append(judge.fill(config.judge_prompt, item["prompt"], a, b))  # A shown first
            texts.append(judge.fill(config.judge_prompt, item["prompt"], b, a))  # B shown first
        said = the_judge.ask(texts, stop)
        if stop.is_set() or len(said) != len(texts):
            return
        for k, item in enumerate(batch):
            orders = []
            for raw, a_first in ((said[2 * k], True), (said[2 * k + 1], False)):
                choice, parsed = judge.parse(raw)
                orders.append(
                    {"raw": raw, "choice": choice, "parsed": parsed, "model": judge.to_model(choice, a_first)}
                )
            outcome = stats.both_orders(orders[0]["model"], orders[1]["model"])
            row = {"i": item["i"], "first": orders[0], "second": orders[1], "outcome": outcome}
            evaldir.append(path, "judge.jsonl", row)
    _progress(path, "judge", len(done) + len(todo), len(done) + len(todo))


def _make_judge(config, engine, key: str):
    if judge.is_url(config.judge):
        return judge.EndpointJudge(config.judge, key=key, model=config.judge_model, seed=config.seed)
    from studio import models

    if not engine.loaded or models.resolve(engine.spec) != models.resolve(config.judge):
        engine.load(config.judge)  # the answers are on disk: the judge may take the engine over
    return judge.ModelJudge(engine, config.judge, seed=config.seed)


# ---------------------------------------------------------------- the whole job


def _stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return

    def handle(signum, _frame) -> None:
        print(f"[studio] received {signal.Signals(signum).name}: stopping after the current step", flush=True)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handle)


def run(run_dir: Path, eval_id: str, key: str = "", stop: threading.Event | None = None) -> dict:
    """Run (or continue) the evaluation `eval_id` of `run_dir`; returns its summary."""
    from studio.chat.engine import ChatEngine

    run_dir = Path(run_dir)
    path = evaldir.folder(run_dir, eval_id)
    config = evaldir.read_config(path).check()
    stop = stop or threading.Event()
    _stop_on_signals(stop)
    evaldir.write_status(
        path, state="running", **processes.identity(os.getpid()), started_at=_now(), error=None
    )
    try:
        items = _items(path, run_dir, config)
        _say(path, f"{len(items)} prompts")
        engine = ChatEngine()
        engine.load(evalset.run_recipe(run_dir).model)
        names = (_adapter(engine, config.side_a, run_dir), _adapter(engine, config.side_b, run_dir))
        evaldir.write_status(path, label_a=names[0] or "base", label_b=names[1] or "base")
        answer_all(path, items, engine, names, config, stop)
        engine.unload()  # the scoring stage loads its own copy: never two copies of a big model at once
        if not stop.is_set():
            score_likelihoods(path, items, run_dir, config, stop)
        if not stop.is_set() and config.judge:
            the_judge = _make_judge(config, engine, key)
            evaldir.write_status(path, judge_label=the_judge.label)
            judge_all(path, items, the_judge, config, stop)
        state, error = ("stopped" if stop.is_set() else "completed"), None
    except ValueError as exc:  # bad input: the message names the place and the fix
        state, error = "failed", str(exc)
    except Exception as exc:  # noqa: BLE001 - the status must say why the job ended
        traceback.print_exc()
        state, error = "failed", f"{type(exc).__name__}: {exc}"
    summary = report.summarize(path, run_dir, state=state)
    evaldir.write_summary(path, summary)  # before the status: whoever sees the end finds the summary
    evaldir.write_status(path, state=state, error=error, ended_at=_now())
    _say(path, f"{state}: {report.headline(summary)}")
    return summary
