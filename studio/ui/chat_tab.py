"""Chat tab: the base model and tuned adapters side by side, one prompt for both panes, blind
A/B votes and edited answers stored as preference pairs.

Model A and model B are the two models chosen at the top. The turn itself (columns, blind shuffle,
vote, edit, regenerate, adopting the winner) is studio.chat.session; this tab keeps only the
session id in gr.State and turns widget values into session calls and the session into panes.
The left pane shows the answer the session shows first.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from studio import models, rundir, workspace
from studio.chat import adapters as chat_adapters
from studio.chat import engine as chat
from studio.chat import session as turns
from studio.train import runs
from studio.ui import common

BASE_CHOICE = ("base model (no adapter)", turns.BASE_SIDE)
VOTE_BUTTONS = {  # elem_id -> the user's pick, in screen terms
    "chat-vote-left": "first",
    "chat-vote-right": "second",
    "chat-vote-tie": "tie",
    "chat-vote-both-bad": "both_bad",
}


def adapter_choices() -> list[tuple[str, str]]:
    return [BASE_CHOICE] + [(chat_adapters.adapter_title(p), str(p)) for p in chat.list_adapters()]


def sides_text(side_a: str | None, side_b: str | None) -> str:
    """Which model each side is, and for an adapter the dataset it learned from."""

    def one(value: str | None) -> str:
        if not value or value == turns.BASE_SIDE:
            return BASE_CHOICE[0]
        data = chat_adapters.learned_from(value)
        return _choice_label(value) + (f", learned from *{data}*" if data else "")

    return f"**Model A**: {one(side_a)} · **Model B**: {one(side_b)}"


def _show(pane: list[dict]) -> list[dict]:
    """A pane's messages for the Chatbot: the user's saved answer is marked as edited."""
    return [
        {"role": m["role"], "content": f"**(edited)** {m['content']}"} if m.get("edited") else m for m in pane
    ]


def _settings(system, temperature, top_p, max_new, rep, seed) -> chat.GenSettings:
    return chat.GenSettings(
        temperature=float(temperature),
        top_p=float(top_p),
        max_new_tokens=int(max_new),
        repetition_penalty=float(rep),
        seed=int(seed),
        system_prompt=system or "",
    ).check()


def memory_text() -> str:
    mem = chat.memory()
    accel = f" · accelerator {mem['accelerator_mb']:.0f} MB" if mem.get("accelerator_mb") is not None else ""
    engine = chat.get_engine()
    loaded = (
        f"loaded: {engine.spec} + {len(engine.adapters)} adapter(s)" if engine.loaded else "no model loaded"
    )
    return f"RAM {mem['rss_mb']:.0f} MB{accel} · {loaded}"


def paths_text(engine: chat.ChatEngine, names: tuple[str | None, str | None]) -> str:
    """Which engine answers for each side (llama.cpp is the fast one on a CPU), and why."""
    choices = [engine.path(name) for name in names]
    if choices[0] == choices[1]:
        return f"Both sides answer with **{choices[0].path}** ({choices[0].reason})"
    return " · ".join(
        f"Model {column} answers with **{c.path}** ({c.reason})"
        for column, c in zip("AB", choices, strict=True)
    )


def training_warning() -> str:
    active = runs.active_run()
    if active is None:
        return ""
    return (
        f"⚠ Run **{active.run_id}** is training on this machine: chat answers will be several times "
        "slower until it ends (both share the CPU). Stop it in the Runs tab if you need speed now."
    )


def on_load(base, side_a, side_b, progress=gr.Progress()):  # noqa: B008 - Gradio injects it
    try:
        engine, names, _ = turns.open_sides(base, side_a, side_b, lambda f, m: progress(f, desc=m))
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    served = [f"{engine.serving(n) if n else 'base'} on {engine.path(n).path}" for n in names]
    gr.Info(f"Ready: A = {served[0]}, B = {served[1]}")
    return memory_text(), paths_text(engine, names)


def on_unload():
    chat.get_engine().unload()
    return memory_text(), ""


def _choice_label(value: str) -> str:
    return dict((v, k) for k, v in adapter_choices()).get(value or turns.BASE_SIDE, value)


def _titles(turn: turns.Turn, blind: bool) -> tuple[str, str]:
    """Pane titles: hidden in blind mode until the vote, else the model each pane shows."""
    if blind:
        return "Left (hidden until you vote)", "Right (hidden until you vote)"
    first, second = (turn.sides[column].adapter for column in turn.order)
    return f"Left: {_choice_label(first)}", f"Right: {_choice_label(second)}"


FINISH_WORDS = {"eos": "finished", "length": "stopped at the token limit"}


def _speed(first: chat.Reply, second: chat.Reply) -> str:
    def one(reply: chat.Reply) -> str:
        done = f", {FINISH_WORDS.get(reply.finish, reply.finish)}" if reply.finish else ""
        return f"{reply.tokens} tokens, {reply.tokens_per_s:.1f} tok/s{done}"

    return f"left: {one(first)} · right: {one(second)}"


def on_send(prompt, session_id, base, side_a, side_b, blind, system, temperature, top_p, max_new, rep, seed):
    """Stream both answers into the two panes (a generator: Stop cancels it, which stops decoding)."""
    session_id = session_id or turns.new_id()
    session = turns.get(session_id)
    stop = threading.Event()
    try:
        turns.require_prompt(prompt)  # before loading anything
        settings = _settings(system, temperature, top_p, max_new, rep, seed)
        engine, names, sides = turns.open_sides(base, side_a, side_b)
        replies = session.send(prompt, engine, names, sides, settings, bool(blind), stop)
    except turns.TurnError as exc:
        gr.Warning(str(exc))
        yield (gr.update(), gr.update(), session_id, *(gr.update(),) * 6)  # nothing changes
        return
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    turn = session.last
    titles = _titles(turn, bool(blind))
    paths = paths_text(engine, names)
    cleared = ""  # the prompt box empties once; what the user types meanwhile is kept
    try:
        for reply_a, reply_b in replies:
            first, second = session.panes()
            by_column = {"A": reply_a, "B": reply_b}
            yield (
                gr.update(value=_show(first), label=titles[0]),
                gr.update(value=_show(second), label=titles[1]),
                session_id,
                cleared if cleared is not None else gr.update(),
                "",
                _speed(*(by_column[column] for column in turn.order)),
                training_warning(),
                memory_text(),
                paths,
            )
            cleared = None
    finally:
        stop.set()  # the page closed or Stop was pressed: end decoding now
        replies.close()


def on_turn_done(session_id):
    """Both answers are complete (or stopped): the turn can be voted on; Stop hides again."""
    hidden = gr.update(visible=False)
    if not session_id or not turns.get(session_id).finish():
        return gr.update(), hidden
    return "Both answers are in. Which one is better? Vote below, or write a better answer.", hidden


def _reveal(turn: turns.Turn, edited: bool) -> str:
    first, second = (_choice_label(turn.sides[column].adapter) for column in turn.order)
    what = "Your answer was saved as the chosen one. " if edited else ""
    picked = {"first": "left", "second": "right"}.get(turn.pick, turn.pick.replace("_", " "))
    return f"Vote #{turn.vote_id} saved ({picked}). {what}Left was **{first}**, right was **{second}**."


def on_vote(session_id, evt: gr.EventData):
    """One handler for the four vote buttons: which one was clicked is the event's target."""
    return _vote(session_id, lambda session: session.vote(VOTE_BUTTONS[evt.target.elem_id]), edited=False)


