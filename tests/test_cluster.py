"""The cluster export: accelerate reads the config, the SLURM script runs, torchrun parses the line.

The SLURM script is run for real with bash and stand-ins for `scontrol`, `srun` (which starts the
node command once per node, as SLURM does) and `accelerate` (which records its arguments). The
recorded arguments then go through accelerate's own launch parser and checks, with the config file
the script wrote, so quoting, ranks and process counts are checked the way a cluster would see them.
"""

from __future__ import annotations

import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed.run as torch_run
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import _filter_args, prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from studio.train import cluster

ROOT = Path(__file__).resolve().parent.parent
RECIPE = "recipes/my recipes/lora sft.yaml"  # spaces on purpose
SETS = ("max_steps=20", "model=/shared/models/My Model", "dataset=it's $(touch pwned) `x`.jsonl")
DISTRIBUTED_TYPE = {"ddp": "MULTI_GPU", "fsdp": "FSDP", "zero3": "DEEPSPEED"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_job(**overrides) -> cluster.ClusterJob:
    fields = dict(recipe=RECIPE, job_name="ana-sft", nodes=2, gpus_per_node=4, sets=SETS, port=free_port())
    return cluster.ClusterJob(**{**fields, **overrides})


# ---- (a) accelerate config --------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", cluster.STRATEGIES)
def test_accelerate_loads_the_config(tmp_path, strategy):
    job = make_job(nodes=3, gpus_per_node=8, strategy=strategy)
    path = tmp_path / "accelerate_config.yaml"
    path.write_text(cluster.accelerate_config(job), encoding="utf-8")
    config = load_config_from_file(str(path))
    assert isinstance(config, ClusterConfig)
    assert config.num_machines == 3 and config.num_processes == 24
    assert config.distributed_type.value == DISTRIBUTED_TYPE[strategy]
    assert config.main_process_port == job.port and config.machine_rank == 0
    assert ClusterConfig.from_yaml_file(str(path)).num_processes == 24
    if strategy == "fsdp":
        assert config.fsdp_config["fsdp_version"] == 2
    if strategy == "zero3":
        assert config.deepspeed_config["zero_stage"] == 3
        assert config.deepspeed_config["deepspeed_multinode_launcher"] == "standard"


def test_accelerate_config_names_the_main_node_when_given(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(cluster.accelerate_config(make_job(), main_address="gpu-node-01"), encoding="utf-8")
    assert load_config_from_file(str(path)).main_process_ip == "gpu-node-01"
    with pytest.raises(ValueError, match="not a host name"):
        cluster.accelerate_config(make_job(), main_address="node; rm -rf /")


# ---- (b) SLURM, run for real with stand-ins -----------------------------------------------------------


def stand_ins(tmp_path: Path) -> Path:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tools = {
        "scontrol": 'printf "node-a\\nnode-b\\nnode-c\\n"',
        # srun: run the node command once per node with that node's SLURM_NODEID, as SLURM does.
        "srun": 'while [[ "$1" == --* ]]; do shift; done\n'
        'for ((i = 0; i < SLURM_JOB_NUM_NODES; i++)); do SLURM_NODEID=$i "$@" || exit $?; done',
        "accelerate": f'printf "%s\\0" "$@" > {tmp_path}/node-$SLURM_NODEID.args',
        "python": "exit 0",  # the zero3 check imports deepspeed
    }
    for name, body in tools.items():
        (bindir / name).write_text(f"#!/bin/bash\n{body}\n", encoding="utf-8")
        (bindir / name).chmod(0o755)
    return bindir


def run_sbatch(tmp_path: Path, job: cluster.ClusterJob, prepare=None) -> list[list[str]]:
    script = tmp_path / "job.sbatch"
    script.write_text(cluster.slurm_script(job), encoding="utf-8")
    home = tmp_path / "shared home"
    if prepare:
        prepare(home / "runs" / f"{job.job_name}-4242")
    env = {
        "PATH": f"{stand_ins(tmp_path)}:/usr/bin:/bin",
        "STUDIO_HOME": str(home),
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NUM_NODES": str(job.nodes),
        "SLURM_JOB_NODELIST": "node-[a-c]",
        "SLURM_SUBMIT_DIR": str(tmp_path),
    }
    result = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (tmp_path / "pwned").exists(), "a --set value was run as a command"
    nodes = sorted(tmp_path.glob("node-*.args"))
    return [p.read_bytes().decode().split("\0")[:-1] for p in nodes]


def validated(argv: list[str]):
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    return args, defaults


@pytest.mark.parametrize("strategy", cluster.STRATEGIES)
def test_slurm_script_launches_every_node_with_its_rank(tmp_path, strategy):
    job = make_job(nodes=3, gpus_per_node=4, strategy=strategy)
    per_node = run_sbatch(tmp_path, job)
    assert len(per_node) == 3
    run_dir = str(tmp_path / "shared home" / "runs" / "ana-sft-4242")
    for rank, argv in enumerate(per_node):
        args, defaults = validated(argv[1:])  # argv[0] is "launch"
        assert argv[0] == "launch"
        assert defaults.distributed_type.value == DISTRIBUTED_TYPE[strategy]
        assert args.num_machines == 3 and args.num_processes == 12 and int(args.machine_rank) == rank
        assert args.main_process_ip == "node-a" and args.module
        expected = [
            "train",
            RECIPE,
            "--set",
            SETS[0],
            "--set",
            SETS[1],
            "--set",
            SETS[2],
            "--run-dir",
            run_dir,
        ]
        assert [args.training_script, *args.training_script_args] == ["studio", *expected]
        if strategy == "zero3":
            args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
            _, env = prepare_deepspeed_cmd_env(args)
            assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
        else:
            env = prepare_multi_gpu_env(args)
            assert (env.get("ACCELERATE_USE_FSDP") == "true") is (strategy == "fsdp")
        assert (args.nnodes, args.nproc_per_node, args.node_rank) == ("3", "4", rank)
        assert args.rdzv_endpoint == f"node-a:{job.port}"
    config = Path(run_dir) / "accelerate_config.yaml"
    assert config.read_text(encoding="utf-8") == cluster.accelerate_config(job)


def test_torchrun_that_accelerate_starts_gets_the_right_counts(tmp_path):
    job = make_job(nodes=2, gpus_per_node=8)
    argv = run_sbatch(tmp_path, job)[1]
    args, _ = validated(argv[1:])
    prepare_multi_gpu_env(args)
    launched = _filter_args(args, torch_run.get_args_parser(),
                            ["--training_script", args.training_script,
                             "--training_script_args", args.training_script_args])  # fmt: skip
    assert (launched.nnodes, launched.nproc_per_node, launched.node_rank) == ("2", "8", 1)
    assert launched.module and launched.training_script == "studio"


def test_slurm_script_header_and_syntax(tmp_path):
    job = make_job(nodes=4, gpus_per_node=8, partition="gpu", account="proj-42", time_limit="1-12:00:00")
    text = cluster.slurm_script(job)
    for line in ["#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=64", "#SBATCH --time=1-12:00:00", "#SBATCH --output=ana-sft-%j.out",
                 "#SBATCH --partition=gpu", "#SBATCH --account=proj-42", "export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1"]:  # fmt: skip
        assert line in text.splitlines(), line
    script = tmp_path / "job.sbatch"
    script.write_text(text, encoding="utf-8")
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_slurm_script_needs_a_shared_studio_home(tmp_path):
    script = tmp_path / "job.sbatch"
    script.write_text(cluster.slurm_script(make_job()), encoding="utf-8")
    env = {"PATH": f"{stand_ins(tmp_path)}:/usr/bin:/bin", "SLURM_JOB_ID": "1"}
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env, timeout=60)
    assert (
        result.returncode != 0 and "set STUDIO_HOME to a folder on storage every node mounts" in result.stderr
    )

    fixed = make_job(studio_home="/shared/ana/studio home", venv="/shared/ana/venv")
    text = cluster.slurm_script(fixed)
    assert "export STUDIO_HOME='/shared/ana/studio home'" in text
    assert "source /shared/ana/venv/bin/activate" in text


def test_requeued_job_resumes_from_its_checkpoint(tmp_path):
    def with_checkpoint(run_dir: Path) -> None:
        (run_dir / "checkpoints" / "checkpoint-40").mkdir(parents=True)

    argv = run_sbatch(tmp_path, make_job(), prepare=with_checkpoint)[0]
    assert argv[-1] == "--resume"
    (tmp_path / "fresh").mkdir()
    fresh = run_sbatch(tmp_path / "fresh", make_job())
    assert "--resume" not in fresh[0]


# ---- (c) torchrun ---------------------------------------------------------------------------------------


def test_torchrun_command_parses_with_torch(tmp_path):
    job = make_job(nodes=2, gpus_per_node=4)
    line = cluster.torchrun_command(job, main_address="10.0.0.5")
    argv = shlex.split(line)
    assert argv[0] == "torchrun"
    args = torch_run.get_args_parser().parse_args(argv[1:])
    assert (args.nnodes, args.nproc_per_node) == ("2", "4")
    assert args.rdzv_backend == "c10d" and args.rdzv_endpoint == f"10.0.0.5:{job.port}"
    assert args.rdzv_id == "ana-sft" and args.module and args.training_script == "studio"
    assert args.training_script_args[:8] == [
        "train",
        RECIPE,
        "--set",
        SETS[0],
        "--set",
        SETS[1],
        "--set",
        SETS[2],
    ]


def test_torchrun_script_expands_the_main_address_on_each_node(tmp_path):
    job = make_job(nodes=2, gpus_per_node=4)
    script = tmp_path / "run.sh"
    script.write_text(cluster.torchrun_script(job), encoding="utf-8")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "torchrun").write_text(
        f'#!/bin/bash\nprintf "%s\\0" "$@" > {tmp_path}/args\n', encoding="utf-8"
    )
    (bindir / "torchrun").chmod(0o755)
    env = {"PATH": f"{bindir}:/usr/bin:/bin", "STUDIO_HOME": "/shared/studio", "MAIN_ADDR": "node-a"}
    result = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "pwned").exists()
    argv = (tmp_path / "args").read_bytes().decode().split("\0")[:-1]
    args = torch_run.get_args_parser().parse_args(argv)
    assert args.rdzv_endpoint == f"node-a:{job.port}"
    assert args.training_script_args[-2:] == ["--run-dir", "/shared/studio/runs/ana-sft"]
    assert args.training_script_args[1] == RECIPE

    del env["MAIN_ADDR"]
    result = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60
    )
    assert result.returncode != 0 and "set MAIN_ADDR to the address of the first node" in result.stderr


