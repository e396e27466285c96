"""Chat tab: the base model and tuned adapters side by side, one prompt for both panes, blind
A/B votes and edited answers stored as preference pairs.

Column A and column B are the two models chosen at the top. Each keeps its own conversation.
In blind mode each turn flips a coin for which column the LEFT pane shows, and the names stay
hidden until the vote. After a vote both columns continue from the chosen answer, so the next
pair answers one shared conversation.
"""

from __future__ import annotations

import random
import threading
import uuid

import gradio as gr

from studio import models
from studio.chat import engine as chat
from studio.prefs import store as prefs
from studio.train import runs
from studio.ui import common

BASE_CHOICE = ("base model (no adapter)", "base")


def _state() -> dict:
    return {
        "hist": {"A": [], "B": []},
        "screen": {"left": [], "right": []},
        "swap": False,
        "last": None,
        "session": uuid.uuid4().hex[:12],
    }


def adapter_choices() -> list[tuple[str, str]]:
    return [BASE_CHOICE] + [(chat.adapter_label(p), str(p)) for p in chat.list_adapters()]


def _settings(system, temperature, top_p, max_new, rep, seed) -> chat.GenSettings:
    return chat.GenSettings(
        temperature=float(temperature),
        top_p=float(top_p),
        max_new_tokens=int(max_new),
        repetition_penalty=float(rep),
        seed=int(seed),
        system_prompt=system or "",
    ).check()


def _engine_for(
    base: str, side_a: str, side_b: str, progress=None
) -> tuple[chat.ChatEngine, str | None, str | None]:
    engine = chat.get_engine(base or "default", progress)
    names = [None if side in (None, "", "base") else engine.add_adapter(side) for side in (side_a, side_b)]
    return engine, names[0], names[1]


def memory_text() -> str:
    mem = chat.memory()
    accel = f" · accelerator {mem['accelerator_mb']:.0f} MB" if mem.get("accelerator_mb") is not None else ""
    engine = chat.get_engine()
    loaded = (
        f"loaded: {engine.spec} + {len(engine.adapters)} adapter(s)" if engine.loaded else "no model loaded"
    )
    return f"RAM {mem['rss_mb']:.0f} MB{accel} · {loaded}"


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
        engine, a, b = _engine_for(base, side_a, side_b, lambda f, m: progress(f, desc=m))
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    served = [engine.serving(n) if n else "base" for n in (a, b)]
    gr.Info(f"Ready: A = {served[0]}, B = {served[1]}")
    return memory_text()


def on_unload():
    chat.get_engine().unload()
    return memory_text()


def _labels(swap: bool, blind: bool, side_a: str, side_b: str) -> tuple[str, str]:
    """Pane titles: hidden in blind mode until the vote, else the model each pane shows."""
    if blind:
        return "Left (hidden until you vote)", "Right (hidden until you vote)"
    left, right = (side_b, side_a) if swap else (side_a, side_b)
    return f"Left: {_choice_label(left)}", f"Right: {_choice_label(right)}"


def _speed(left: chat.Reply, right: chat.Reply) -> str:
    def one(reply: chat.Reply) -> str:
        done = f" ({reply.finish})" if reply.finish else ""
        return f"{reply.tokens} tokens, {reply.tokens_per_s:.1f} tok/s{done}"

    return f"left: {one(left)} · right: {one(right)}"


def on_send(prompt, state, base, side_a, side_b, blind, system, temperature, top_p, max_new, rep, seed):
    """Stream both answers into the two panes (a generator: Stop cancels it, which stops decoding)."""
    if not (prompt or "").strip():
        gr.Warning("Type a message first.")
        yield gr.update(), gr.update(), state, gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
        return
    try:
        settings = _settings(system, temperature, top_p, max_new, rep, seed)
        engine, a, b = _engine_for(base, side_a, side_b)
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    state = {**state, "swap": bool(blind) and random.random() < 0.5, "last": None}
    titles = _labels(state["swap"], bool(blind), side_a, side_b)
    user = {"role": "user", "content": prompt}
    prompts = {side: [*state["hist"][side], user] for side in "AB"}
    stop = threading.Event()
    cleared = ""  # the prompt box empties once; what the user types meanwhile is kept
    try:
        for reply_a, reply_b in engine.stream_pair(prompts["A"], prompts["B"], a, b, settings, stop):
            state = _with_answers(state, prompts, reply_a.text, reply_b.text, settings, base, side_a, side_b)
            left, right = (reply_b, reply_a) if state["swap"] else (reply_a, reply_b)
            yield (
                gr.update(value=state["screen_now"]["left"], label=titles[0]),
                gr.update(value=state["screen_now"]["right"], label=titles[1]),
                state,
                cleared if cleared is not None else gr.update(),
                "",
                _speed(left, right),
                training_warning(),
                memory_text(),
            )
            cleared = None
    finally:
        stop.set()  # the page closed or Stop was pressed: end decoding now


