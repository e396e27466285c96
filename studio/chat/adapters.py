"""The chat's adapters: find them on disk, check they fit the loaded base, and keep the set that is
injected into it.

Finding: a run folder, its `adapter/`, or a `checkpoints/checkpoint-N` (`adapter_folder`,
`list_adapters`, `adapter_label`; `adapter_title` and `learned_from` say what a person calls it and
which dataset it learned from, read from its run folder through `studio.rundir`). Checking, before PEFT touches the model: LoRA/DoRA only, the
recorded base names the loaded one, every LoRA matrix has the shape of the layer it patches.

Serving (`LoadedAdapters`): LoRA adapters share the base weights and share batches with the base
and each other (the base is PEFT's "__base__", every adapter switched off). PEFT refuses DoRA in mixed
batches and unmerged DoRA decodes ~7x slower, so a DoRA adapter is merged into a private copy of
only the weights it touches (everything else is shared with the base); when memory is short it is
served unmerged instead: correct, but slow. Each adapter gets a `Route` saying which model runs it;
`runner` picks the module for a batch of rows: rows that all run the base use `plain`, the base
without adapter layers over the same tensors; rows of plain LoRA adapters (and the base) use
`lean`, another such copy whose linear layers add each row's LoRA product in one hook, without
PEFT's per-layer bookkeeping; anything else runs in PEFT's own layers.

Not thread-safe on its own: ChatEngine calls it under its lock. Knows nothing about decoding,
sampling, the UI or the preference store.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from studio import rundir, workspace

BASE = "__base__"  # PEFT's name for "no adapter" in a mixed batch
_HEADROOM_MB = 512  # memory left free after making a merged DoRA copy


# ---- finding adapters on disk -------------------------------------------------------------------


def adapter_folder(path: str | Path) -> Path:
    """The adapter folder behind a run folder, its `adapter/`, or a `checkpoints/checkpoint-N`."""
    folder = Path(path).expanduser()
    if (folder / "adapter_config.json").is_file():
        return folder.resolve()
    if (folder / "adapter" / "adapter_config.json").is_file():
        return (folder / "adapter").resolve()
    checkpoints = [str(c) for c in _checkpoints(folder)]
    if checkpoints:
        raise ValueError(
            f"{folder} has no final adapter yet (training has not finished): "
            f"pick one of its checkpoints instead: {', '.join(checkpoints)}"
        )
    raise ValueError(
        f"{folder} holds no adapter: expected adapter_config.json there, in {folder / 'adapter'}, "
        "or in a checkpoints/checkpoint-N folder; pick a run that has finished or saved a checkpoint"
    )


def _checkpoints(run: Path) -> list[Path]:
    found = [c for c in (run / "checkpoints").glob("checkpoint-*") if (c / "adapter_config.json").is_file()]
    return sorted(
        found, key=lambda c: int(c.name.rsplit("-", 1)[1]) if c.name.rsplit("-", 1)[1].isdigit() else 0
    )


def list_adapters(runs_root: Path | None = None) -> list[Path]:
    """Every adapter the chat can load: each run's final adapter, then its checkpoints by step."""
    root = Path(runs_root) if runs_root else workspace.runs_dir()
    if not root.is_dir():
        return []
    found: list[Path] = []
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        if (run / "adapter" / "adapter_config.json").is_file():
            found.append(run / "adapter")
        found.extend(_checkpoints(run))
    return found


def adapter_label(folder: Path) -> str:
    """A short, PEFT-safe name: `<run>` for a final adapter, `<run>-checkpoint-N` for a checkpoint.

    >>> adapter_label(Path("/w/runs/sft.v2/checkpoints/checkpoint-40"))
    'sft_v2-checkpoint-40'
    """
    folder = Path(folder)
    if folder.parent.name == "checkpoints":
        label = f"{folder.parent.parent.name}-{folder.name}"
    elif folder.name == "adapter":
        label = folder.parent.name
    else:
        label = folder.name
    return re.sub(r"[^A-Za-z0-9_-]", "_", label) or "adapter"


