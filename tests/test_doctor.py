"""`dreamlab doctor`: one line per check with a fix; exit code 1 only on failures."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from dreamlab import doctor
from dreamlab.cli import app
from dreamlab.models import build_char_tokenizer, build_tiny_model
from dreamlab.store import RunStore

runner = CliRunner()


def run_doctor(*args: str):
    result = runner.invoke(app, ["doctor", *args, "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    report = json.loads(result.output)
    return result.exit_code, report, {check["name"]: check for check in report["checks"]}


def test_a_healthy_store_passes_and_warnings_do_not_fail(tmp_path):
    db = tmp_path / "runs" / "dreamlab.db"
    RunStore(db).create_run(name="one")
    code, report, checks = run_doctor("--db", str(db), "--model", "tiny")
    assert checks["store"]["status"] == "ok" and "1 runs" in checks["store"]["message"]
    assert checks["model"]["status"] == "ok" and checks["tokenizer"]["status"] == "ok"
    assert checks["python"]["status"] == "ok" and checks["torch"]["status"] == "ok"
    assert {"cuda", "gpu memory", "nccl", "disk"} <= set(checks)
    assert report["status"] != "fail" and code == 0


def test_a_missing_store_is_fine_and_a_broken_one_fails_with_a_fix(tmp_path):
    _, _, checks = run_doctor("--db", str(tmp_path / "none" / "dreamlab.db"))
    assert checks["store"]["status"] == "ok" and "no store yet" in checks["store"]["message"]
    broken = tmp_path / "broken.db"
    broken.write_bytes(b"this is not a database" * 100)
    code, report, checks = run_doctor("--db", str(broken))
    assert checks["store"]["status"] == "fail" and checks["store"]["fix"]
    assert report["status"] == "fail" and code == 1


def test_a_data_file_in_the_wrong_format_fails_and_a_convertible_one_warns(tmp_path):
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"text": "2 + 2 = 4", "label": 1}) + "\n")
    s1k = tmp_path / "s1k.jsonl"
    s1k.write_text(json.dumps({"question": "2 + 2?", "thinking_trajectories": ["add"], "attempt": "4"}) + "\n")
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "2 + 2?", "response": "<think>add</think>4"}) + "\n")
    bad_row = tmp_path / "bad_row.jsonl"
    bad_row.write_text(json.dumps({"prompt": 7, "response": "4"}) + "\n")
    for path, status, words in ((wrong, "fail", "not in Dream's format"), (s1k, "warn", "is s1k"),
                                (good, "ok", "1 rows in Dream's format"), (bad_row, "fail", "bad Dream row")):
        code, report, checks = run_doctor("--db", str(tmp_path / "db" / "dreamlab.db"), "--data", str(path))
        assert checks["data"]["status"] == status, checks["data"]
        assert words in checks["data"]["message"]
        assert (code == 1) == (status == "fail")
        if status != "ok":
            assert "dreamlab data prepare" in checks["data"]["fix"]


def test_a_tokenizer_without_a_mask_token_fails(tmp_path):
    folder = tmp_path / "no-mask"
    tokenizer = build_char_tokenizer()
    tokenizer.mask_token = None
    tokenizer.save_pretrained(folder)
    code, _, checks = run_doctor("--db", str(tmp_path / "db" / "dreamlab.db"), "--tokenizer", str(folder))
    assert checks["tokenizer"]["status"] == "fail" and "no mask token" in checks["tokenizer"]["message"]
    assert "mask" in checks["tokenizer"]["fix"] and code == 1


def test_an_instruct_model_warns_where_base_is_expected(tmp_path):
    folder = tmp_path / "Dream-v0-Instruct-tiny"
    build_tiny_model(seed=0).save_pretrained(folder)
    build_char_tokenizer().save_pretrained(folder)
    code, _, checks = run_doctor("--db", str(tmp_path / "db" / "dreamlab.db"), "--model", str(folder))
    assert checks["model"]["status"] == "warn" and "Instruct" in checks["model"]["message"]
    assert "Base" in checks["model"]["fix"]
    assert checks["tokenizer"]["status"] == "ok"  # read from the model folder
    base = tmp_path / "Dream-v0-Base-tiny"
    folder.rename(base)
    _, _, checks = run_doctor("--db", str(tmp_path / "db" / "dreamlab.db"), "--model", str(base), "--expect", "base")
    assert checks["model"]["status"] == "ok"
    _, _, checks = run_doctor("--db", str(tmp_path / "db" / "dreamlab.db"), "--model", str(tmp_path / "missing"))
    assert checks["model"]["status"] == "fail"


def test_the_plain_report_has_one_line_per_check_with_its_fix(tmp_path):
    wrong = tmp_path / "wrong.jsonl"
    wrong.write_text(json.dumps({"text": "x"}) + "\n")
    result = runner.invoke(app, ["doctor", "--db", str(tmp_path / "db" / "dreamlab.db"), "--data", str(wrong)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    line = next(line for line in result.output.splitlines() if line.startswith("FAIL data:"))
    assert "-> " in line and "dreamlab data prepare" in line
    assert result.output.rstrip().splitlines()[-1].endswith("1 failures")


def test_gpu_memory_reads_nvml_devices_and_warns_on_small_ones():
    from dreamlab.gpu import DeviceReading, GpuSnapshot

    small = GpuSnapshot(devices=[DeviceReading(index=0, name="T4", memory_used_mib=1024, memory_total_mib=16 * 1024)])
    big = GpuSnapshot(devices=[DeviceReading(index=0, name="H100", memory_used_mib=0, memory_total_mib=80 * 1024)])
    assert doctor.check_gpu_memory(small).status == "warn"
    assert doctor.check_gpu_memory(big).status == "ok" and "80.0 GiB" in doctor.check_gpu_memory(big).message
    assert doctor.check_gpu_memory(GpuSnapshot(unavailable="unavailable: no driver")).status == "warn"
    assert doctor.check_nccl(cuda=False).status == "ok"


def test_doctor_and_demo_do_not_load_textual(tmp_path):
    import subprocess
    import sys

    commands = [["doctor", "--db", str(tmp_path / "x.db"), "--model", "tiny"], ["demo", "--steps", "x", "--db", str(tmp_path / "x.db")]]
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom dreamlab.cli import app\n"
        f"for args in {commands!r}:\n    CliRunner().invoke(app, args)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', 'textual_plotext')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]", out.stdout
