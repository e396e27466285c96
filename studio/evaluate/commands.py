"""The `eval` command: base vs adapter on an eval set, scored and judged, into the run's eval/ folder.

Run as: python -m studio eval RUN_DIR [--set heldout|NAME|FILE] [--judge SPEC|URL] [--resume ID]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EPILOG = """eval sets: 'heldout' (the rows the run held out, data.eval_split), a saved dataset name, a
'sample:<file>' or a data file path (a .txt file: one prompt per line), or --prompt TEXT (repeatable).
judge: a model the studio loads ('default', a folder, a Hub id) or an OpenAI-compatible endpoint URL
(e.g. http://127.0.0.1:8000/v1) with --judge-model NAME; its key is read from the environment
variable named by --judge-key-env (default OPENAI_API_KEY), never from the command line."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a run: base vs adapter answers, scores, perplexity, judged win rate",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN_DIR", help="a run folder or a run id under STUDIO_HOME/runs")
    p.add_argument("--set", dest="eval_set", default="heldout", help="the eval set (default: heldout)")
    p.add_argument("--prompt", action="append", default=[], help="a prompt to ask (repeatable)")
    p.add_argument("--a", dest="side_a", default="base", help="model A: base, adapter or an adapter folder")
    p.add_argument("--b", dest="side_b", default="adapter", help="model B (default: the run's adapter)")
    p.add_argument("--judge", default="", help="judge model SPEC or endpoint URL (default: no judge)")
    p.add_argument("--judge-model", default="", help="the model name an endpoint serves")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="env variable holding the endpoint key")
    p.add_argument("--judge-prompt", default="", help="a file with the judging prompt to use instead")
    p.add_argument("--limit", type=int, default=50, help="at most this many prompts (default 50)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="longest answer in tokens")
    p.add_argument("--batch-size", type=int, default=4, help="prompts answered together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", metavar="EVAL_ID", default="", help="continue this evaluation of the run")
    p.set_defaults(handler=handle)


def _run_dir(value: str) -> Path:
    from studio import workspace

    path = Path(value).expanduser()
    if path.is_dir():
        return path.resolve()
    try:
        candidate = workspace.run_path(value)
    except ValueError:
        candidate = None
    if candidate is not None and candidate.is_dir():
        return candidate
    raise ValueError(
        f"run {value!r} not found: give a run folder or a run id listed by `python -m studio runs`"
    )


def _config(args) -> object:
    from studio.evaluate.evaldir import DEFAULT_JUDGE_PROMPT, EvalConfig

    judge_prompt = DEFAULT_JUDGE_PROMPT
    if args.judge_prompt:
        try:
            judge_prompt = Path(args.judge_prompt).read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"--judge-prompt {args.judge_prompt}: cannot read it ({exc.strerror})") from None
    return EvalConfig(
        eval_set="prompts" if args.prompt else args.eval_set,
        prompts=list(args.prompt),
        side_a=args.side_a,
        side_b=args.side_b,
        judge=args.judge,
        judge_model=args.judge_model,
        judge_prompt=judge_prompt,
        limit=args.limit,
        max_new_tokens=args.max_new_tokens,
        batch_size=args.batch_size,
        seed=args.seed,
    )


def handle(args) -> int:
    from studio.evaluate import evaldir, job, pipeline, report

    try:
        run_dir = _run_dir(args.run)
        if args.resume:
            eval_id = args.resume
            if not (evaldir.folder(run_dir, eval_id) / "config.json").is_file():
                raise ValueError(f"{run_dir.name} has no evaluation {eval_id!r}: see {evaldir.root(run_dir)}")
        else:
            eval_id = evaldir.create(run_dir, _config(args))
        key = os.environ.get(job.JUDGE_KEY_ENV) or os.environ.get(args.judge_key_env, "")
        print(f"evaluation {eval_id}: {evaldir.folder(run_dir, eval_id)}", flush=True)
        summary = pipeline.run(run_dir, eval_id, key=key)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("\n".join(report.summary_lines(summary)))
    status = evaldir.read_status(evaldir.folder(run_dir, eval_id))
    if status.get("error"):
        print(f"error: {status['error']}", file=sys.stderr)
    return 0 if summary["state"] == "completed" else 1
