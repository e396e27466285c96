"""`python -m studio votes ...` and `python -m studio pairs ...`: the Votes and Rate tabs' actions
on the command line."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    votes = sub.add_parser("votes", help="list, report, export or delete chat votes; save them as a dataset")
    actions = votes.add_subparsers(dest="votes_command", required=True, metavar="ACTION")
    listing = actions.add_parser(
        "list", help="the newest votes: id, preferred answer (A, B, tie, both_bad), prompt"
    )
    listing.add_argument("--limit", type=int, default=50)
    actions.add_parser("report", help="counts, position and length bias, wins per pair of models")
    export = actions.add_parser("export", help="write the votes as training records (JSONL)")
    export.add_argument("out", help="the .jsonl file to write")
    export.add_argument(
        "--kind", choices=("dpo", "kto"), default="dpo", help="dpo: pairs (DPO/SimPO/ORPO); kto"
    )
    export.add_argument(
        "--majority",
        action="store_true",
        help="resolve each generated pair rated by several people by majority (ties dropped)",
    )
    export.add_argument("--annotator", default=None, help="only the votes of this login")
    save = actions.add_parser("save", help="save the votes as a dataset the Train tab lists")
    save.add_argument("name")
    save.add_argument("--kind", choices=("dpo", "kto"), default="dpo")
    delete = actions.add_parser("delete", help="delete one vote by its id")
    delete.add_argument("vote_id", type=int)
    votes.set_defaults(handler=_votes)
    _register_pairs(sub)


def _register_pairs(sub: argparse._SubParsersAction) -> None:
    pairs = sub.add_parser("pairs", help="generate answer pairs for the voting queue (a background job)")
    actions = pairs.add_subparsers(dest="pairs_command", required=True, metavar="ACTION")
    gen = actions.add_parser("generate", help="a new job: two answers for every prompt, A and B")
    gen.add_argument("--prompts", default="", help="a .txt file (one prompt a line) or a dataset file")
    gen.add_argument("--dataset", default="", help="a saved dataset or sample:<file>: its prompts")
    gen.add_argument("--prompt", action="append", default=[], help="a typed prompt (repeatable)")
    gen.add_argument("--limit", type=int, default=None, help="only the first N prompts")
    for side in ("a", "b"):
        up = side.upper()
        gen.add_argument(
            f"--{side}", default="default", help=f"source {up}: a model spec, or an endpoint URL"
        )
        gen.add_argument(
            f"--{side}-adapter", default="", help=f"source {up}: an adapter or checkpoint folder"
        )
        gen.add_argument(f"--{side}-temperature", type=float, default=0.0, help="0: greedy")
        gen.add_argument(f"--{side}-seed", type=int, default=0)
        gen.add_argument(f"--{side}-endpoint-model", default="", help="the model name an endpoint serves")
        gen.add_argument(f"--{side}-key-env", default="", help="environment variable holding the key")
    gen.add_argument("--max-new-tokens", type=int, default=128)
    gen.add_argument("--background", action="store_true", help="start the job and return at once")
    resume = actions.add_parser("resume", help="continue a stopped or killed job where it stopped")
    resume.add_argument("job_id")
    actions.add_parser("list", help="the jobs: id, state, pairs done of total")
    stop = actions.add_parser("stop", help="stop a running job after the pair in flight")
    stop.add_argument("job_id")
    pairs.set_defaults(handler=_pairs)


def _source(args: argparse.Namespace, side: str):
    from studio.prefs.pairs import Source

    spec = getattr(args, side)
    is_url = spec.startswith(("http://", "https://"))
    return Source(
        model="" if is_url else spec,
        adapter=getattr(args, f"{side}_adapter"),
        temperature=getattr(args, f"{side}_temperature"),
        seed=getattr(args, f"{side}_seed"),
        max_new_tokens=args.max_new_tokens,
        url=spec if is_url else "",
        endpoint_model=getattr(args, f"{side}_endpoint_model"),
        key_env=getattr(args, f"{side}_key_env"),
    )


def _pairs(args: argparse.Namespace) -> int:
    from studio.prefs import generate, pairs

    try:
        if args.pairs_command == "generate":
            prompts = generate.load_prompts(args.prompts, args.dataset, args.prompt)[: args.limit]
            job = pairs.new_job(prompts, _source(args, "a"), _source(args, "b"))
            print(f"job {job.job_id}: {len(prompts)} prompts -> {pairs.job_dir(job.job_id)}", flush=True)
            if args.background:
                print(f"started, pid {generate.start(job.job_id)}")
                return 0
            return generate.run(job.job_id)
        if args.pairs_command == "resume":
            return generate.run(args.job_id)
        if args.pairs_command == "stop":
            generate.stop(args.job_id)
            print(f"stopping {args.job_id}")
            return 0
        for job_id in pairs.list_jobs():
            status = pairs.read_status(job_id)
            print(f"{job_id}  {pairs.job_state(job_id):<9}  {status.get('done', 0)}/{status.get('total', 0)}")
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _votes(args: argparse.Namespace) -> int:
    from studio.prefs import agreement, records, report, store

    try:
        if args.votes_command == "list":
            for vote in store.list_votes(limit=args.limit):
                prompt = (vote.messages[-1]["content"] if vote.messages else "").replace("\n", " ")[:60]
                print(f"{vote.id:>5}  {vote.verdict:<8}  {prompt}")
        elif args.votes_command == "report":
            quality = report.quality_report()
            print(
                f"{quality.total} votes: {quality.decisive} decisive, {quality.ties} ties, "
                f"{quality.both_bad} both bad, {quality.edited} edited; {quality.usable_pairs} usable pairs"
            )
            for note in quality.notes():
                print(f"note: {note}")
            votes = store.all_votes()
            counts = {name or "(no login)": len(v) for name, v in agreement.by_annotator(votes).items()}
            print("annotators: " + ", ".join(f"{name} {n}" for name, n in sorted(counts.items())))
            print("\n".join(agreement.summary_lines(votes)))
        elif args.votes_command == "export":
            votes = store.all_votes()
            if args.annotator is not None:
                votes = [v for v in votes if v.annotator == args.annotator]
            if args.majority:
                resolved = agreement.majority(votes)
                votes = resolved.votes
                print(
                    f"majority: {resolved.resolved} pairs resolved, {resolved.dropped_ties} tied pairs dropped"
                )
            rows = (records.dpo_records if args.kind == "dpo" else records.kto_records)(votes)
            records.write_jsonl(args.out, rows)
            print(f"{len(rows)} records -> {args.out}")
        elif args.votes_command == "save":
            entry = records.save_as_dataset(args.name, "preference" if args.kind == "dpo" else "kto")
            print(f"saved {entry.name}: {entry.rows} rows")
        else:
            store.delete_vote(args.vote_id)
            print(f"deleted vote {args.vote_id}")
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
