"""Several processes with torchrun (gloo on the CPU): DDP training on one "node" and on two
(two torchrun agents meeting at a c10d rendezvous), resume after a SIGKILL, leftovers of
killed writes, sharded prediction with kill-and-rerun, and the CV summary.

Small and shared: resnet18 at 32 px, 5 stacks of 11 frames (29 training items, an odd
number: the 2-process sampler pads one in); the runs every test compares against
(1 process, 2 processes, the 1-process prediction) are module fixtures, and what needs no
new process (one-process training, reruns, merging) runs in this one."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from napari_infection_clock.cli import main
from napari_infection_clock.core.checkpoint import load_checkpoint
from napari_infection_clock.core.model import ModelConfig, build_model
from napari_infection_clock.core.trainer import seed_everything

TRAIN = ["--arch", "resnet18", "--init", "random", "--image-size", "32", "--hidden-dim", "8",
         "--dropout", "0", "--no-augment", "--batch-size", "8", "--lr", "1e-4", "--epochs", "2",
         "--val-fraction", "0.25", "--test-fraction", "0", "--device", "cpu", "--seed", "3",
         "--best-metric", "loss", "--sync-bn", "--resume"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("WORLD_SIZE", None)
    return env


def _torchrun(nproc, *args, restarts=0):
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={nproc}", f"--max-restarts={restarts}",
            "-m", "napari_infection_clock", *map(str, args)]


def _cli(*args):
    return [sys.executable, "-m", "napari_infection_clock", *map(str, args)]


def _here(*args) -> None:
    """The command in this process (no start-up to pay), single-threaded like the workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main([str(a) for a in args]) == 0
    finally:
        torch.set_num_threads(threads)


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, **kw)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _weights(path):
    model, _ = load_checkpoint(path)
    return model.state_dict()


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist") / "data"
    assert main(["sample", str(root), "--n-infected", "3", "--n-mock", "2", "--frames", "11",
                 "--size", "32", "--seed", "3"]) == 0
    return root


@pytest.fixture(scope="module")
def two_process_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp2")
    log = _run(_torchrun(2, "train", data, "--out", out, *TRAIN))
    return out, log


@pytest.fixture(scope="module")
def one_process_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    _here("train", data, "--out", out, *TRAIN)
    return out


def _moved_apart(run_a, run_b):
    """How far two runs' final weights lie apart, relative to how far training moved them.

    AdamW's first steps are nearly sign(gradient), so float-rounding differences (the order
    of sums across two processes) flip the few elements whose gradient is about zero: the
    runs cannot agree bit for bit, but they move the weights the same way.
    """
    seed_everything(3)
    start = build_model(ModelConfig("resnet18", hidden_dim=8, dropout=0.0)).state_dict()
    a, b = (torch.load(run / "run_state.pt", weights_only=True)["model"] for run in (run_a, run_b))
    keys = [k for k in a if a[k].is_floating_point() and "running" not in k]
    flat = lambda state: torch.cat([state[k].flatten() for k in keys])  # noqa: E731
    return ((flat(a) - flat(b)).norm() / (flat(b) - flat(start)).norm()).item()


def test_two_processes_train_like_one_with_the_same_global_batch(two_process_run,
                                                                one_process_run):
    """29 training items on 2 processes: the sampler pads one in (each rank gets 15); it must
    not count twice in the last step, in its loss or its BatchNorm statistics."""
    out2, log = two_process_run
    out1 = one_process_run
    assert "global batch 8 = 2 process(es) x 4" in log
    assert "training on 29 items" in log
    assert log.count("epoch 2:") == 1  # logs from rank 0 only
    # In float64 the two runs agree to 1e-12 (same items per step, BatchNorm over the
    # global batch, the same clipping and loss averaging): what is left is float32
    # rounding, which AdamW's nearly sign(gradient) steps amplify over the 8 steps.
    # Measured (AVX2 CPU, 1 December): 0.00004 with these 29 items, 0.00002 with 22 (no
    # padding). With the padded item trained (as before it was left out): 0.31. With
    # BatchNorm statistics per process: 1.4; with the CPU sync BatchNorm's backward in
    # float32: 0.067; with the 1-process run on torch's float32 BatchNorm kernel (before one
    # process also ran the sync BatchNorm's float64 arithmetic): 0.34 with 29 items on an
    # AVX2 CPU (0.0004 on an AVX-512 one), 0.071 with 22 (0.0097).
    assert _moved_apart(out2, out1) < 0.03
    h1, h2 = pd.read_csv(out1 / "history.csv"), pd.read_csv(out2 / "history.csv")
    # Validation gathered from both ranks covers the whole validation set once.
    np.testing.assert_allclose(h2.val_loss[0], h1.val_loss[0], rtol=5e-3)
    np.testing.assert_allclose(h2.train_loss[0], h1.train_loss[0], rtol=5e-3)
    # Only rank 0 wrote into the output folder, and nothing half-written is left.
    assert sorted(p.name for p in out2.iterdir()) == [
        "history.csv", "model.pt", "run_state.pt", "splits.csv"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_meeting_at_a_rendezvous_train_like_one_node(data, two_process_run, tmp_path):
    """The multi-node form of docs/cluster.md: one torchrun agent per node (here two agents,
    each its own process, one worker each), the same command on both."""
    out = tmp_path / "two-nodes"
    agent = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",
             "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}",
             "--rdzv-id=two-nodes", "--max-restarts=0",
             "-m", "napari_infection_clock", "train", str(data), "--out", str(out), *TRAIN]
    nodes = [subprocess.Popen(agent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, env=_env()) for _ in range(2)]
    try:
        logs = [node.communicate(timeout=600)[0] for node in nodes]
    finally:  # one agent failing leaves the other waiting at the rendezvous
        for node in nodes:
            node.kill()
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(log[-3000:] for log in logs)
    assert sum(log.count("global batch 8 = 2 process(es) x 4") for log in logs) == 1
    assert sum(log.count("epoch 2:") for log in logs) == 1  # global rank 0 alone logs
    assert sorted(p.name for p in out.iterdir()) == [
        "history.csv", "model.pt", "run_state.pt", "splits.csv"]
    reference = _weights(two_process_run[0] / "model.pt")
    two_nodes = _weights(out / "model.pt")
    for key in reference:  # the same 2 processes and reductions: the very same weights
        assert torch.equal(two_nodes[key], reference[key]), key