@pytest.mark.parametrize("strategy", ["fsdp", "zero3"])
def test_torchrun_refuses_sharded_strategies(strategy):
    with pytest.raises(ValueError, match="torchrun starts plain DDP processes"):
        cluster.torchrun_command(make_job(strategy=strategy))


# ---- inputs and the bundle ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"job_name": "my job"}, "job name 'my job' is not allowed"),
        ({"job_name": "../evil"}, "is not allowed"),
        ({"job_name": ""}, "is not allowed"),
        ({"nodes": 0}, "nodes must be a whole number from 1 to 1024, got 0"),
        ({"nodes": True}, "nodes must be a whole number"),
        ({"gpus_per_node": -2}, "gpus_per_node must be a whole number from 1 to 64, got -2"),
        ({"gpus_per_node": 2.5}, "gpus_per_node must be a whole number"),
        ({"nodes": 1, "gpus_per_node": 1}, "not a distributed run"),
        ({"strategy": "tensor"}, "strategy 'tensor' is unknown: use one of ddp, fsdp, zero3"),
        ({"sets": ("max_steps",)}, "--set 'max_steps': write it as KEY=VALUE"),
        ({"sets": ("=3",)}, "write it as KEY=VALUE"),
        ({"sets": "max_steps=3"}, "a list of KEY=VALUE strings"),
        ({"studio_home": "shared/studio"}, "must be an absolute path that every node mounts"),
        ({"recipe": ""}, "recipe must be a non-empty path"),
        ({"recipe": "a\nb.yaml"}, "recipe must be a non-empty path on one line"),
        ({"time_limit": "forever"}, "write it as HH:MM:SS"),
        ({"port": 80}, "reserved for system services"),
        ({"port": 70000}, "port must be a whole number from 1 to 65535"),
        ({"partition": "gpu;rm"}, "partition 'gpu;rm'"),
        ({"extra_env": {"BAD NAME": "1"}}, "environment variable name 'BAD NAME'"),
    ],
)
def test_bad_inputs_say_what_to_fix(overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("$", r"\$")):
        make_job(**overrides)


