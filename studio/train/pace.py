"""How fast a run goes and how long it has left, in numbers and in plain words.

The trainer's callback keeps a `StepClock` and writes its pace into status.json (`step_seconds`,
`seconds_left`, `pace_at`); any reader (the Train tab, the Runs tab, `runs list`) turns that into
"about 3 min left" with `time_left`. The pace comes from the ends of the last steps only: the
first step after a start also pays for loading and warming up, which made the old estimate
(elapsed time / steps done) twice too long early in a run. `busy_note` says plainly when
something else on the machine slows training down.

Pure: no torch, no files, no UI; the clock and the load average are passed in.
"""

from __future__ import annotations

import time
from collections import deque

WINDOW = 20  # steps the pace is averaged over: recent enough to follow a change, long enough to be steady


class StepClock:
    """Seconds per optimizer step from the end times of the last WINDOW steps.

    The first step seen is only a starting mark, so loading and the warm-up step never count.

    >>> clock = StepClock()
    >>> for step, t in [(1, 30.0), (2, 31.0), (3, 32.5), (4, 33.5)]:
    ...     clock.step_ended(step, t)
    >>> clock.seconds_per_step()
    1.1666666666666667
    """

    def __init__(self, window: int = WINDOW) -> None:
        self._ends: deque[tuple[int, float]] = deque(maxlen=window + 1)

    def step_ended(self, step: int, now: float) -> None:
        if self._ends and step <= self._ends[-1][0]:
            self._ends.clear()  # a resume or a restart: measure afresh
        self._ends.append((step, now))

    def seconds_per_step(self) -> float | None:
        if len(self._ends) < 2:
            return None
        (first_step, first_t), (last_step, last_t) = self._ends[0], self._ends[-1]
        return (last_t - first_t) / (last_step - first_step)

    def status_fields(self, step: int, max_steps: int, now_wall: float | None = None) -> dict:
        """The pace as status.json keys; empty until two steps have ended."""
        pace = self.seconds_per_step()
        if pace is None or max_steps <= 0:
            return {}
        return {
            "step_seconds": round(pace, 4),
            "seconds_left": round(pace * max(0, max_steps - step), 1),
            "pace_at": round(now_wall if now_wall is not None else time.time(), 3),
        }


def time_left(status: dict, now_wall: float | None = None) -> float | None:
    """Seconds a running run has left, from the pace its trainer last wrote (None: not known yet)."""
    left, at = status.get("seconds_left"), status.get("pace_at")
    if (
        status.get("state") != "running"
        or not isinstance(left, int | float)
        or not isinstance(at, int | float)
    ):
        return None
    now_wall = time.time() if now_wall is None else now_wall
    return max(0.0, float(left) - max(0.0, now_wall - float(at)))


def duration_words(seconds: float) -> str:
    """A duration as people say it.

    >>> duration_words(40), duration_words(95), duration_words(250), duration_words(4000)
    ('under a minute', 'about 2 min', 'about 4 min', 'about 1 h 7 min')
    """
    if seconds < 60:
        return "under a minute"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"about {minutes} min"
    return f"about {minutes // 60} h {minutes % 60} min"


def progress_words(status: dict, now_wall: float | None = None) -> str:
    """ "step 12 of 40 · about 2 min left (1.3 s a step lately)" from a run's status.json."""
    step, total = int(status.get("step") or 0), int(status.get("max_steps") or 0)
    text = f"step {step} of {total}" if total > 0 else f"step {step}"
    left = time_left(status, now_wall)
    if left is not None:
        text += f" · {duration_words(left)} left ({status['step_seconds']:.2g} s a step lately)"
    elif status.get("state") == "running" and step < 2:
        text += " · loading the model and timing the first steps"
    return text


def busy_note(load: float, cores: int, training_here: int = 0, other_runs: tuple[str, ...] = ()) -> str:
    """A plain sentence when something else competes for this machine, else "".

    `load`: the 1-minute load average; `training_here`: how many processes of our own are meant
    to be busy (a training run keeps about every core busy on a CPU, so count `cores` for it).

    >>> busy_note(3.4, 2, training_here=2)
    'Something else (a chat, another program) is using the processor too (load 3.4 on 2 cores): training goes slower than it would alone.'
    >>> busy_note(1.1, 2, training_here=2)
    ''
    """
    notes = []
    if other_runs:
        names = ", ".join(other_runs)
        notes.append(f"Another run is training at the same time ({names}): each goes slower than alone.")
    if load - training_here >= max(1.0, 0.5 * cores):
        notes.append(
            f"Something else (a chat, another program) is using the processor too (load {load:.1f} on "
            f"{cores} cores): "
            "training goes slower than it would alone."
        )
    return " ".join(notes)
