"""The ``ppo-edu`` command as a user meets it: typos, interrupts, a second run on one folder,
damaged files. Every user error is one line naming the option and value, exit status 2, and
nothing on disk changed."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ppo_edu import PPO
from ppo_edu.cli import build_parser, main, train
from ppo_edu.runfolder import RunLock

FAST = ["--n-envs", "8", "--n-steps", "32", "--n-epochs", "2", "--eval-episodes", "2", "--no-progress"]  # 8 x 32 = 256 steps per update


def _run(tmp_path, *extra, out="run"):
    return main(["train", "CartPole-v1", "--timesteps", "1024", "--out", str(tmp_path / out), *FAST, *extra])


def _one_line_error(capsys, *words):
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# ---------------------------------------------------------------------------- options
@pytest.mark.parametrize("argv,words", [
    (["--timesteps", "0"], ["--timesteps", "0", "from 1 to"]),
    (["--timesteps", "-5"], ["--timesteps", "-5"]),
    (["--timesteps", "1e20"], ["--timesteps", "1e20"]),
    (["--nproc", "0"], ["--nproc", "0", "from 1 to 64"]),
    (["--nproc", "-2"], ["--nproc", "-2"]),
    (["--save-every", "-1"], ["--save-every", "-1", "from 0"]),
    (["--threads", "1000"], ["--threads", "1000"]),
    (["--log-std-init", "nan"], ["--log-std-init", "nan", "finite"]),
    (["--hidden", "[1.7]"], ["--hidden", "1.7", "integer layer sizes"]),
    (["--hidden", "[1e9]"], ["--hidden", "1e9", "from 1 to 4096"]),
    (["--n-envs", "100000"], ["--n-envs", "100000", "4096"]),
    (["--seed", "-1"], ["--seed", "-1", "from 0 to"]),
    (["--seed", "1e23"], ["--seed", "1e23"]),
    (["--eval-episodes", "0"], ["--eval-episodes", "0"]),
    (["--lr", "-1"], ["PPOConfig.lr=-1", "> 0"]),
    (["--shared-network", "no"], ["unrecognized arguments: no"]),
    (["--n-envs", "4096", "--n-steps", "1000000", "--n-minibatches", "1"], ["needs about", "GiB", "--n-envs"]),
])
def test_bad_train_options_are_one_line_exit_2_and_write_nothing(tmp_path, capsys, argv, words):
    out = tmp_path / "run"
    assert _code(["train", "CartPole-v1", "--out", str(out), *argv]) == 2
    _one_line_error(capsys, *words)
    assert not out.exists()


def _code(argv) -> int:
    """main()'s exit status, whether it returns it or argparse exits with it."""
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_booleans_are_flag_pairs(tmp_path):
    assert _run(tmp_path, "--shared-network", "--no-norm-adv", "--hidden", "64", out="a") == 0
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())["config"]
    assert cfg["shared_network"] is True and cfg["norm_adv"] is False and cfg["hidden"] == [64]
    assert _run(tmp_path, "--no-shared-network", "--hidden", "[32, 16]", out="b") == 0
    cfg = json.loads((tmp_path / "b" / "config.json").read_text())["config"]
    assert cfg["shared_network"] is False and cfg["hidden"] == [32, 16]


def test_a_value_far_outside_every_preset_is_warned_about(tmp_path, capsys):
    assert _run(tmp_path, "--lr", "1e10") == 0
    err = capsys.readouterr().err
    from ppo_edu.ppo import PPOConfig, PRESETS
    lrs = [c.lr for c, _ in PRESETS.values()] + [PPOConfig().lr]   # the presets and the defaults
    assert f"warning: --lr 1e+10 is far outside every preset ({min(lrs):g} to {max(lrs):g})" in err