def _run_folder(folder: Path) -> Path:
    folder = Path(folder)
    return folder.parent.parent if folder.parent.name == "checkpoints" else folder.parent


def adapter_title(folder: Path) -> str:
    """What a person calls an adapter: its run's name (method + dataset + minute unless renamed),
    with the checkpoint's step for a checkpoint."""
    folder = Path(folder)
    name = rundir.run_name(_run_folder(folder))
    if folder.parent.name == "checkpoints":
        return f"{name} · checkpoint {folder.name.removeprefix('checkpoint-')}"
    return name


def learned_from(folder: Path) -> str:
    """The dataset an adapter was trained on, from its run's recipe ("" when the run does not say)."""
    return str(rundir.read_recipe(_run_folder(folder)).get("dataset") or "")


# ---- checks before PEFT touches the model -------------------------------------------------------


def read_config(folder: Path) -> dict:
    """The adapter's adapter_config.json; only LoRA (DoRA included) is served."""
    path = folder / "adapter_config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable ({exc}); save the adapter again with save_pretrained") from exc
    if str(config.get("peft_type", "")).upper() != "LORA":
        raise ValueError(
            f"{path}: peft_type is {config.get('peft_type')!r}; the chat serves LoRA and DoRA adapters only"
        )
    return config


def same_base(declared: str, spec: str, path: str) -> bool:
    """Whether an adapter's recorded base names the loaded base (folders move between machines)."""
    if not declared or declared in (spec, path):
        return True
    if Path(declared).expanduser().exists() and Path(declared).expanduser().resolve() == Path(path).resolve():
        return True
    # "HuggingFaceTB/SmolLM2-135M-Instruct" and ".../models/SmolLM2-135M-Instruct" are the same model
    return Path(declared.rstrip("/")).name == Path(path.rstrip("/")).name


def check_shapes(folder: Path, params: dict, spec: str) -> None:
    """Refuse an adapter made for another architecture before PEFT half-injects it."""
    from safetensors import safe_open

    file = folder / "adapter_model.safetensors"
    if not file.is_file():
        return  # a .bin adapter: PEFT's own load reports mismatches
    with safe_open(str(file), "pt") as weights:
        for key in weights.keys():  # noqa: SIM118 (safe_open is not iterable)
            found = re.match(r"base_model\.model\.(.+)\.lora_([AB])\.weight$", key)
            if not found:
                continue
            base = params.get(f"{found[1]}.weight")
            shape = weights.get_slice(key).get_shape()
            axis = 1 if found[2] == "A" else 0
            want, got = (None if base is None else base.shape[axis]), shape[axis]
            if want != got:
                raise ValueError(
                    f"{file}: layer {found[1]} does not match {spec!r} (adapter {got} vs model {want} "
                    "features): it was trained on another base model; load that model to chat with it"
                )


def can_afford(nbytes: int, device) -> bool:
    """Whether `nbytes` more still leaves _HEADROOM_MB free on the device that would hold them."""
    import psutil
    import torch

    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else psutil.virtual_memory().available
    return free - nbytes > _HEADROOM_MB * 2**20


# ---- the loaded set -----------------------------------------------------------------------------


@dataclass
class Route:
    """Where one side runs: a merged DoRA copy, or None for the shared base weights."""

    model: object
    name: str  # BASE, a LoRA adapter, or a DoRA adapter
    mixed: bool  # True: may share a batch with other mixed routes on the same model


def _put(root, dotted: str, tensor, buffer: bool) -> None:
    owner_name, _, leaf = dotted.rpartition(".")
    owner = root.get_submodule(owner_name) if owner_name else root
    (owner._buffers if buffer else owner._parameters)[leaf] = tensor