def test_a_killed_rank_restarts_resumes_and_ends_with_the_same_weights(data, two_process_run,
                                                                       tmp_path):
    out = tmp_path / "killed"
    proc = subprocess.Popen(_torchrun(2, "train", data, "--out", out, *TRAIN, restarts=1),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env())
    state = out / "run_state.pt"
    deadline = time.monotonic() + 600
    while not state.exists():  # the first epoch is done; the second is under way
        assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()
        time.sleep(0.2)
    rank1 = _worker(proc.pid, rank=1)
    os.kill(rank1, signal.SIGKILL)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    assert "resuming after epoch 1" in log, log[-3000:]  # killed during epoch 2
    assert torch.load(state, weights_only=True)["epoch"] == 2
    history = pd.read_csv(out / "history.csv")
    assert history.epoch.tolist() == [1, 2]
    reference = _weights(two_process_run[0] / "model.pt")
    resumed = _weights(out / "model.pt")
    for key in reference:  # deterministic on the CPU: the very same weights
        assert torch.equal(resumed[key], reference[key]), key


def _worker(agent_pid, rank):
    """The pid of torchrun's worker with ``RANK=rank``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for child in Path(f"/proc/{agent_pid}/task/{agent_pid}/children").read_text().split():
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(child)
        time.sleep(0.1)
    raise AssertionError(f"no worker with RANK={rank} under torchrun {agent_pid}")


def test_a_run_state_is_not_replaced_without_resume_or_overwrite(data, two_process_run, capsys):
    out, _ = two_process_run
    before = (out / "run_state.pt").read_bytes()
    args = [a for a in TRAIN if a != "--resume"]
    assert main(["train", str(data), "--out", str(out), *args]) == 2
    assert "add --resume to continue it, or --overwrite" in capsys.readouterr().err
    assert (out / "run_state.pt").read_bytes() == before


WRITE_TERMINATED = """
import socket, sys, time
socket.gethostname = lambda: sys.argv[2]  # the node this writer runs on
from napari_infection_clock.core.run_state import save_run_state

class Stall:  # pickled while the temporary file is open
    def __reduce__(self):
        print("writing", flush=True)
        time.sleep(60)