def on_save_edit(edited, session_id):
    return _vote(session_id, lambda session: session.save_edit(edited), edited=True)


def _vote(session_id, action, edited: bool):
    try:
        turn = action(turns.get(session_id or turns.new_id()))
    except turns.TurnError as exc:
        gr.Warning(str(exc))
        return gr.update(), gr.update(), gr.update(), gr.update()
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    gr.Info(f"Vote #{turn.vote_id} saved")
    titles = _titles(turn, blind=False)  # the vote reveals the names
    # the edit box starts from the chosen answer, so a better answer is a small change to it
    start = "" if edited else turn.answers.get(turn.verdict or "", "")
    first, second = turns.get(session_id).panes()  # an edited answer now closes the turn
    return (
        _reveal(turn, edited),
        start,
        gr.update(value=_show(first), label=titles[0]),
        gr.update(value=_show(second), label=titles[1]),
    )


def on_clear(session_id):
    if session_id:
        turns.get(session_id).clear()
    return [], [], "", ""


def on_regenerate(session_id, seed):
    """Drop the last turn from both conversations and put its prompt back, with the next seed."""
    try:
        session = turns.get(session_id or turns.new_id())
        prompt = session.regenerate()
    except turns.TurnError as exc:
        raise gr.Error(str(exc)) from None
    first, second = session.panes()
    return _show(first), _show(second), prompt, int(seed or 0) + 1


