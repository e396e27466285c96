"""Export a training run for a GPU cluster: an accelerate config, a SLURM script, a torchrun line.

Given a recipe, its `--set` overrides, N nodes of G GPUs and a job name, this writes the files a
person copies to a cluster to run `python -m studio train` on N*G GPUs: a multi-node accelerate
config (DDP, FSDP or DeepSpeed ZeRO-3), a SLURM batch script that starts one `accelerate launch` per
node, and an equivalent `torchrun` command for clusters without SLURM. Every value that reaches a
shell is quoted with `shlex.quote`, and every input is checked first (ValueError naming the field).

Knows nothing about Gradio, training or the recipe's fields: the recipe is a path and the overrides
are passed through as they are (the Train tab runs the recipe's own checks before exporting).

Run as: python -m studio cluster RECIPE.yaml --nodes 2 --gpus-per-node 8 --job-name NAME --out DIR
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

STRATEGIES = ("ddp", "fsdp", "zero3")
_JOB_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,59}$")
_SET_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_TIME_RE = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")
_SLURM_NAME_RE = re.compile(r"^[A-Za-z0-9_.,-]+$")
_HOST_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.:-]*$")
_CONFIG_END = "STUDIO_ACCELERATE_CONFIG_END"


@dataclass(frozen=True)
class ClusterJob:
    """One training run on `nodes` machines with `gpus_per_node` GPUs each."""

    recipe: str  # path of the recipe as the cluster sees it (relative to studio_dir, or absolute)
    job_name: str = "studio-train"
    nodes: int = 2
    gpus_per_node: int = 8
    strategy: str = "ddp"  # ddp | fsdp | zero3
    sets: tuple[str, ...] = ()
    studio_home: str | None = None  # absolute path on shared storage; None: $STUDIO_HOME at submit time
    studio_dir: str | None = None  # Tune Studio checkout on the cluster; None: the folder sbatch ran in
    venv: str | None = None  # a virtual environment to activate on every node
    port: int = 29500
    cpus_per_gpu: int = 8
    time_limit: str = "24:00:00"
    partition: str | None = None
    account: str | None = None
    offline: bool = True  # compute nodes often have no internet: models come from HF_HOME
    extra_env: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_job(self)

    @property
    def num_processes(self) -> int:
        return self.nodes * self.gpus_per_node


def _positive(name: str, value: object, top: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= top:
        raise ValueError(f"{name} must be a whole number from 1 to {top}, got {value!r}")


def _check_sets(sets: tuple[str, ...]) -> None:
    if isinstance(sets, str):
        raise ValueError(f"sets must be a list of KEY=VALUE strings, got one string {sets!r}")
    for item in sets:
        key = item.split("=", 1)[0].strip() if isinstance(item, str) else ""
        if not isinstance(item, str) or "=" not in item or not _SET_KEY_RE.match(key):
            raise ValueError(
                f"--set {item!r}: write it as KEY=VALUE with a recipe field as KEY, e.g. lora.r=8"
            )


def _check_path(name: str, value: str | None, absolute: bool = False) -> None:
    if value is None:
        return
    if not isinstance(value, str) or not value.strip() or "\n" in value or "\0" in value:
        raise ValueError(f"{name} must be a non-empty path on one line, got {value!r}")
    if absolute and not value.startswith("/"):
        raise ValueError(
            f"{name} {value!r} must be an absolute path that every node mounts, e.g. /shared/ana/studio"
        )


def check_job(job: ClusterJob) -> ClusterJob:
    """Raise ValueError naming the field and the fix for anything a cluster would reject."""
    if not isinstance(job.job_name, str) or not _JOB_RE.match(job.job_name):
        raise ValueError(
            f"job name {job.job_name!r} is not allowed: use 1-60 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (it names the SLURM job and the run folder)"
        )
    _positive("nodes", job.nodes, 1024)
    _positive("gpus_per_node", job.gpus_per_node, 64)
    _positive("cpus_per_gpu", job.cpus_per_gpu, 256)
    _positive("port", job.port, 65535)
    if job.port < 1024:
        raise ValueError(f"port {job.port} is reserved for system services: use 1024-65535, e.g. 29500")
    if job.num_processes < 2:
        raise ValueError("1 node with 1 GPU is not a distributed run: use `python -m studio train` instead")
    if job.strategy not in STRATEGIES:
        raise ValueError(f"strategy {job.strategy!r} is unknown: use one of {', '.join(STRATEGIES)}")
    if not isinstance(job.time_limit, str) or not _TIME_RE.match(job.time_limit):
        raise ValueError(
            f"time limit {job.time_limit!r}: write it as HH:MM:SS or D-HH:MM:SS, e.g. 1-12:00:00"
        )
    for name in ("partition", "account"):
        value = getattr(job, name)
        if value is not None and not (isinstance(value, str) and _SLURM_NAME_RE.match(value)):
            raise ValueError(f"{name} {value!r}: use the name SLURM knows (letters, digits, '_', '.', '-')")
    _check_path("recipe", job.recipe)
    _check_path("studio_home", job.studio_home, absolute=True)
    _check_path("studio_dir", job.studio_dir)
    _check_path("venv", job.venv)
    _check_sets(job.sets)
    for key in job.extra_env:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", key):
            raise ValueError(f"environment variable name {key!r} is not valid: use letters, digits and '_'")
    return job


# ---- (a) accelerate config ----------------------------------------------------------------------


def _strategy_settings(strategy: str) -> dict:
    if strategy == "fsdp":
        # FSDP2 shards each decoder layer (accelerate finds the layer class from the model);
        # FULL_STATE_DICT saves the adapter as one ordinary file that chat and push can read.
        return {
            "distributed_type": "FSDP",
            "fsdp_config": {
                "fsdp_version": 2,
                "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
                "fsdp_reshard_after_forward": True,
                "fsdp_state_dict_type": "FULL_STATE_DICT",
                "fsdp_cpu_ram_efficient_loading": True,
                "fsdp_offload_params": False,
                "fsdp_activation_checkpointing": False,
            },
        }
    if strategy == "zero3":
        # "standard" starts ranks with torch's launcher, one per node, which is what srun does;
        # gradient accumulation and clipping stay "auto" so the recipe's values apply.
        return {
            "distributed_type": "DEEPSPEED",
            "deepspeed_config": {
                "zero_stage": 3,
                "zero3_init_flag": True,
                "zero3_save_16bit_model": True,
                "offload_optimizer_device": "none",
                "offload_param_device": "none",
                "deepspeed_multinode_launcher": "standard",
            },
        }
    return {"distributed_type": "MULTI_GPU"}


def accelerate_config(job: ClusterJob, main_address: str | None = None) -> str:
    """A multi-node accelerate config YAML for `accelerate launch --config_file`.

    machine_rank is 0 here: every other node passes its own `--machine_rank` (the SLURM script uses
    $SLURM_NODEID). Without `main_address`, each node passes `--main_process_ip` too.
    """
    check_job(job)
    if main_address is not None and not _HOST_RE.match(main_address):
        raise ValueError(f"main address {main_address!r} is not a host name or IP address")
    settings = _strategy_settings(job.strategy)
    config = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": settings.pop("distributed_type"),
        "num_machines": job.nodes,
        "num_processes": job.num_processes,
        "machine_rank": 0,
        "main_process_ip": main_address,
        "main_process_port": job.port,
        "rdzv_backend": "static",
        "gpu_ids": "all",
        # The recipe's training.bf16 decides precision; "no" here keeps the two from disagreeing.
        "mixed_precision": "no",
        "use_cpu": False,
        "debug": False,
        **settings,
    }
    header = (
        f"# Accelerate config for Tune Studio job {job.job_name}: {job.nodes} nodes x "
        f"{job.gpus_per_node} GPUs = {job.num_processes} processes, strategy {job.strategy}.\n"
        "# Every node runs the same command with its own rank (0 on the node named by\n"
        "# --main_process_ip); the SLURM script made with it does this for you:\n"
        "#   accelerate launch --config_file THIS.yaml --machine_rank RANK --main_process_ip HOST \\\n"
        f"#     -m studio train {shlex.quote(job.recipe)} ...\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


# ---- the training command shared by (b) and (c) -------------------------------------------------


def _train_args(job: ClusterJob) -> list[str]:
    args = ["-m", "studio", "train", shlex.quote(job.recipe)]
    for item in job.sets:
        args += ["--set", shlex.quote(item)]
    return args


def _env_lines(job: ClusterJob) -> list[str]:
    home = (
        shlex.quote(job.studio_home)
        if job.studio_home
        else '"${STUDIO_HOME:?set STUDIO_HOME to a folder on storage every node mounts}"'
    )
    lines = [f"export STUDIO_HOME={home}", 'export HF_HOME="${HF_HOME:-$STUDIO_HOME/hf}"']
    if job.offline:
        lines += [
            "# Compute nodes often have no internet: download the model into HF_HOME beforehand.",
            "export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1",
        ]
    lines += ["export TOKENIZERS_PARALLELISM=false", f"export OMP_NUM_THREADS={job.cpus_per_gpu}"]
    lines += [f"export {key}={shlex.quote(str(value))}" for key, value in sorted(job.extra_env.items())]
    if job.venv:
        lines.append(f"source {shlex.quote(job.venv.rstrip('/') + '/bin/activate')}")
    return lines


# ---- (b) SLURM batch script ---------------------------------------------------------------------


def _sbatch_header(job: ClusterJob) -> list[str]:
    lines = [
        f"#SBATCH --job-name={job.job_name}",
        f"#SBATCH --nodes={job.nodes}",
        "#SBATCH --ntasks-per-node=1",
        f"#SBATCH --gpus-per-node={job.gpus_per_node}",
        f"#SBATCH --cpus-per-task={job.cpus_per_gpu * job.gpus_per_node}",
        f"#SBATCH --time={job.time_limit}",
        f"#SBATCH --output={job.job_name}-%j.out",
        "#SBATCH --requeue",
    ]
    if job.partition:
        lines.append(f"#SBATCH --partition={job.partition}")
    if job.account:
        lines.append(f"#SBATCH --account={job.account}")
    return lines


def _requirement_check(job: ClusterJob) -> list[str]:
    if job.strategy != "zero3":
        return []
    return [
        "python -c 'import deepspeed' 2>/dev/null || "
        '{ echo "strategy zero3 needs DeepSpeed on the cluster: pip install deepspeed" >&2; exit 1; }'
    ]


def _node_command(job: ClusterJob) -> str:
    """What srun runs once per node; $SLURM_NODEID is expanded there, not on the batch node."""
    launch = [
        "accelerate", "launch",
        "--config_file", '"$STUDIO_ACCELERATE_CONFIG"',
        "--num_machines", str(job.nodes),
        "--num_processes", str(job.num_processes),
        "--machine_rank", '"$SLURM_NODEID"',
        "--main_process_ip", '"$MAIN_ADDR"',
        "--main_process_port", str(job.port),
    ]  # fmt: skip
    train = [*_train_args(job), "--run-dir", '"$RUN_DIR"', "$RESUME_FLAG"]
    return " ".join(launch + train)


def slurm_script(job: ClusterJob) -> str:
    """A SLURM batch script: one `accelerate launch` per node, the run folder on shared storage.

    The accelerate config is written into the run folder when the job starts, so this one file is
    all that needs copying to the cluster. A requeued job resumes from its last checkpoint.
    """
    check_job(job)
    workdir = shlex.quote(job.studio_dir) if job.studio_dir else '"${SLURM_SUBMIT_DIR:-$PWD}"'
    body = [
        "#!/bin/bash",
        f"# Tune Studio training job {job.job_name}: {job.recipe!r} on {job.nodes} nodes x "
        f"{job.gpus_per_node} GPUs ({job.strategy}).",
        "# Submit from your Tune Studio checkout with: sbatch THIS_FILE",
        *_sbatch_header(job),
        "set -euo pipefail",
        "",
        *_env_lines(job),
        f"cd {workdir}",
        *_requirement_check(job),
        "",
        # Not `| head -n 1`: under pipefail, scontrol's SIGPIPE would end the job.
        'mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")',
        'MAIN_ADDR="${NODES[0]}"',
        f'RUN_DIR="$STUDIO_HOME/runs/{job.job_name}-$SLURM_JOB_ID"',
        "RESUME_FLAG=",
        'if compgen -G "$RUN_DIR/checkpoints/checkpoint-*" >/dev/null; then RESUME_FLAG=--resume; fi',
        'STUDIO_ACCELERATE_CONFIG="$RUN_DIR/accelerate_config.yaml"',
        'mkdir -p "$RUN_DIR"',
        f"cat > \"$STUDIO_ACCELERATE_CONFIG\" <<'{_CONFIG_END}'",
        accelerate_config(job).rstrip("\n"),
        _CONFIG_END,
        "export MAIN_ADDR RUN_DIR RESUME_FLAG STUDIO_ACCELERATE_CONFIG",
        'echo "Tune Studio: $SLURM_JOB_NUM_NODES nodes, main $MAIN_ADDR, run folder $RUN_DIR"',
        "",
        f"srun --kill-on-bad-exit=1 bash -c {shlex.quote(_node_command(job))}",
    ]
    return "\n".join(body) + "\n"


# ---- (c) torchrun -------------------------------------------------------------------------------


def torchrun_command(job: ClusterJob, main_address: str | None = None) -> str:
    """The `torchrun` line to start on every node (DDP only), as one shell line.

    Without `main_address` the line reads the first node's address from $MAIN_ADDR.
    """
    check_job(job)
    if job.strategy != "ddp":
        raise ValueError(
            f"strategy {job.strategy}: torchrun starts plain DDP processes, and the {job.strategy} settings "
            "travel in the accelerate config; launch it with the SLURM script or "
            "`accelerate launch --config_file ...`, or choose strategy ddp"
        )
    if main_address is None:
        endpoint = f'"${{MAIN_ADDR:?set MAIN_ADDR to the address of the first node}}:{job.port}"'
    elif _HOST_RE.match(main_address):
        endpoint = shlex.quote(f"{main_address}:{job.port}")
    else:
        raise ValueError(f"main address {main_address!r} is not a host name or IP address")
    run_dir = f'"$STUDIO_HOME/runs/"{shlex.quote(job.job_name)}'
    parts = [
        "torchrun",
        "--nnodes", str(job.nodes),
        "--nproc_per_node", str(job.gpus_per_node),
        "--rdzv_backend", "c10d",
        "--rdzv_endpoint", endpoint,
        "--rdzv_id", shlex.quote(job.job_name),
        *_train_args(job),
        "--run-dir", run_dir,
    ]  # fmt: skip
    return " ".join(parts)


def torchrun_script(job: ClusterJob) -> str:
    """A script to start on every node at once (same MAIN_ADDR everywhere) for clusters without SLURM."""
    body = [
        "#!/bin/bash",
        f"# Tune Studio job {job.job_name} with torchrun: {job.nodes} nodes x {job.gpus_per_node} GPUs (DDP).",
        "# Start it on every node within a few minutes of each other, with the same MAIN_ADDR:",
        "#   MAIN_ADDR=first-node.example STUDIO_HOME=/shared/studio bash THIS_FILE",
        "set -euo pipefail",
        *_env_lines(job),
        *([f"cd {shlex.quote(job.studio_dir)}"] if job.studio_dir else []),
        f"exec {torchrun_command(job)}",
    ]
    return "\n".join(body) + "\n"


# ---- the bundle ---------------------------------------------------------------------------------


def write_bundle(out_dir: str | Path, job: ClusterJob) -> list[Path]:
    """Write the accelerate config, the SLURM script and (for DDP) the torchrun script to `out_dir`."""
    check_job(job)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {
        out / "accelerate_config.yaml": accelerate_config(job),
        out / f"{job.job_name}.sbatch": slurm_script(job),
    }
    if job.strategy == "ddp":
        files[out / f"{job.job_name}-torchrun.sh"] = torchrun_script(job)
    for path, text in files.items():
        path.write_text(text, encoding="utf-8")
        if path.suffix in (".sbatch", ".sh"):
            path.chmod(0o755)
    return list(files)