def test_extra_env_is_quoted():
    text = cluster.slurm_script(make_job(extra_env={"NCCL_SOCKET_IFNAME": "ib0 eth0"}))
    assert "export NCCL_SOCKET_IFNAME='ib0 eth0'" in text


def test_write_bundle_writes_three_files_scripts_executable(tmp_path):
    written = cluster.write_bundle(tmp_path / "out", make_job())
    assert [p.name for p in written] == ["accelerate_config.yaml", "ana-sft.sbatch", "ana-sft-torchrun.sh"]
    for path in written[1:]:
        assert path.stat().st_mode & 0o111, f"{path.name} should be executable"
    assert load_config_from_file(str(written[0])).num_processes == 8

    sharded = cluster.write_bundle(tmp_path / "zero3", make_job(strategy="zero3"))
    assert [p.name for p in sharded] == ["accelerate_config.yaml", "ana-sft.sbatch"]
    assert "pip install deepspeed" in sharded[1].read_text(encoding="utf-8")


def test_cluster_command_writes_the_bundle_and_refuses_bad_counts(tmp_path):
    out = tmp_path / "bundle"
    cmd = [sys.executable, "-m", "studio", "cluster", RECIPE, "--set", "max_steps=5", "--nodes", "2",
           "--gpus-per-node", "2", "--job-name", "cli-job", "--out", str(out)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert (out / "cli-job.sbatch").exists() and "--set max_steps=5" in (out / "cli-job.sbatch").read_text()

    bad = subprocess.run([*cmd[:-2], "--out", str(out), "--nodes", "0"], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "nodes must be a whole number from 1 to 1024, got 0" in bad.stderr
    assert "Traceback" not in bad.stderr
