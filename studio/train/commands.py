"""`python -m studio train | runs | cluster`: the Train and Runs tabs' actions on the command line."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    _register_train(sub)
    _register_runs(sub)
    _register_cluster(sub)
    _register_tune(sub)


def _add_sets(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe field, e.g. --set max_steps=20 --set lora.r=8",
    )


def _register_train(sub: argparse._SubParsersAction) -> None:
    from studio.train import recipes  # light (dataclasses + yaml): every recipe field's help, written once

    train = sub.add_parser(
        "train",
        help="train a recipe into a run folder (in this terminal)",
        epilog=recipes.fields_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("recipe", help="a recipe YAML file (see recipes/)")
    _add_sets(train)
    train.add_argument("--run-dir", help="run folder (default: STUDIO_HOME/runs/<new id>)")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from the last checkpoint in --run-dir (from step 0 when it has none)",
    )
    train.add_argument(
        "--time-steps",
        type=int,
        metavar="N",
        help="time N training steps (after one warm-up step) on the real model and data, print "
        "the seconds of each as JSON and exit without saving anything",
    )
    train.set_defaults(handler=_train)


def _train(args: argparse.Namespace) -> int:
    import logging

    timed = args.time_steps is not None
    if timed and (args.time_steps < 1 or args.run_dir or args.resume):
        print(
            "error: --time-steps needs a number of steps >= 1, and no --run-dir or --resume", file=sys.stderr
        )
        return 2
    # Before transformers imports bitsandbytes, which logs a missing optional kernel on import
    # (run.quiet_libraries says what else is kept out of train.log).
    logging.getLogger("bitsandbytes.backends.cpu").setLevel(logging.ERROR)
    from studio.train import run

    if timed:
        return run.time_steps(args.recipe, args.sets, args.time_steps)
    return run.main(args.recipe, sets=args.sets, run_dir=args.run_dir, resume=args.resume)


def _register_runs(sub: argparse._SubParsersAction) -> None:
    runs = sub.add_parser(
        "runs", help="list, queue, stop, resume, duplicate, rename, sum up or delete runs (the Runs tab)"
    )
    actions = runs.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    actions.add_parser("list", help="every run, newest first: id, name, state, step, method, model, data")
    rename = actions.add_parser("rename", help="give a run a new name (its id and folder stay)")
    rename.add_argument("run_id")
    rename.add_argument("name")
    submit = actions.add_parser("submit", help="queue a recipe as a new run and start it in the background")
    submit.add_argument("recipe")
    _add_sets(submit)
    submit.add_argument("--devices", type=int, default=1, help="processes (GPUs) to train on")
    for name, text in (
        ("stop", "stop a run: it saves a checkpoint and exits"),
        ("resume", "continue a stopped or failed run (from step 0 if it stopped before a checkpoint)"),
        ("duplicate", "queue a new run with the same recipe and settings"),
        ("delete", "delete a finished run's folder"),
        ("summary", "what a run did, in words: its loss and how its probe answers changed"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("run_id")
        if name == "delete":
            action.add_argument("--yes", action="store_true", help="confirm: the folder is deleted for good")
    runs.set_defaults(handler=_runs)


def _runs(args: argparse.Namespace) -> int:
    from studio.train import pace, runs

    try:
        if args.runs_command == "list":
            for info in runs.list_runs():
                step = f"{info.status.get('step', 0)}/{info.status.get('max_steps', '?')}"
                left = pace.time_left({**info.status, "state": info.state})
                when = f"  ({pace.duration_words(left)} left)" if left is not None else ""
                print(
                    f"{info.run_id}  {info.name}  {info.state:<9} {step:>9}  {info.method}  {info.model}  "
                    f"{info.dataset}{when}"
                )
            return 0
        if args.runs_command == "rename":
            print(f"renamed {args.run_id}: {runs.rename(args.run_id, args.name)}")
            return 0
        if args.runs_command == "summary":
            from studio.train import outcome

            print(outcome.summarize(runs.get(args.run_id).path).text)
            return 0
        if args.runs_command == "submit":
            from studio.train import recipes

            method = recipes.load(args.recipe, args.sets).method
            run_id = runs.submit(args.recipe, args.sets, method, num_processes=args.devices)
            runs.schedule()
            print(run_id)
            return 0
        if args.runs_command == "delete" and not args.yes:
            print(f"deleting {args.run_id} removes its adapter and checkpoints: add --yes", file=sys.stderr)
            return 1
        if args.runs_command == "duplicate":
            print(runs.duplicate(args.run_id))
            runs.schedule()
            return 0
        {"stop": runs.stop, "resume": runs.resume, "delete": runs.delete}[args.runs_command](args.run_id)
        if args.runs_command == "resume":
            runs.schedule()
        print(f"{args.runs_command}: {args.run_id}")
        return 0
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


def _register_cluster(sub: argparse._SubParsersAction) -> None:
    from studio.train.cluster import STRATEGIES

    parser = sub.add_parser(
        "cluster",
        help="write the files that run a recipe on a GPU cluster (accelerate config, SLURM, torchrun)",
    )
    parser.add_argument("recipe")
    _add_sets(parser)
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--strategy", choices=STRATEGIES, default="ddp")
    parser.add_argument("--job-name", default="studio-train")
    parser.add_argument("--studio-home", help="STUDIO_HOME on shared storage (absolute path)")
    parser.add_argument("--time", dest="time_limit", default="24:00:00")
    parser.add_argument("--partition")
    parser.add_argument("--account")
    parser.add_argument("--out", required=True, help="folder to write the files into")
    parser.set_defaults(handler=_cluster)


def _cluster(args: argparse.Namespace) -> int:
    from studio.train.cluster import ClusterJob, write_bundle

    fields = ("recipe", "nodes", "gpus_per_node", "strategy", "job_name", "studio_home", "time_limit")
    options = {name: getattr(args, name) for name in (*fields, "partition", "account")}
    try:
        written = write_bundle(args.out, ClusterJob(**options, sets=tuple(args.sets)))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


def _register_tune(sub: argparse._SubParsersAction) -> None:
    tune = sub.add_parser(
        "tune",
        help="the guided path: pick the recipe from the data, model, machine and budget, explain "
        "each choice, and queue the run",
    )
    tune.add_argument("dataset", help="saved dataset name, sample:<file> or a file path")
    tune.add_argument("--model", default="default", help="model spec (default: the embedded model)")
    tune.add_argument(
        "--goal",
        default="style",
        choices=("style", "prefer", "thumbs"),
        help="style: answer like my examples (SFT) · prefer: chosen over rejected (DPO) · thumbs: "
        "thumbs up/down (KTO)",
    )
    tune.add_argument("--budget", default="quick", choices=("quick", "balanced", "thorough"))
    tune.add_argument(
        "--measure",
        action="store_true",
        help="time a few training steps on this machine first (~1 min): the steps fit the budget "
        "and the time is printed",
    )
    tune.add_argument("--dry-run", action="store_true", help="print the choices, queue nothing")
    tune.set_defaults(handler=_tune)


def _tune(args: argparse.Namespace) -> int:
    from studio.train import autotune, runs, tune

    try:
        facts = tune.facts(args.dataset, args.model, args.goal, args.budget)
        if args.measure:
            print("Timing a few training steps on this machine…", flush=True)
            plan, timing = tune.timed(facts, args.dataset, args.model)
        else:
            plan, timing = autotune.choose(facts), None
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"Recipe: {plan.recipe} ({plan.method.upper()}), {plan.steps} steps")
    for choice in plan.choices:
        hint = f" [{choice.field}={choice.value}]" if choice.field else ""
        print(f"- {choice.label}: {choice.reason}{hint}")
    if timing is not None:
        print(f"Time: {timing.words(plan.steps)}")
        if timing.busy:
            print(f"Note: {timing.busy}")
    if args.dry_run:
        return 0
    run_id = runs.submit(plan.recipe, tune.sets_for(plan, args.dataset, args.model), plan.method)
    runs.schedule()
    print(f"Queued run {run_id}: follow it with `python -m studio runs list` or in the Runs tab.")
    return 0
