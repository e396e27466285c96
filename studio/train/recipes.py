"""Recipes: the typed, validated description of one training run, loaded from YAML in recipes/.

A recipe is a small dataclass tree. Every field carries its help text once, in
`field(metadata={"help": ...})`, which both `python -m studio train --help` and the UI's tooltips
show. YAML is read with `yaml.safe_load` only and no field names code to import, so a recipe edited
in a browser cannot run anything. Unknown keys are errors that name the closest valid key.
Knows nothing about models, data, TRL or the UI; `studio.train.preflight` checks a recipe against
those before any weights load.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from studio.train import fieldlabels

METHODS = ("sft", "dpo", "simpo", "orpo", "kto")
AUTO = "auto"
AutoBool = bool | typing.Literal["auto"]  # true, false, or "auto": decided against the machine at run time
BACKENDS = ("transformers", "unsloth")
DEFAULT_BETA = {"sft": 0.1, "dpo": 0.1, "simpo": 2.0, "orpo": 0.1, "kto": 0.1}
ALL_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
_FLOAT_RE = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
_TOKEN_RE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")


def _f(default, help: str, choices: tuple | None = None, **kw):
    """A dataclass field with its help text (and allowed values) written once."""
    meta = {"help": help}
    if choices:
        meta["choices"] = choices
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class DataSection:
    chat_template: str | None = _f(
        None,
        "Chat template used to render conversations: empty keeps the model's own; 'chatml', 'llama3' "
        "or 'alpaca' replaces it (needed for base models that have none).",
        choices=(None, "chatml", "llama3", "alpaca"),
    )
    train_on: str = _f(
        "assistant",
        "Which tokens teach the model: 'assistant' (only the answers, the usual choice) or 'all' "
        "(prompts too).",
        choices=("assistant", "all"),
    )
    max_length: int = _f(512, "Longest example in tokens; longer ones are cut at the end.")
    max_rows: int | None = _f(None, "Use only the first N rows of the dataset (empty: all).")
    eval_split: float = _f(
        0.0, "Fraction of rows held out to measure eval loss (0 disables evaluation), e.g. 0.1."
    )


@dataclass
class LoraSection:
    enabled: bool = _f(
        True, "Train a LoRA adapter (true) or every weight of the model (false: full fine-tune)."
    )
    r: int = _f(16, "LoRA rank: size of the low-rank update. Higher learns more and uses more memory.")
    alpha: int = _f(32, "LoRA alpha: scale of the update (usually 2 x rank).")
    dropout: float = _f(0.05, "Dropout on the LoRA input during training.")
    targets: list[str] = _f(
        ALL_PROJECTIONS,
        "Layers that get an adapter: the attention (q,k,v,o) and MLP (gate,up,down) projections.",
    )
    use_rslora: bool = _f(
        False, "Rank-stabilized LoRA: scale by alpha/sqrt(r) instead of alpha/r (helps high ranks)."
    )
    use_dora: bool = _f(
        False, "DoRA: learn magnitude and direction separately (slower; merge it before chat)."
    )


@dataclass
class QuantizationSection:
    load_in_4bit: bool = _f(False, "QLoRA: load the frozen base in 4-bit (bitsandbytes) to save memory.")
    load_in_8bit: bool = _f(False, "Load the frozen base in 8-bit (bitsandbytes).")
    quant_type: str = _f("nf4", "4-bit number format: nf4 (QLoRA's) or fp4.", choices=("nf4", "fp4"))
    double_quant: bool = _f(True, "Quantize the quantization constants too (saves ~0.4 bit per weight).")


@dataclass
class PreferenceSection:
    beta: float = _f(
        0.1,
        "Preference strength: DPO/ORPO/KTO beta (0.1 typical); SimPO's reward scale (2.0 typical).",
    )
    simpo_gamma_beta_ratio: float = _f(
        0.5, "SimPO target margin as a fraction of beta (the margin given to TRL is ratio x beta)."
    )
    desirable_weight: float = _f(1.0, "KTO: weight of the loss on good (label true) examples.")
    undesirable_weight: float = _f(1.0, "KTO: weight of the loss on bad (label false) examples.")


@dataclass
class TrainingSection:
    epochs: float = _f(1.0, "Passes over the dataset (ignored when max_steps is set).")
    max_steps: int = _f(-1, "Stop after this many optimizer steps (-1: run the epochs).")
    batch_size: int = _f(4, "Examples per step on each device.")
    grad_accum: int = _f(
        1, "Steps whose gradients add up before one update (effective batch = batch x this)."
    )
    learning_rate: float = _f(2e-4, "Peak learning rate.")
    scheduler: str = _f(
        "cosine",
        "How the learning rate changes over the run.",
        choices=("cosine", "linear", "constant", "constant_with_warmup"),
    )
    warmup_ratio: float = _f(0.05, "Fraction of the steps spent ramping the learning rate up.")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Clip gradients to this norm.")
    neftune_alpha: float | None = _f(
        None, "NEFTune: noise added to embeddings during SFT (5 is typical; empty: off)."
    )
    bf16: AutoBool = _f("auto", "bfloat16 compute: 'auto' uses it where the hardware has it, else fp32.")
    gradient_checkpointing: AutoBool = _f(
        "auto", "Recompute activations to save memory (~40% slower); 'auto' turns it on when memory is tight."
    )
    group_by_length: bool = _f(
        True,
        "SFT: batch examples of similar length together, so less padding is computed (batches still "
        "come in random order; examples never see each other).",
    )
    packing: bool = _f(
        False,
        "SFT: fill each row of data.max_length tokens with several examples (best fit), each still "
        "attending only to itself; no padding is computed. A step then holds more examples. Off by "
        "default: on a CPU it was no faster than length-grouped batches even on widely varying lengths, "
        "and took more memory (bench/RESULTS.md); it is meant for GPUs with FlashAttention.",
    )
    save_steps: int = _f(20, "Save a resumable checkpoint every N steps.")
    save_total_limit: int = _f(2, "Keep only the newest N checkpoints.")
    logging_steps: int = _f(1, "Write a metrics line every N steps.")
    eval_steps: int = _f(20, "Evaluate on the held-out split every N steps (when data.eval_split > 0).")
    seed: int = _f(42, "Random seed (data order, adapter init, dropout).")
    num_processes: int = _f(1, "Processes (GPUs) to train on; more than 1 runs under `accelerate launch`.")


@dataclass
class ProbeSection:
    prompts: list[str] = _f(
        [],
        "Questions answered greedily by the base and the tuned model at the end (probes.json). Left at "
        "the recipe's starter questions, a run with a held-out split asks 3 of its held-out questions "
        "instead; empty: no probes.",
    )
    max_new_tokens: int = _f(48, "Longest probe answer in tokens.")


@dataclass
class Recipe:
    method: str = _f("sft", "Training method.", choices=METHODS)
    model: str = _f("default", "Model: 'default' (SmolLM2-135M-Instruct), a Hub id, or a local folder.")
    dataset: str = _f("sample:alpaca.jsonl", "Dataset: a saved name, 'sample:<file>', or a file path.")
    backend: str = _f(
        "transformers",
        "How the model and LoRA are loaded: 'transformers' (everywhere) or 'unsloth' (faster LoRA/QLoRA "
        "on one NVIDIA GPU; needs the unsloth package).",
        choices=BACKENDS,
    )
    data: DataSection = field(default_factory=DataSection)
    lora: LoraSection = field(default_factory=LoraSection)
    quantization: QuantizationSection = field(default_factory=QuantizationSection)
    preference: PreferenceSection = field(default_factory=PreferenceSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    probes: ProbeSection = field(default_factory=ProbeSection)


SECTIONS = tuple(f.name for f in dataclasses.fields(Recipe) if dataclasses.is_dataclass(f.default_factory))


@dataclass(frozen=True)
class FieldDoc:
    """One recipe field as documentation: dotted key, type, default, help, allowed values, and the
    plain-words label the UI shows (studio.train.fieldlabels; the key stays visible as a hint)."""

    key: str
    type: str
    default: object
    help: str
    choices: tuple | None
    auto: bool = False  # true, false or "auto" (see `decide`)
    label: str = ""


@dataclass(frozen=True)
class Problem:
    """Something preflight found: the field, what is wrong, how to fix it, and how bad it is."""

    field: str
    message: str
    fix: str
    severity: str = "error"  # "error" stops the run; "warning" and "info" are shown

    def __str__(self) -> str:
        return f"{self.field}: {self.message} — {self.fix}"


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def field_docs() -> list[FieldDoc]:
    """Every leaf field of a recipe, in file order (the UI's tooltips and `--help` read these)."""
    docs = []
    for top in dataclasses.fields(Recipe):
        if top.name in SECTIONS:
            section = top.default_factory
            for sub in dataclasses.fields(section):
                docs.append(_doc(f"{top.name}.{sub.name}", sub, _hints(section)[sub.name], section()))
        else:
            docs.append(_doc(top.name, top, _hints(Recipe)[top.name], Recipe()))
    return docs


def _doc(key: str, f: dataclasses.Field, hint, instance) -> FieldDoc:
    name = key.rsplit(".", 1)[-1]
    type_name = str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
    auto = hint == AutoBool
    if auto:
        type_name = "bool | auto"
    help_, choices = f.metadata["help"], f.metadata.get("choices")
    return FieldDoc(key, type_name, getattr(instance, name), help_, choices, auto, fieldlabels.LABELS[key])


def decide(value: bool | str, when_auto: typing.Callable[[], bool]) -> bool:
    """Resolve an `AutoBool` field: its own value, or `when_auto()` for "auto".

    >>> decide("auto", lambda: True), decide(False, lambda: True)
    (True, False)
    """
    return when_auto() if value == AUTO else bool(value)


def field_help(key: str) -> str:
    """Help text of one dotted key, e.g. field_help("lora.r")."""
    for doc in field_docs():
        if doc.key == key:
            return doc.help
    raise ValueError(f"no recipe field {key!r}{_suggest(key, [d.key for d in field_docs()])}")


def fields_help() -> str:
    """All fields as text, for `python -m studio train --help`."""
    lines = ["recipe fields (set any with --set KEY=VALUE):"]
    for doc in field_docs():
        lines.append(f"  {doc.key} = {doc.default!r}\n      {doc.help}")
    return "\n".join(lines)


# names people bring from PEFT / TRL / other tools, mapped to this recipe's
_ALIASES = dict(
    rank="r", lora_r="r", lora_alpha="alpha", lora_dropout="dropout", target_modules="targets",
    lr="learning_rate", num_train_epochs="epochs", gradient_accumulation_steps="grad_accum",
    per_device_train_batch_size="batch_size", lr_scheduler_type="scheduler", warmup="warmup_ratio",
    max_seq_length="max_length", neftune_noise_alpha="neftune_alpha", template="chat_template",
)  # fmt: skip


def _suggest(key: str, valid: list[str]) -> str:
    """Always name the closest valid key (a known alias first, else the most similar spelling)."""
    prefix, _, leaf = key.rpartition(".")
    alias = _ALIASES.get(leaf)
    for candidate in [f"{prefix}.{alias}" if prefix else alias] if alias else []:
        if candidate in valid:
            return f" (did you mean {candidate!r}?)"
    matches = [v for v in valid if alias and v.rsplit(".", 1)[-1] == alias]
    close = matches or difflib.get_close_matches(key, valid, n=1, cutoff=0.0)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _line_of(lines: dict[str, int | str], key: str) -> str:
    where = lines.get(key)
    return "" if where is None else (f" line {where}" if isinstance(where, int) else f" ({where})")


def _key_lines(text: str) -> dict[str, int]:
    """Dotted key -> 1-based line number in the YAML text, so errors can point at the line."""
    lines: dict[str, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines
    if not isinstance(root, yaml.MappingNode):
        return lines
    for key_node, value_node in root.value:
        lines[str(key_node.value)] = key_node.start_mark.line + 1
        if isinstance(value_node, yaml.MappingNode):
            for sub_key, _ in value_node.value:
                lines[f"{key_node.value}.{sub_key.value}"] = sub_key.start_mark.line + 1
    return lines


def _coerce(value, hint, where: str):
    """Check `value` against a field's type hint; return it (ints become floats where asked)."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) else ()
    options = args if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    for option in options:
        if option is bool and isinstance(value, bool):
            return value
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if option is float and isinstance(value, str) and _FLOAT_RE.match(value.strip()):
            return float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
        if option is str and isinstance(value, str):
            return value
        if typing.get_origin(option) is typing.Literal and value in typing.get_args(option):
            return value
        if typing.get_origin(option) is list:
            if isinstance(value, str):
                value = [part.strip() for part in value.split(",") if part.strip()]
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return list(value)
    words = [word for o in options for word in _option_names(o)]
    allowed = words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]
    raise ValueError(f"{where}: {value!r} is not a valid value — expected {allowed}")


def _option_names(option) -> list[str]:
    if option is type(None):
        return ["empty"]
    if option is bool:
        return ["true", "false"]
    if typing.get_origin(option) is typing.Literal:
        return [str(arg) for arg in typing.get_args(option)]
    return [getattr(option, "__name__", str(option))]


def _check_choice(value, f: dataclasses.Field, where: str) -> None:
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        shown = ", ".join("empty" if c is None else str(c) for c in choices)
        raise ValueError(f"{where}: {value!r} is not one of {shown}")


def _build(cls, data: dict, prefix: str, source: str, lines: dict[str, int | str]):
    if not isinstance(data, dict):
        raise ValueError(f"{source}{_line_of(lines, prefix)}: '{prefix}' must be a mapping of fields")
    names = {f.name: f for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        where = f"{source}{_line_of(lines, dotted)}: {dotted}"
        if key not in names:
            raise ValueError(f"{where} is not a recipe field{_suggest(str(key), list(names))}")
        sub = names[key]
        if (
            dataclasses.is_dataclass(sub.default_factory)
            if sub.default_factory is not dataclasses.MISSING
            else False
        ):
            kwargs[key] = _build(sub.default_factory, value or {}, dotted, source, lines)
            continue
        if isinstance(value, str) and _TOKEN_RE.search(value):
            raise ValueError(
                f"{where} looks like a Hugging Face token: set HF_TOKEN in the environment instead"
            )
        coerced = _coerce(value, hints[key], where)
        _check_choice(coerced, sub, where)
        kwargs[key] = coerced
    return cls(**kwargs)


def from_dict(data: dict, source: str = "recipe", lines: dict[str, int | str] | None = None) -> Recipe:
    """Validate a plain dict (from YAML) into a Recipe; raises ValueError naming the field."""
    recipe = _build(Recipe, data or {}, "", source, lines or {})
    if "preference" not in (data or {}) or "beta" not in (data or {}).get("preference", {}):
        recipe.preference.beta = DEFAULT_BETA[recipe.method]
    return recipe


def shortcut(key: str) -> str:
    """Resolve a --set key: a dotted key, a top-level field, or a leaf name unique among sections.

    >>> shortcut("max_steps")
    'training.max_steps'
    """
    valid = [doc.key for doc in field_docs()]
    if key in valid or key in SECTIONS:
        return key
    matches = [k for k in valid if k.rsplit(".", 1)[-1] == key]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ValueError(f"--set {key}: ambiguous, use one of {', '.join(matches)}")
    raise ValueError(f"--set {key}: not a recipe field{_suggest(key, valid)}")


def apply_sets(data: dict, sets: list[str]) -> dict:
    """Apply `--set key=value` overrides (values parsed as YAML scalars) to a recipe dict."""
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (data or {}).items()}
    for item in sets:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: write it as KEY=VALUE, e.g. --set lora.r=8")
        key, raw = item.split("=", 1)
        dotted = shortcut(key.strip())
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ValueError(f"--set {key}: {raw!r} is not a valid value ({exc.problem})") from exc
        if isinstance(value, dict):
            raise ValueError(f"--set {key}: give one value, not a mapping")
        if "." in dotted:
            section, leaf = dotted.split(".", 1)
            data.setdefault(section, {})
            if not isinstance(data[section], dict):
                raise ValueError(f"--set {key}: recipe field '{section}' is not a section")
            data[section][leaf] = value
        else:
            data[dotted] = value
    return data


def load(path: str | Path, sets: list[str] | None = None) -> Recipe:
    """Read a recipe YAML file, apply `--set` overrides, and validate it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"recipe {path} cannot be read: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        line = path.read_bytes().count(b"\n", 0, exc.start) + 1
        raise ValueError(f"recipe {path} line {line}: not UTF-8 text — save the file as UTF-8") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ValueError(f"recipe {path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"recipe {path}: the file must be a mapping of fields (see recipes/lora_sft.yaml)")
    lines: dict[str, int | str] = dict(_key_lines(text))
    merged = apply_sets(data, sets or [])
    for item in sets or []:
        lines[shortcut(item.split("=", 1)[0].strip())] = f"--set {item}"
    return from_dict(merged, source=str(path), lines=lines)


def to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def to_yaml(recipe: Recipe) -> str:
    """The fully resolved recipe as YAML (what a run folder's recipe.yaml holds)."""
    return yaml.safe_dump(to_dict(recipe), sort_keys=False, allow_unicode=True)