@pytest.mark.parametrize("argv,words", [
    (["--device", "tpu"], ["--device", "tpu", "auto, cpu, cuda"]),
    (["--ppo-iterations", "0"], ["--ppo-iterations", "0"]),
    (["--ppo-iterations", "-3"], ["--ppo-iterations", "-3"]),
    (["--grpo-steps", "0"], ["--grpo-steps", "0"]),
    (["--preset", "huge"], ["--preset", "huge", "micro"]),
    (["--seed", "-1"], ["--seed", "-1"]),
])
def test_bad_rlhf_options_fail_before_any_work(tmp_path, capsys, argv, words):
    out = tmp_path / "run"
    t0 = time.perf_counter()
    assert _code(["rlhf", "--out", str(out), "--cache", str(tmp_path / "cache"), *argv]) == 2
    assert time.perf_counter() - t0 < 20
    _one_line_error(capsys, *words)
    assert not out.exists() and not (tmp_path / "cache").exists()


def test_rlhf_cuda_without_a_gpu_and_folders_that_are_files(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    if not torch.cuda.is_available():
        assert main(["rlhf", "--device", "cuda", "--out", str(tmp_path / "r")]) == 2
        _one_line_error(capsys, "--device cuda", "0 CUDA GPU")
    assert main(["rlhf", "--cache", str(afile), "--out", str(tmp_path / "r")]) == 2
    _one_line_error(capsys, "--cache", "is a file")
    assert main(["rlhf", "--out", str(afile)]) == 2
    _one_line_error(capsys, "--out", "is a file")
    assert main(["train", "CartPole-v1", "--out", str(afile)]) == 2
    _one_line_error(capsys, "--out", "is a file")
    assert afile.read_text() == "keep me"


def test_an_existing_rlhf_run_is_refused_unless_overwrite(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    assert main(["rlhf", "--preset", "micro", "--out", str(out)]) == 2
    _one_line_error(capsys, "already holds an RLHF run", "--overwrite")
    assert (out / "summary.json").read_text() == "{}"


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs a read-only /proc")
def test_unwritable_out_is_refused(capsys):
    assert main(["train", "CartPole-v1", "--out", "/proc/ppo-edu-run"]) == 2
    _one_line_error(capsys, "--out", "cannot be written")


def test_eval_bad_seed_and_missing_run(tmp_path, capsys):
    assert _code(["eval", str(tmp_path), "--seed", "-1"]) == 2
    _one_line_error(capsys, "--seed", "-1")
    assert main(["eval", str(tmp_path / "missing")]) == 2
    _one_line_error(capsys, "missing", "does not exist")


# ---------------------------------------------------------------------------- run folders
def test_an_existing_run_is_refused_unless_overwrite(tmp_path, capsys):
    assert _run(tmp_path) == 0
    out = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert _run(tmp_path, "--seed", "1") == 2
    _one_line_error(capsys, "already holds a run", "--overwrite", "--resume")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert _code(["train", "CartPole-v1", "--out", str(out), "--overwrite", "--hidden", "[1e9]"]) == 2
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # a refused --overwrite deletes nothing
    # --overwrite replaces every file: a failing new run leaves no old eval.json beside it
    args = build_parser().parse_args(["train", "CartPole-v1", "--timesteps", "1024", "--out", str(out),
                                      "--overwrite", *FAST])

    def boom(agent, row):
        raise RuntimeError("injected")

    with pytest.raises(RuntimeError):
        train(args, extra_callback=boom)
    assert sorted(os.listdir(out)) == ["config.json", "metrics.csv", "status.json"]
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "failed" and "injected" in status["error"] and status["n_updates"] == 1


def test_a_locked_folder_is_refused(tmp_path, capsys):
    out = tmp_path / "run"
    with RunLock(out):
        assert _run(tmp_path) == 2
        _one_line_error(capsys, "is in use by another run", f"process {os.getpid()}")
        assert main(["train", "--resume", str(out)]) == 2
        _one_line_error(capsys, "in use")
    assert _run(tmp_path) == 0 and not (out / ".lock").exists()


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        assert _run(tmp_path) == 0
    finally:
        os.umask(old)
    for p in (tmp_path / "run").iterdir():
        assert p.stat().st_mode & 0o777 == 0o640, p.name


def _interrupt_at(update, signum, out, rows_seen):
    def cb(agent, row):
        rows_seen.append(len((out / "metrics.csv").read_text().splitlines()) - 1)  # written as training goes
        if agent.n_updates == update:
            os.kill(os.getpid(), signum)
    return cb


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_finishes_the_update_saves_and_resume_ends_with_the_same_weights(tmp_path, capsys, signum):
    argv = ["train", "CartPole-v1", "--timesteps", "2560", *FAST, "--seed", "3"]
    assert main([*argv, "--out", str(tmp_path / "full")]) == 0
    out = tmp_path / "cut"
    (tmp_path / "cut").mkdir()
    (out / ".model.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")  # left by a SIGKILLed save
    seen = []
    code = train(build_parser().parse_args([*argv, "--out", str(out)]), _interrupt_at(4, signum, out, seen))
    assert code == 128 + signum
    assert seen == [1, 2, 3, 4]
    status = json.loads((out / "status.json").read_text())
    assert status == {"status": "interrupted", "signal": signal.Signals(signum).name, "num_timesteps": 4 * 256,
                      "n_updates": 4, "total_timesteps": 2560}
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + 4
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    assert PPO.load(out / "model.pt").n_updates == 4
    assert "continue with: ppo-edu train --resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(out), "--no-progress", "--eval-episodes", "2"]) == 0
    full, cut = PPO.load(tmp_path / "full" / "model.pt"), PPO.load(out / "model.pt")
    for (name, a), b in zip(full.model.named_parameters(), cut.model.parameters()):
        assert torch.equal(a, b), name
    assert json.loads((out / "status.json").read_text())["status"] == "finished"
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 10 and [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(1, 11)]


def test_resume_redoes_the_updates_after_the_last_checkpoint(tmp_path):
    """A SIGKILL after update 5 with --save-every 2: resume from update 4, metrics rows 5 dropped."""
    argv = ["train", "CartPole-v1", "--timesteps", "2048", *FAST, "--out", str(tmp_path / "run"), "--save-every", "2"]

    def kill(agent, row):
        if agent.n_updates == 5:
            raise KeyboardInterrupt  # the abrupt end of a process, after update 5's row was written

    with pytest.raises(KeyboardInterrupt):
        train(build_parser().parse_args(argv), kill)
    assert len((tmp_path / "run" / "metrics.csv").read_text().splitlines()) == 1 + 5
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "failed" and status["n_updates"] == 5
    assert status["checkpoint"] == {"num_timesteps": 4 * 256, "n_updates": 4}  # what model.pt holds
    assert main(["train", "--resume", str(tmp_path / "run"), "--no-progress"]) == 0
    rows = (tmp_path / "run" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == [str(i) for i in range(1, 9)]


@pytest.mark.parametrize("setup,words", [
    ("nothing", ["not a folder"]),
    ("empty", ["holds no config.json"]),
    ("bad-config", ["config.json", "damaged"]),
    ("with-option", ["drop --lr"]),
    ("finished", ["already trained", "--timesteps"]),
])
def test_resume_errors(tmp_path, capsys, setup, words):
    run = tmp_path / "run"
    extra = []
    if setup != "nothing":
        run.mkdir()
    if setup in ("bad-config", "with-option", "finished"):
        assert _run(tmp_path) == 0
        capsys.readouterr()
    if setup == "bad-config":
        (run / "config.json").write_text("{not json")
    if setup == "with-option":
        extra = ["--lr", "1e-3"]
    assert main(["train", "--resume", str(run), *extra]) == 2
    _one_line_error(capsys, *words)


def test_sigterm_to_a_real_process(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-m", "ppo_edu.cli", "train", "CartPole-v1", "--timesteps", "1000000",
                             "--out", str(out), "--no-progress"], env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "metrics.csv").exists() or \
            len((out / "metrics.csv").read_text().splitlines()) < 3:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    status = json.loads((out / "status.json").read_text())
    assert status["status"] == "interrupted" and status["n_updates"] >= 2
    assert len((out / "metrics.csv").read_text().splitlines()) == 1 + status["n_updates"]