def _with_answers(state, prompts, text_a, text_b, settings, base, side_a, side_b) -> dict:
    answers = {"A": text_a, "B": text_b}
    left, right = ("B", "A") if state["swap"] else ("A", "B")
    screen_now = {
        pane: [*state["screen"][pane], prompts["A"][-1], {"role": "assistant", "content": answers[col]}]
        for pane, col in (("left", left), ("right", right))
    }
    last = {
        "prompts": prompts,
        "answers": answers,
        "settings": vars(settings).copy(),
        "models": {"A": (base, side_a), "B": (base, side_b)},
        "vote": None,  # (vote id, verdict) once voted
        "committed": False,
    }
    return {**state, "screen_now": screen_now, "last": last}


def on_turn_done(state):
    """Commit the finished (or stopped) turn into each column's own history, once."""
    last = (state or {}).get("last")
    if not last or last["committed"] or "screen_now" not in state:
        return state, gr.update()
    hist = {
        side: [*last["prompts"][side], {"role": "assistant", "content": last["answers"][side]}]
        for side in "AB"
    }
    done = {**state, "hist": hist, "screen": state["screen_now"], "last": {**last, "committed": True}}
    return done, "Both answers are in. Which one is better? Vote below, or write a better answer."


def on_vote(verdict, edited, state):
    """Store a vote (or an edit) for the last turn; an edit after a vote replaces that vote."""
    last = (state or {}).get("last")
    if not last:
        gr.Warning("Send a message first: there is nothing to vote on yet.")
        return state, gr.update(), gr.update()
    if not last["committed"]:
        gr.Warning("Wait for both answers to finish (or press Stop) before voting.")
        return state, gr.update(), gr.update()
    edited = (edited or "").strip() or None
    if last["vote"] and not edited:
        gr.Warning("This turn already has a vote. Send the next message, or write a better answer.")
        return state, gr.update(), gr.update()
    if last["vote"]:
        verdict = last["vote"][1]  # the edit polishes the answer already picked
    try:
        vote_id = _record(last, verdict, edited, state)
        if last["vote"]:
            prefs.delete_vote(last["vote"][0])  # after the new row is stored: a crash loses nothing
    except ValueError as exc:
        raise gr.Error(str(exc)) from None
    state = _adopt_winner(state, verdict, edited)
    state["last"] = {**last, "vote": (vote_id, verdict)}
    (_, side_a), (_, side_b) = last["models"]["A"], last["models"]["B"]
    left, right = (side_b, side_a) if state["swap"] else (side_a, side_b)
    what = "Your answer was saved as the chosen one. " if edited else ""
    reveal = (
        f"Vote #{vote_id} saved ({verdict.replace('_', ' ')}). {what}"
        f"Left was **{_choice_label(left)}**, right was **{_choice_label(right)}**."
    )
    gr.Info(f"Vote #{vote_id} saved")
    return state, reveal, ""


def _record(last: dict, verdict: str, edited: str | None, state: dict) -> int:
    (base_a, adapter_a), (base_b, adapter_b) = last["models"]["A"], last["models"]["B"]
    system = last["settings"].get("system_prompt") or ""
    messages = ([{"role": "system", "content": system}] if system else []) + last["prompts"]["A"]
    return prefs.record_vote(
        messages,
        last["answers"]["A"],
        last["answers"]["B"],
        verdict,
        model_left=base_a,
        adapter_left=_adapter_name(adapter_a),
        model_right=base_b,
        adapter_right=_adapter_name(adapter_b),
        shown_left="right" if state["swap"] else "left",
        edited=edited,
        settings=last["settings"],
        session_id=state["session"],
    )


def on_save_edit(edited, state):
    if not (edited or "").strip():
        gr.Warning("Write your answer first.")
        return state, gr.update(), gr.update()
    return on_vote("both_bad", edited, state)


def _adapter_name(side: str | None) -> str:
    return "" if side in (None, "", "base") else str(side)


def _adopt_winner(state: dict, verdict: str, edited: str | None) -> dict:
    """Both columns continue from the chosen answer (the edit, or the winner's text)."""
    last = state["last"]
    columns = {"left": "B" if state["swap"] else "A", "right": "A" if state["swap"] else "B"}
    chosen = edited or (last["answers"][columns[verdict]] if verdict in columns else None)
    if chosen is None:
        return dict(state)
    hist = {
        side: [*h[:-1], {"role": "assistant", "content": chosen}] if h else h
        for side, h in state["hist"].items()
    }
    return {**state, "hist": hist}


def on_clear():
    return [], [], _state(), "", ""


