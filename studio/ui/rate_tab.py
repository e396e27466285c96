"""Rate tab: make answer pairs from a prompt list (a background job), then rate them one at a time,
blind and shuffled, with keyboard shortcuts; several people at once, each under their login.

The queue's rules live in studio.prefs.queue; this tab keeps only the job id and the mode, and
asks the queue for the pair to show. Keys (when no text box has focus): 1 / 2 first or second
answer better (thumbs mode: 1 good, 2 bad), 3 tie, 4 both bad, S skip, U undo.
"""

from __future__ import annotations

import gradio as gr

from studio.chat import adapters as chat_adapters
from studio.data import store as datasets
from studio.prefs import generate, pairs, queue
from studio.prefs.pairs import Source

BASE = ("base model (no adapter)", "")
KEYS = {
    "1": "rate-first",
    "2": "rate-second",
    "3": "rate-tie",
    "4": "rate-both-bad",
    "s": "rate-skip",
    "u": "rate-undo",
}
# The page-wide key listener (Blocks js): a key clicks the matching button of the visible Rate tab.
JS = (
    "() => { const keys = "
    + str(KEYS).replace("'", '"')
    + """;
  document.addEventListener('keydown', (e) => {
    const t = e.target; const tag = (t && t.tagName || '').toLowerCase();
    if (tag === 'input' || tag === 'textarea' || e.ctrlKey || e.metaKey || e.altKey) return;
    const id = keys[e.key.toLowerCase()]; if (!id) return;
    const button = document.getElementById(id);
    if (button && button.offsetParent !== null) { e.preventDefault(); button.click(); }
  });
}"""
)


def _adapters() -> list[tuple[str, str]]:
    return [BASE] + [(chat_adapters.adapter_title(p), str(p)) for p in chat_adapters.list_adapters()]


def _on_show(job_id: str | None):
    jobs = _jobs()
    adapters = gr.update(choices=_adapters())
    picked = job_id or (jobs or [None])[0]
    # with nothing to pick, the value is left alone: this answer can arrive after "Generate pairs"
    # has picked the job it started (a slow answer under load), and must not clear that pick
    job = gr.update(choices=jobs, value=picked) if picked else gr.update(choices=jobs)
    return adapters, adapters, gr.update(choices=_prompt_sources()), job


def _refreshed(job_id: str | None):
    """The job list now; the picked job stays picked, or the newest when none is."""
    jobs = _jobs()
    return gr.update(choices=jobs, value=job_id if job_id in jobs else (jobs or [None])[0])


def _prompt_sources() -> list[str]:
    return [""] + [e.name for e in datasets.list_saved()] + datasets.list_samples()


def _jobs() -> list[str]:
    return pairs.list_jobs()


def job_status(job_id: str | None) -> str:
    if not job_id:
        return "No pair job yet: make pairs above, or pick a job."
    status = pairs.read_status(job_id)
    state = pairs.job_state(job_id)
    words = {"running": "making pairs", "stopped": "stopped (press Resume)", "completed": "all pairs made"}
    text = f"Job `{job_id}`: **{status.get('done', 0)} of {status.get('total', 0)}** pairs made — {words.get(state, state)}"
    return text + (f"\n\n**Error:** {status['error']}" if status.get("error") else "")


def on_generate(lines, source, model_a, adapter_a, temp_a, model_b, adapter_b, temp_b, max_new):
    try:
        prompts = generate.load_prompts(dataset=source or "", lines=(lines or "").splitlines())

        def make(model, adapter, temperature) -> Source:
            return Source(
                model=(model or "default").strip(),
                adapter=adapter or "",
                temperature=float(temperature),
                max_new_tokens=int(max_new),
            )

        job = generate.submit(prompts, make(model_a, adapter_a, temp_a), make(model_b, adapter_b, temp_b))
    except (ValueError, OSError) as exc:
        gr.Warning(str(exc))
        return gr.update(), job_status(None)
    gr.Info(f"Making {len(job.prompts)} pairs in the background")
    return gr.update(choices=_jobs(), value=job.job_id), job_status(job.job_id)


def on_stop(job_id):
    if job_id:
        generate.stop(job_id)
    return job_status(job_id)


def on_resume(job_id):
    if job_id and pairs.job_state(job_id) in ("stopped", "failed"):
        generate.start(job_id)
    return job_status(job_id)


def _annotator(request: gr.Request | None, name: str) -> str:
    login = getattr(request, "username", None) if request is not None else None
    return login or (name or "").strip()


def _screen(q: queue.RatingQueue, shown: queue.Shown | None):
    """progress, prompt, first answer, second answer, edit box (cleared)."""
    progress = q.progress()
    head = f"**{progress.done} of {progress.total}** pairs done · you rated **{progress.mine}**"
    if shown is None:
        status = pairs.job_state(q.job_id)
        more = " More are being made: press Next pair in a moment." if status == "running" else ""
        return head, f"Nothing left for you to rate in this job.{more}", "", "", ""
    prompt = shown.pair.messages[-1]["content"]
    second = "" if q.thumbs else shown.second
    return head, f"**Prompt:** {prompt}", shown.first, second, ""


def _queue(job_id, overlap, mode, name, request) -> queue.RatingQueue:
    if not job_id:
        raise ValueError("pick a pair job first (or make pairs above)")
    return queue.get(job_id, _annotator(request, name), int(overlap or 1), thumbs=mode == "Thumbs up / down")


def on_next(job_id, overlap, mode, name, request: gr.Request):
    try:
        q = _queue(job_id, overlap, mode, name, request)
        return _screen(q, q.next())
    except ValueError as exc:
        return gr.update(), str(exc), "", "", ""


