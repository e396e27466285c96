"""What every benchmark shares: the machine's description, interleaved rounds, medians, the table.

Every number the benchmarks report is a RATIO of two contenders measured in the same run: each
contender warmed up once (untimed), then one round of each after the other in alternating order,
several rounds, medians with their spread (lowest-highest round), and the machine's load average
beside every row (a warning when it is above the core count): on a shared CPU an absolute time
says more about the neighbours than about the code. Knows nothing about chat, training or data.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "RESULTS.md"


@dataclass
class Row:
    """One line of the results table: a measure, both contenders' medians, the ratio, the target."""

    bench: str
    measure: str
    ours: float
    theirs: float
    unit: str
    target: float | None = None  # the ratio we aim for, or None for a plain report
    higher_is_better: bool = True
    note: str = ""
    spread: str = ""  # "lowest-highest" of each side's rounds, e.g. "21.0-24.7 / 18.2-21.9"
    load: str = ""  # 1-minute load average when the row's rounds started and ended

    @property
    def ratio(self) -> float:
        if self.higher_is_better:
            return self.ours / self.theirs if self.theirs else float("inf")
        return self.theirs / self.ours if self.ours else float("inf")

    @property
    def verdict(self) -> str:
        if self.target is None:
            return "-"
        return "met" if self.ratio >= self.target else "MISSED"


@dataclass
class Section:
    """A benchmark's rows plus free text (what limits it, what the trainer does)."""

    title: str
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def log(message: str) -> None:
    """Progress on stderr, so a long run on a busy machine shows where it is."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def offline_env() -> None:
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(key, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def bench_home() -> Path:
    """A STUDIO_HOME for the benchmarks (bench/.home), set in the environment, model converted once."""
    home = Path(os.environ.get("STUDIO_BENCH_HOME", ROOT / "bench" / ".home"))
    home.mkdir(parents=True, exist_ok=True)
    os.environ["STUDIO_HOME"] = str(home)
    return home


def machine() -> dict:
    """CPU model, cores, RAM, torch version, bf16 support, load at the time of the run."""
    import psutil
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported() if hasattr(torch.ops, "mkldnn") else False
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "torch": torch.__version__,
        "bf16_cpu": bool(bf16),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
        "load_avg": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }


def load_now() -> float:
    """The 1-minute load average (how many processes wanted a core, on average)."""
    return os.getloadavg()[0]


def load_note(start: float, end: float | None = None) -> str:
    """'3.1-4.2' (start-end of a measurement), with a warning when above the number of cores."""
    end = load_now() if end is None else end
    text = f"{start:.1f}-{end:.1f}"
    if max(start, end) > (os.cpu_count() or 1):
        text += f" (above {os.cpu_count()} cores: noisy)"
    return text


@dataclass
class Samples:
    """Every round's value of every measure, per contender, and the load while they ran."""

    values: dict[str, dict[str, list[float]]]
    load: str

    def median(self, name: str, key: str) -> float:
        return statistics.median(self.values[name][key])

    def spread(self, name: str, key: str) -> str:
        v = self.values[name][key]
        return f"{min(v):.3g}-{max(v):.3g}"

    def medians(self) -> dict[str, dict[str, float]]:
        return {n: {k: statistics.median(v) for k, v in m.items()} for n, m in self.values.items()}

    def row(
        self,
        bench: str,
        measure: str,
        ours: str,
        theirs: str,
        key: str,
        unit: str,
        target: float | None = None,
        higher_is_better: bool = True,
    ) -> Row:
        """A table row comparing two contenders on one measure: medians, spread and load."""
        return Row(
            bench,
            measure,
            self.median(ours, key),
            self.median(theirs, key),
            unit,
            target,
            higher_is_better,
            spread=f"{self.spread(ours, key)} / {self.spread(theirs, key)}",
            load=self.load,
        )


def interleave_samples(
    contenders: dict[str, Callable[[], dict]], rounds: int, warmup: bool = True
) -> Samples:
    """Warm each contender up once (untimed), then run each once per round, alternating the order.

    A contender returns a dict of measures ({"tok_s": ..., "ttft_s": ...}). The warm-up pays every
    first-call cost (lazy kernels, allocator growth, caches) so that no side's timing carries it.
    """
    names = list(contenders)
    if warmup:
        for name in names:
            contenders[name]()
    start = load_now()
    samples: dict[str, dict[str, list[float]]] = {n: {} for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]  # neither side always runs on a warmer cache
        for name in order:
            for key, value in contenders[name]().items():
                samples[name].setdefault(key, []).append(float(value))
    return Samples(samples, load_note(start))


def interleave(
    contenders: dict[str, Callable[[], dict]], rounds: int, warmup: bool = False
) -> dict[str, dict[str, float]]:
    """The median of every measure of `interleave_samples` (no warm-up unless asked)."""
    return interleave_samples(contenders, rounds, warmup).medians()


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def table(sections: list[Section]) -> str:
    lines = [
        "| bench | measure | studio | baseline | unit | ratio | target | verdict | spread (studio / baseline) | load |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for section in sections:
        for r in section.rows:
            target = "-" if r.target is None else f">= {r.target:g}x"
            lines.append(
                f"| {r.bench} | {r.measure} | {r.ours:.4g} | {r.theirs:.4g} | {r.unit} | "
                f"{r.ratio:.2f}x | {target} | {r.verdict} | {r.spread or '-'} | {r.load or '-'} |"
            )
    return "\n".join(lines)


def report(sections: list[Section], mode: str, title: str = "CPU run") -> str:
    """The Markdown block for one run: machine, table, each section's notes."""
    info = machine()
    cores = os.cpu_count() or 1
    warning = []
    if os.getloadavg()[0] > cores:
        warning = [
            f"**Warning: load average {os.getloadavg()[0]:.1f} is above the {cores} cores: other "
            "processes shared the CPU, so only the interleaved ratios mean anything.**",
            "",
        ]
    head = [
        f"## {title} ({mode}), {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "Machine: " + ", ".join(f"{k}={v}" for k, v in info.items()),
        "",
        *warning,
        "Ratios: studio / baseline for throughput, baseline / studio for times (higher is better).",
        "Each side warmed up first; medians of interleaved rounds; spread = lowest-highest round;",
        "load = 1-minute load average when the row's rounds started and ended.",
        "",
        table(sections),
        "",
    ]
    for section in sections:
        if section.notes:
            head += [f"### {section.title}", ""] + [f"- {n}" for n in section.notes] + [""]
    return "\n".join(head)


def append_results(text: str, path: Path = RESULTS) -> None:
    previous = path.read_text() if path.is_file() else "# Benchmark results\n\n"
    path.write_text(previous.rstrip() + "\n\n" + text.rstrip() + "\n")


def bench_parser(doc: str, prog: str | None = None) -> argparse.ArgumentParser:
    """The options every bench takes: --quick (CI-sized) and --no-write (leave RESULTS.md alone)."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CI-sized runs (fewer rows, steps, rounds)")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    return parser


def publish(sections: list[Section], quick: bool, title: str, write: bool) -> int:
    """Print the report of `sections` and append it to RESULTS.md unless told not to."""
    text = report(sections, "quick" if quick else "full", title)
    print(text)
    if write:
        append_results(text)
    return 0