class LoadedAdapters:
    """The adapters injected into one base model: name -> folder, and the route that serves it."""

    def __init__(self, model, spec: str, path: str, device) -> None:
        self.model = model  # the transformers model; PEFT injects adapter layers into it in place
        self.peft = None  # the PeftModel around `model` while any adapter is injected
        self.spec, self.path, self.device = spec, path, device
        self.params = dict(model.named_parameters(remove_duplicate=False))  # shared with DoRA copies
        self.buffers = dict(model.named_buffers(remove_duplicate=False))
        self.folders: dict[str, Path] = {}
        self.routes: dict[str, Route] = {}
        self._plain = None  # the base without adapter layers, made on first use
        self._mixed_names: list[str] | None = None  # the rows' adapters while a mixed batch runs
        self._hooked: set[int] = set()  # adapter layers that read `_mixed_names`
        self._lean = None  # LeanLora over another plain copy, made when the first adapter comes

    @property
    def plain(self):
        """The base without PEFT's adapter layers, over the same tensors (no copy): rows that all
        run the base skip the per-layer adapter bookkeeping (1.5x faster decode with a LoRA loaded).
        None where the weights are quantized (a plain copy cannot run them)."""
        if self.peft is None:
            return self.model
        if getattr(self.model.config, "quantization_config", None) is not None:
            return None
        if self._plain is None:
            try:
                self._plain = self._copy_sharing_weights({}).eval()
            except Exception:  # a model class that cannot be rebuilt from its config: the slow way
                self._plain = False
        return None if self._plain is False else self._plain

    @property
    def lean(self):
        """Plain LoRA adapters' rows without PEFT's layers (`studio.chat.lean`), over `plain`'s
        twin; None where there is no plain copy."""
        if self._lean is None and self.peft is not None:
            from studio.chat.lean import LeanLora

            try:
                self._lean = (
                    LeanLora(self._copy_sharing_weights({}).eval()) if self.plain is not None else False
                )
            except Exception:
                self._lean = False
        return self._lean or None

    def add(self, path: str | Path) -> str:
        """Load a run's adapter or a checkpoint; returns its name (the same name when added twice)."""
        folder = adapter_folder(path)
        config = read_config(folder)
        for name, known in self.folders.items():
            if known == folder:
                return name
        declared = str(config.get("base_model_name_or_path") or "")
        if not same_base(declared, self.spec, self.path):
            raise ValueError(
                f"{folder}: this adapter was trained on {declared!r} but the chat has {self.spec!r} loaded; "
                f"load {declared!r} as the base model to chat with it"
            )
        check_shapes(folder, self.params, self.spec)
        name = label = adapter_label(folder)
        suffix = 2
        while name in self.folders or name == BASE:
            name, suffix = f"{label}-{suffix}", suffix + 1
        self._inject(folder, name)
        try:
            route = self._dora_route(name) if config.get("use_dora") else Route(None, name, True)
        except BaseException:
            self._forget(name)
            raise
        self.folders[name], self.routes[name] = folder, route
        if route.mixed and self.lean is not None:
            self.lean.add(name, self.peft)
        return name

    def remove(self, name: str) -> None:
        """Forget one adapter (what only it used is freed once unreferenced)."""
        route = self.routes.pop(name, None)
        self.folders.pop(name, None)
        if self._lean:
            self._lean.remove(name)
        if route is not None and route.model is None:
            self._forget(name)

    def route(self, adapter: str | None) -> Route:
        if adapter is None or adapter == BASE:
            return Route(None, BASE, True)
        if adapter not in self.routes:
            loaded = ", ".join(self.routes) or "none"
            raise ValueError(f"chat: adapter {adapter!r} is not loaded (loaded: {loaded}); add it first")
        return self.routes[adapter]

    def runner(self, route: Route, names: list[str]) -> tuple[object, list[str] | None]:
        """The module that runs one batch of rows, and the rows' adapters when they differ (then
        run it inside `mixed(names)`): a DoRA copy; the base without adapter layers when every row
        is the base; the lean copy when every other row's adapter is plain LoRA; else the
        PeftModel, with one adapter switched on when every row uses it, or as a mixed batch."""
        if route.model is not None:
            return route.model, None
        if all(name == BASE for name in names):
            plain = self.plain
            return (plain, None) if plain is not None else (self.peft, list(names))
        if route.mixed and self._lean_serves(names):
            return self._lean.model, list(names)
        if route.mixed and len(set(names)) > 1:
            return self.peft, list(names)
        if self.peft.active_adapter != route.name:
            self.peft.set_adapter(route.name)
        return self.peft, None

    def serving(self, adapter: str) -> str:
        """How an adapter is served: 'LoRA', 'DoRA merged' or 'DoRA unmerged (slow)'."""
        route = self.routes[adapter]
        return "LoRA" if route.mixed else "DoRA unmerged (slow)" if route.model is None else "DoRA merged"

    @contextmanager
    def mixed(self, names: list[str] | None):
        """While inside, one forward of the PeftModel gives row i the adapter `names[i]` (BASE: none).

        PEFT's own `adapter_names=` argument registers and removes a hook on every adapter layer on
        each call, walking all modules twice (a third of a decode step on the default model); the
        hooks here are registered once per layer and read the names from this object.
        """
        self._mixed_names = names
        try:
            if names is not None and self._lean_serves(names):
                with self._lean.rows(names):
                    yield
            else:
                yield
        finally:
            self._mixed_names = None

    def _lean_serves(self, names: list[str]) -> bool:
        """Whether the lean copy can run these rows: every non-base row's adapter is plain LoRA."""
        lean = self._lean
        return bool(lean) and all(name == BASE or lean.serves(name) for name in names)

    def _hand_names(self, module, args, kwargs):
        if self._mixed_names is not None:
            kwargs["adapter_names"] = self._mixed_names
        return args, kwargs

    def _inject(self, folder: Path, name: str) -> None:
        from peft import PeftModel
        from peft.tuners.lora import LoraLayer
        from peft.utils import AuxiliaryTrainingWrapper

        if self.peft is None:
            self.peft = PeftModel.from_pretrained(
                self.model, str(folder), adapter_name=name, is_trainable=False
            )
            self.peft.eval()
            self._hooked = set()
        else:
            self.peft.load_adapter(str(folder), adapter_name=name, is_trainable=False)
        for module in self.peft.modules():  # an adapter may add layers the others did not touch
            if isinstance(module, (LoraLayer, AuxiliaryTrainingWrapper)) and id(module) not in self._hooked:
                module.register_forward_pre_hook(self._hand_names, with_kwargs=True)
                self._hooked.add(id(module))

    def _forget(self, name: str) -> None:
        """Delete an adapter from the PEFT model; with none left, take the adapter layers out again."""
        self.peft.delete_adapter(name)
        left = list(self.peft.peft_config)
        if not left:
            self.model, self.peft, self._plain = self.peft.unload(), None, None
            self._lean = None
        elif self.peft.active_adapter not in left:
            self.peft.set_adapter(left[0])  # PEFT keeps pointing at the deleted one otherwise

    def _dora_route(self, name: str) -> Route:
        """Merge a DoRA adapter into a copy of the weights it touches; unmerged when memory is short."""
        import torch
        from peft.tuners.lora import LoraLayer

        layers = [
            (f"{module_name}.weight", module)
            for module_name, module in self.peft.base_model.model.named_modules()
            if isinstance(module, LoraLayer) and name in module.lora_magnitude_vector
        ]
        weights = [module.get_base_layer().weight for _, module in layers]
        if not can_afford(sum(w.numel() * w.element_size() for w in weights), self.device):
            return Route(None, name, mixed=False)
        with torch.no_grad():
            merged = {
                key: m.lora_variant[name].merge_safe(m, name, m.get_base_layer().weight.data)
                for key, m in layers
            }
        clone = self._copy_sharing_weights(merged)
        self._forget(name)
        return Route(clone.eval(), name, mixed=False)

    def _copy_sharing_weights(self, replaced: dict):
        """A second model object over the base's own tensors, except the `replaced` weights."""
        import torch
        from transformers import AutoModelForCausalLM

        with torch.device("meta"):
            clone = AutoModelForCausalLM.from_config(self.model.config)
        for key, param in self.params.items():
            new = replaced.get(key)
            _put(
                clone,
                key,
                param if new is None else torch.nn.Parameter(new, requires_grad=False),
                buffer=False,
            )
        for key, buffer in self.buffers.items():
            _put(clone, key, buffer, buffer=True)
        clone.generation_config = self.model.generation_config
        return clone