def on_show():
    """The tab is shown: list the adapters trained and models saved since the page was built."""
    adapters = adapter_choices()
    return (
        gr.update(choices=adapters),
        gr.update(choices=adapters),
        gr.update(choices=models.local_specs()),
        training_warning(),
    )


def open_run(run_id: str | None, session_id: str | None):
    """A finished run's "Chat with it": its base model against its adapter, named side by side
    (blind off), the conversation cleared and the run's probe questions offered."""
    run = workspace.run_path(run_id) if run_id else None
    if run is None or not (run / "adapter" / "adapter_config.json").is_file():
        gr.Warning("This run has no finished adapter to chat with yet.")
        return (gr.update(),) * 10
    if session_id:
        turns.get(session_id).clear()
    adapter = str(run / "adapter")
    questions = list(rundir.read_probes(run).get("prompts") or [])
    choices = adapter_choices()
    return (
        gr.update(value=str(rundir.read_recipe(run).get("model") or "default")),
        gr.update(choices=choices, value=turns.BASE_SIDE),
        gr.update(choices=choices, value=adapter),
        False,
        gr.update(choices=questions, value=questions[0] if questions else None, visible=bool(questions)),
        questions[0] if questions else "",
        gr.update(value=[], label=f"Left: {BASE_CHOICE[0]}"),
        gr.update(value=[], label=f"Right: {chat_adapters.adapter_title(Path(adapter))}"),
        sides_text(turns.BASE_SIDE, adapter),
        "",
    )


@dataclass
class ChatWiring:
    """What another tab needs to open a run here: `open_run`'s outputs, then `on_load`'s."""

    open_inputs: list
    open_outputs: list
    load_inputs: list
    load_outputs: list


def _generation_settings() -> list:
    """System prompt, temperature, top-p, max new tokens, repetition penalty, seed (in that order)."""
    with gr.Accordion("System prompt and generation settings (both sides)", open=False):
        system = gr.Textbox("", label="System prompt", lines=2, elem_id="chat-system")
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p")
            max_new = gr.Slider(8, 1024, value=192, step=8, label="Max new tokens", elem_id="chat-max-new")
            rep = gr.Slider(1.0, 2.0, value=1.1, step=0.05, label="Repetition penalty")
            seed = gr.Number(0, precision=0, label="Seed")
    return [system, temperature, top_p, max_new, rep, seed]


def _vote_widgets():
    """The four vote buttons, the edit box and its save button."""
    with gr.Row():
        vote_btns = [
            gr.Button("Left is better", elem_id="chat-vote-left"),
            gr.Button("Right is better", elem_id="chat-vote-right"),
            gr.Button("Tie", elem_id="chat-vote-tie"),
            gr.Button("Both are bad", elem_id="chat-vote-both-bad"),
        ]
    edited = gr.Textbox(
        label="Edit: write a better answer (it becomes the chosen one)", lines=3, elem_id="chat-edit"
    )
    return vote_btns, edited, gr.Button("Save my answer as the chosen one")