def on_vote(pick, job_id, overlap, mode, name, edited, request: gr.Request):
    try:
        q = _queue(job_id, overlap, mode, name, request)
        if q.current is None:
            q.next()
        if q.thumbs:
            pick = {"first": "up", "second": "down"}.get(pick, pick)
        q.vote(pick, edited=edited)
        return _screen(q, q.next())
    except ValueError as exc:
        gr.Warning(str(exc))
        return gr.update(), gr.update(), gr.update(), gr.update(), gr.update()


def _voter(pick: str):
    """A click handler for one verdict button (Gradio passes the request by its annotation)."""

    def vote(job_id, overlap, mode, name, edited, request: gr.Request):
        return on_vote(pick, job_id, overlap, mode, name, edited, request)

    return vote


def on_skip(job_id, overlap, mode, name, request: gr.Request):
    try:
        q = _queue(job_id, overlap, mode, name, request)
    except ValueError as exc:
        gr.Warning(str(exc))
        return gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
    q.skip()
    return _screen(q, q.next())


def on_undo(job_id, overlap, mode, name, request: gr.Request):
    try:
        q = _queue(job_id, overlap, mode, name, request)
        return _screen(q, q.undo())
    except ValueError as exc:
        gr.Warning(str(exc))
        return gr.update(), gr.update(), gr.update(), gr.update(), gr.update()


def _side(label: str, key: str):
    with gr.Column():
        model = gr.Textbox("default", label=f"Model {label}", elem_id=f"rate-model-{key}")
        adapter = gr.Dropdown(_adapters(), value="", label=f"Adapter {label}", allow_custom_value=True)
        temp = gr.Slider(0, 2, value=0.0, step=0.05, label=f"Temperature {label}", info="0 = greedy")
    return model, adapter, temp


def build_rate_tab(tab: gr.Tab | None = None) -> None:
    with gr.Accordion("Make pairs: two answers for every prompt", open=False):
        with gr.Row():
            lines = gr.Textbox(label="Prompts, one a line", lines=4, elem_id="rate-lines")
            source = gr.Dropdown(_prompt_sources(), value="", label="…or the prompts of a dataset")
        with gr.Row():
            side_a, side_b = _side("A", "a"), _side("B", "b")
        max_new = gr.Number(128, precision=0, label="Longest answer (tokens)", minimum=1)
        make = gr.Button("Generate pairs", variant="primary")
    with gr.Row():
        job = gr.Dropdown(
            _jobs(), value=(_jobs() or [None])[0], label="Pair job", elem_id="rate-job", scale=3
        )
        overlap = gr.Number(
            1, precision=0, minimum=1, label="People per pair", info="overlap", elem_id="rate-overlap"
        )
        mode = gr.Radio(["A or B", "Thumbs up / down"], value="A or B", label="Mode", info="thumbs: KTO data")
        name = gr.Textbox(
            label="Your name", info="used when the studio runs without logins", elem_id="rate-name"
        )
    with gr.Row():
        status = gr.Markdown(job_status((_jobs() or [None])[0]), elem_id="rate-job-status")
        refresh = gr.Button("Refresh", size="sm")
        stop = gr.Button("Stop", size="sm")
        resume = gr.Button("Resume", size="sm")
    start = gr.Button("Next pair", variant="primary", elem_id="rate-next")
    progress = gr.Markdown(elem_id="rate-progress")
    prompt = gr.Markdown(elem_id="rate-prompt")
    with gr.Row():
        first = gr.Textbox(label="Answer 1", lines=6, interactive=False, elem_id="rate-answer-1")
        second = gr.Textbox(label="Answer 2", lines=6, interactive=False, elem_id="rate-answer-2")
    edited = gr.Textbox(
        label="Write a better answer (optional)",
        info="it becomes the chosen answer of your vote",
        lines=2,
        elem_id="rate-edit",
    )
    with gr.Row():
        copy_first = gr.Button("Edit answer 1", size="sm", elem_id="rate-edit-1")
        copy_second = gr.Button("Edit answer 2", size="sm", elem_id="rate-edit-2")
    with gr.Row():
        buttons = {
            "first": gr.Button("1 is better / good  [1]", elem_id="rate-first"),
            "second": gr.Button("2 is better / bad  [2]", elem_id="rate-second"),
            "tie": gr.Button("Tie  [3]", elem_id="rate-tie"),
            "both_bad": gr.Button("Both bad  [4]", elem_id="rate-both-bad"),
        }
        skip = gr.Button("Skip  [S]", elem_id="rate-skip")
        undo = gr.Button("Undo  [U]", elem_id="rate-undo")
    screen = [progress, prompt, first, second, edited]
    queue_inputs = [job, overlap, mode, name]
    make.click(on_generate, [lines, source, *side_a, *side_b, max_new], [job, status])
    gr.on([refresh.click, job.change], job_status, [job], [status])
    refresh.click(_refreshed, [job], [job])
    if tab is not None:  # what the workspace holds now: new adapters, datasets and pair jobs
        tab.select(_on_show, [job], [side_a[1], side_b[1], source, job])
    stop.click(on_stop, [job], [status])
    resume.click(on_resume, [job], [status])
    start.click(on_next, queue_inputs, screen)
    for pick, button in buttons.items():
        button.click(_voter(pick), [*queue_inputs, edited], screen, concurrency_limit=None)
    copy_first.click(lambda text: text, [first], [edited])
    copy_second.click(lambda text: text, [second], [edited])
    skip.click(on_skip, queue_inputs, screen)
    undo.click(on_undo, queue_inputs, screen)
