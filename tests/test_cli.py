"""The command-line twins of the UI's actions, run through `python -m studio`'s own registry:
each does what the matching button does, prints where the result is, and exits non-zero with a
one-line reason when something is wrong."""

from __future__ import annotations

import json
import zipfile

from studio import cli, workspace
from studio.data import store
from studio.prefs import store as prefs
from studio.publish import hub
from tests.support.runfolder import build_run

ASK = [{"role": "user", "content": "What is the capital of France?"}]


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_data_save_lists_the_dataset_for_the_train_tab(tmp_path, capsys):
    rows = [{"instruction": f"Question {i}?", "output": f"Short answer: {i}."} for i in range(3)]
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, out, _ = _run(["data", "save", str(path), "mine"], capsys)
    assert code == 0 and "saved mine: 3 sft rows" in out
    assert [(e.name, e.rows, e.kind) for e in store.list_saved()] == [("mine", 3, "sft")]
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"instruction": "Q", "output": ""}\n')
    code, _, err = _run(["data", "save", str(empty), "broken"], capsys)
    assert code == 1 and "empty.jsonl has no usable rows" in err and len(store.list_saved()) == 1


def test_votes_list_report_export_save_and_delete(tmp_path, capsys):
    first = prefs.record_vote(ASK, "Paris.", "Lyon.", "A", model_a="default", model_b="default")
    prefs.record_vote(ASK, "Paris!", "Rome.", "B", model_a="default", model_b="default")
    code, out, _ = _run(["votes", "list"], capsys)
    assert code == 0 and len(out.strip().splitlines()) == 2 and "capital of France" in out
    code, out, _ = _run(["votes", "report"], capsys)
    assert code == 0 and out.startswith("2 votes: 2 decisive")
    target = tmp_path / "pairs.jsonl"
    code, out, _ = _run(["votes", "export", str(target), "--kind", "dpo"], capsys)
    records = [json.loads(line) for line in target.read_text().splitlines()]
    assert code == 0 and "2 records" in out
    assert sorted(r["chosen"][0]["content"] for r in records) == ["Paris.", "Rome."]
    code, out, _ = _run(["votes", "save", "chat-pairs", "--kind", "dpo"], capsys)
    assert code == 0 and [(e.name, e.kind, e.rows) for e in store.list_saved()] == [
        ("chat-pairs", "preference", 2)
    ]
    code, _, _ = _run(["votes", "delete", str(first)], capsys)
    assert code == 0 and prefs.count() == 1


def test_runs_list_and_delete_need_confirmation(tiny_model, capsys):
    build_run(workspace.runs_dir(), tiny_model, run_id="done-run")
    code, out, _ = _run(["runs", "list"], capsys)
    assert code == 0 and out.startswith("done-run") and " completed" in out.splitlines()[0]
    code, _, err = _run(["runs", "delete", "done-run"], capsys)
    assert code == 1 and "--yes" in err and workspace.run_path("done-run").is_dir()
    code, _, _ = _run(["runs", "delete", "done-run", "--yes"], capsys)
    assert code == 0 and not workspace.run_path("done-run").exists()
    code, _, err = _run(["runs", "stop", "no-such-run"], capsys)
    assert code == 1 and "no run 'no-such-run'" in err


def test_export_zip_and_merge_of_a_finished_run(tiny_model, capsys):
    run = build_run(workspace.runs_dir(), tiny_model, run_id="run-1")
    code, out, _ = _run(["export", "zip", "run-1"], capsys)
    assert code == 0 and out.strip().endswith("run-1-adapter.zip")
    assert "adapter_model.safetensors" in zipfile.ZipFile(out.strip()).namelist()
    code, out, _ = _run(["export", "merge", str(run)], capsys)
    assert code == 0 and (workspace.exports_dir() / "run-1-merged" / "model.safetensors").is_file()
    build_run(workspace.runs_dir(), tiny_model, run_id="busy", state="running")
    code, _, err = _run(["export", "zip", "busy"], capsys)
    assert code == 1 and "export failed: " in err and "only a finished run can be exported" in err


def test_token_status_and_forget(monkeypatch, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setenv("HF_HOME", str(workspace.home() / "hf"))
    hub.remember_token("hf_" + "a" * 34)
    code, out, _ = _run(["token", "status"], capsys)
    assert code == 0 and "Using hf_" in out and "a" * 34 not in out
    code, _, _ = _run(["token", "forget"], capsys)
    code, out, _ = _run(["token", "status"], capsys)
    assert code == 0 and out.startswith("No Hugging Face token")