def build_chat_tab(tab: gr.Tab | None = None) -> ChatWiring:
    """`tab`: the Chat tab, so that showing it lists the adapters trained meanwhile. Returns the
    widgets the Runs tab's "Chat with it" fills (app.py wires it)."""
    # only the session's id lives in the page; the turns live in studio.chat.session's registry
    session_id = gr.State(turns.new_id, delete_callback=turns.forget)
    warning = gr.Markdown(training_warning)  # a callable: re-read on every page load
    with gr.Row():
        base = common.model_picker(
            "Base model",
            "chat-base",
            info="Models on this machine; or type a local folder or any Hub id (search in the Models tab)",
            scale=2,
        )
        side_a = gr.Dropdown(adapter_choices(), value="base", label="Model A", scale=3, elem_id="chat-a")
        side_b = gr.Dropdown(adapter_choices(), value="base", label="Model B", scale=3, elem_id="chat-b")
        load_btn = gr.Button("Load", scale=1)
    sides = gr.Markdown(sides_text(turns.BASE_SIDE, turns.BASE_SIDE), elem_id="chat-sides")
    with gr.Row():
        mem = gr.Markdown(memory_text, elem_id="chat-memory")
        common.find_model_button()
        unload_btn = gr.Button("Unload and free memory", size="sm")
    paths = gr.Markdown(elem_id="chat-paths")
    blind = gr.Checkbox(True, label="Blind A/B: shuffle the sides each turn and hide the names until I vote")
    settings = _generation_settings()
    seed = settings[-1]
    with gr.Row():
        left = gr.Chatbot(label="Left", height=380, elem_id="chat-left")
        right = gr.Chatbot(label="Right", height=380, elem_id="chat-right")
    speed = gr.Markdown(elem_id="chat-speed")
    questions = gr.Dropdown(
        [],
        label="This run's probe questions (pick one to put it in the message box)",
        visible=False,
        elem_id="chat-probes",
    )
    prompt = gr.Textbox(
        label="Message (sent to both sides)", placeholder="Ask something…", lines=2, elem_id="chat-prompt"
    )
    with gr.Row():
        send_btn = gr.Button("Send", variant="primary")
        stop_btn = gr.Button("Stop", variant="stop", visible=False)  # shown only while answering
        regen_btn = gr.Button("Regenerate")
        clear_btn = gr.Button("Clear")
    vote_btns, edited, save_edit = _vote_widgets()
    reveal = gr.Markdown(elem_id="chat-reveal")

    send_inputs = [prompt, session_id, base, side_a, side_b, blind, *settings]
    send_outputs = [left, right, session_id, prompt, reveal, speed, warning, mem, paths]
    show_stop = dict(fn=lambda: gr.update(visible=True), inputs=None, outputs=[stop_btn], queue=False)
    started = gr.on([send_btn.click, prompt.submit], **show_stop, show_progress="hidden")
    sending = started.then(on_send, send_inputs, send_outputs, show_progress="minimal")
    sending.then(on_turn_done, [session_id], [reveal, stop_btn])
    regenerating = regen_btn.click(on_regenerate, [session_id, seed], [left, right, prompt, seed])
    restarted = regenerating.success(**show_stop, show_progress="hidden")
    resending = restarted.then(on_send, send_inputs, send_outputs, show_progress="minimal")
    resending.then(on_turn_done, [session_id], [reveal, stop_btn])
    stop_btn.click(on_turn_done, [session_id], [reveal, stop_btn], cancels=[sending, resending])
    questions.input(lambda q: q or gr.update(), [questions], [prompt])
    gr.on([side_a.change, side_b.change], sides_text, [side_a, side_b], [sides], show_progress="hidden")
    clear_btn.click(on_clear, [session_id], [left, right, reveal, speed])
    load_btn.click(on_load, [base, side_a, side_b], [mem, paths])
    unload_btn.click(on_unload, None, [mem, paths])
    if tab is not None:
        tab.select(on_show, None, [side_a, side_b, base, warning], show_progress="hidden")
    voted = [reveal, edited, left, right]
    gr.on([button.click for button in vote_btns], on_vote, [session_id], voted)
    save_edit.click(on_save_edit, [edited, session_id], voted)
    return ChatWiring(
        open_inputs=[session_id],
        open_outputs=[base, side_a, side_b, blind, questions, prompt, left, right, sides, reveal],
        load_inputs=[base, side_a, side_b],
        load_outputs=[mem, paths],
    )