save_run_state(sys.argv[1], {"epoch": 2, "stall": Stall()})
"""


def test_leftovers_of_a_save_killed_by_sigterm_go_when_the_run_starts_again(data, two_process_run,
                                                                            tmp_path, capsys):
    """SIGTERM during a save (a wall-time limit, torchrun stopping the group) leaves the run
    state's temporary. The resumed run removes it, also when the killed writer ran on
    another node (a requeued job) or its process id now belongs to a live process."""
    out = tmp_path / "run"
    shutil.copytree(two_process_run[0], out)
    before = (out / "run_state.pt").read_bytes()
    for node in (socket.gethostname(), "another-node"):
        writer = subprocess.Popen([sys.executable, "-c", WRITE_TERMINATED,
                                   str(out / "run_state.pt"), node],
                                  stdout=subprocess.PIPE, text=True, env=_env())
        assert writer.stdout.readline().strip() == "writing"
        writer.terminate()
        assert writer.wait() == -signal.SIGTERM
    assert len(list(out.glob(".run_state.pt.*.pt"))) == 2  # what the kills left
    live = out / f".run_state.pt.{socket.gethostname().replace('.', '-')}.{os.getpid()}.x.pt"
    live.write_bytes(b"an earlier attempt whose pid this process got (a new container)")
    _here("train", data, "--out", out, *TRAIN)  # both epochs are done: nothing to save again
    assert "resuming after epoch 2" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == [
        "history.csv", "model.pt", "run_state.pt", "splits.csv"]
    assert (out / "run_state.pt").read_bytes() == before


def test_heads_only_training_runs_under_two_processes(data, two_process_run, tmp_path, capsys):
    """Each process computes the backbone features of its half of the items; the gathered
    features train the heads as one process does."""
    args = [a for a in TRAIN if a not in ("--sync-bn",)]
    ckpt = two_process_run[0] / "model.pt"
    common = ["train", data, *args, "--checkpoint", ckpt, "--mode", "heads"]
    log = _run(_torchrun(2, *common, "--out", tmp_path / "two"))
    # 29 training and 20 validation items: rank 0 computed 15 and 10 of them
    for share in (15, 10):
        assert log.count(f"backbone features: {share} items computed by this process "
                         "(its share of 2)") == 1, log[-3000:]
    capsys.readouterr()
    _here(*common, "--out", tmp_path / "one")
    printed = capsys.readouterr().out
    for items in (29, 20):
        assert printed.count(f"backbone features: {items} items computed by this process\n") == 1
    one, two = _weights(tmp_path / "one" / "model.pt"), _weights(tmp_path / "two" / "model.pt")
    for key in one:  # the frozen backbone is the checkpoint's; the heads trained alike
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=1e-4, msg=key)


@pytest.fixture(scope="module")
def stacks(data):
    return sorted((data / "infected").glob("*.tif")) + sorted((data / "uninfected").glob("*.tif"))


@pytest.fixture(scope="module")
def single_table(two_process_run, stacks, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "all.csv"
    _here("predict", two_process_run[0] / "model.pt", *stacks, "--out", out,
          "--device", "cpu", "--tile-size", "16")
    return out


def test_sharded_prediction_under_torchrun_equals_one_process(two_process_run, stacks,
                                                              single_table, tmp_path):
    out = tmp_path / "plate.csv"
    log = _run(_torchrun(2, "predict", two_process_run[0] / "model.pt", *stacks, "--out", out,
                         "--device", "cpu", "--tile-size", "16", "--maps", tmp_path / "maps"))
    records = [json.loads(p.read_text()) for p in sorted((tmp_path / "plate.csv.parts").glob(
        "*.done.json"))]
    assert sorted(r["stack"] for r in records) == sorted(str(s.resolve()) for s in stacks)
    assert {r["shard"] for r in records} == {"0/2", "1/2"}  # both ranks worked
    assert out.read_bytes() == single_table.read_bytes(), log
    assert len(list((tmp_path / "maps").glob("*_p_infected.tif"))) == len(stacks)


def test_a_killed_shard_reruns_only_what_is_missing(two_process_run, stacks, single_table,
                                                    tmp_path, capsys):
    out = tmp_path / "plate.csv"
    parts = tmp_path / "plate.csv.parts"
    cmd = ["predict", two_process_run[0] / "model.pt", *stacks, "--out", out, "--device", "cpu",
           "--tile-size", "16"]
    proc = subprocess.Popen(_cli(*cmd, "--shard", "1/2"), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(parts.glob("*.done.json")):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    finished = {p.name: p.stat().st_mtime_ns for p in parts.glob("*.done.json")}
    assert len(finished) == 1 and not out.exists()
    capsys.readouterr()
    _here(*cmd, "--shard", "1/2")
    assert "1 already finished (skipped)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in parts.glob("*.done.json")
            if p.name in finished} == finished  # not predicted again
    assert not out.exists()  # shard 0 has not run: nothing to merge yet
    _here(*cmd, "--shard", "0/2")
    assert "wrote" in capsys.readouterr().out and out.read_bytes() == single_table.read_bytes()
    _here("merge-predictions", out)  # the command gives the same table
    assert out.read_bytes() == single_table.read_bytes()


def test_cv_report_merges_fold_reports(tmp_path, capsys):
    runs = []
    for fold, (auc, mae) in enumerate([(0.8, 2.0), (0.9, 4.0), (1.0, 6.0)]):
        report = tmp_path / f"fold{fold}" / "report"
        report.mkdir(parents=True)
        metrics = {
            "overall": {"classification": {"roc_auc": auc, "n": 10, "roc_curve": [[0, 0]]},
                        "regression": {"mae": mae}},
            "per_class": {"infected": {"regression": {"mae": mae + 1}}},
            "per_bin": [{"bin_start_h": 0.0, "bin_end_h": 6.0, "n": 5, "mae": mae / 2}],
        }
        (report / "metrics.json").write_text(json.dumps(metrics))
        runs.append(report.parent)
    assert main(["cv-report", *map(str, runs), "--out", str(tmp_path / "cv")]) == 0
    table = pd.read_csv(tmp_path / "cv" / "cv_summary.csv").set_index(["scope", "metric"])
    auc = table.loc[("overall", "classification.roc_auc")]
    assert auc["mean"] == pytest.approx(0.9) and auc["sd"] == pytest.approx(0.1)
    assert table.loc[("class infected", "regression.mae"), "mean"] == pytest.approx(5.0)
    assert table.loc[("bin 0-6 h", "mae"), "sd"] == pytest.approx(1.0)
    assert ("overall", "classification.roc_curve") not in table.index
    assert "0.900 ± 0.100" in capsys.readouterr().out