def on_regenerate(state, seed):
    """Drop the last turn from both histories and put its prompt back, with the next seed."""
    last = (state or {}).get("last")
    if not last or not last["committed"]:
        raise gr.Error("Nothing to regenerate yet: send a message and let it finish first.")
    prompt = last["prompts"]["A"][-1]["content"]
    hist = {side: h[:-2] for side, h in state["hist"].items()}
    screen = {pane: s[:-2] for pane, s in state["screen"].items()}
    new = {**state, "hist": hist, "screen": screen, "last": None}
    return new, screen["left"], screen["right"], prompt, int(seed or 0) + 1


def _choice_label(value: str) -> str:
    return dict((v, k) for k, v in adapter_choices()).get(value, value or "base")


def build_chat_tab() -> None:
    state = gr.State(_state())
    warning = gr.Markdown(training_warning)  # a callable: re-read on every page load
    with gr.Row():
        base = gr.Dropdown(
            models.local_specs(),
            value="default",
            allow_custom_value=True,
            label="Base model",
            info="Models on this machine; or type a local folder or any Hub id (search in the Models tab)",
            scale=2,
            elem_id="chat-base",
        )
        side_a = gr.Dropdown(adapter_choices(), value="base", label="Model A", scale=3, elem_id="chat-a")
        side_b = gr.Dropdown(adapter_choices(), value="base", label="Model B", scale=3, elem_id="chat-b")
        load_btn = gr.Button("Load", scale=1)
    with gr.Row():
        mem = gr.Markdown(memory_text, elem_id="chat-memory")
        refresh_btn = gr.Button("Refresh adapters", size="sm")
        find_model = gr.Button("Search the Hub for a model…", size="sm")
        unload_btn = gr.Button("Unload and free memory", size="sm")
    blind = gr.Checkbox(True, label="Blind A/B: shuffle the sides each turn and hide the names until I vote")
    with gr.Accordion("System prompt and generation settings (both sides)", open=False):
        system = gr.Textbox("", label="System prompt", lines=2, elem_id="chat-system")
        with gr.Row():
            temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p")
            max_new = gr.Slider(8, 1024, value=192, step=8, label="Max new tokens", elem_id="chat-max-new")
            rep = gr.Slider(1.0, 2.0, value=1.1, step=0.05, label="Repetition penalty")
            seed = gr.Number(0, precision=0, label="Seed")
    with gr.Row():
        left = gr.Chatbot(label="Left", height=380, elem_id="chat-left")
        right = gr.Chatbot(label="Right", height=380, elem_id="chat-right")
    speed = gr.Markdown(elem_id="chat-speed")
    prompt = gr.Textbox(
        label="Message (sent to both sides)", placeholder="Ask something…", lines=2, elem_id="chat-prompt"
    )
    with gr.Row():
        send_btn = gr.Button("Send", variant="primary")
        stop_btn = gr.Button("Stop", variant="stop")
        regen_btn = gr.Button("Regenerate")
        clear_btn = gr.Button("Clear")
    with gr.Row():
        votes = {
            "left": gr.Button("Left is better"),
            "right": gr.Button("Right is better"),
            "tie": gr.Button("Tie"),
            "both_bad": gr.Button("Both are bad"),
        }
    edited = gr.Textbox(
        label="Edit: write a better answer (it becomes the chosen one)", lines=3, elem_id="chat-edit"
    )
    save_edit = gr.Button("Save my answer as the chosen one")
    reveal = gr.Markdown(elem_id="chat-reveal")

    settings = [system, temperature, top_p, max_new, rep, seed]
    send_inputs = [prompt, state, base, side_a, side_b, blind, *settings]
    send_outputs = [left, right, state, prompt, reveal, speed, warning, mem]
    sending = send_btn.click(on_send, send_inputs, send_outputs, show_progress="minimal")
    sending.then(on_turn_done, [state], [state, reveal])
    submitting = prompt.submit(on_send, send_inputs, send_outputs, show_progress="minimal")
    submitting.then(on_turn_done, [state], [state, reveal])
    regenerating = regen_btn.click(on_regenerate, [state, seed], [state, left, right, prompt, seed])
    resending = regenerating.success(on_send, send_inputs, send_outputs, show_progress="minimal")
    resending.then(on_turn_done, [state], [state, reveal])
    stop_btn.click(on_turn_done, [state], [state, reveal], cancels=[sending, submitting, resending])
    clear_btn.click(on_clear, None, [left, right, state, reveal, speed])
    base.focus(lambda: gr.update(choices=models.local_specs()), None, base)
    find_model.click(None, js=common.OPEN_MODELS_TAB)
    load_btn.click(on_load, [base, side_a, side_b], [mem])
    unload_btn.click(on_unload, None, [mem])
    refresh_btn.click(
        lambda: (gr.update(choices=adapter_choices()),) * 2 + (training_warning(),),
        None,
        [side_a, side_b, warning],
    )
    for verdict, button in votes.items():
        button.click(lambda s, v=verdict: on_vote(v, None, s), [state], [state, reveal, edited])
    save_edit.click(on_save_edit, [edited, state], [state, reveal, edited])
