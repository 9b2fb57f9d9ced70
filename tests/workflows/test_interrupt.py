"""Ctrl-C during a participant run: exit 130 with one line, no traceback from any process, no process left
behind, nothing half-written under a final name.

A terminal's Ctrl-C sends SIGINT to the whole process group: the main process, the fork server (which may
still be importing torch) and the nipype workers (idle or running a node). ``timeout -s INT`` and a user
pressing Ctrl-C twice signal the main process first and the group after it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hcld_bids import _interrupt
from hcld_bids.levels import execution

REPO = Path(__file__).resolve().parents[2]


def _session_processes(sid: int) -> list[int]:
    """Live processes of session ``sid`` (zombies not counted)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def _start(bids: Path, tmp: Path) -> tuple[subprocess.Popen, Path]:
    cmd = [sys.executable, "-m", "hcld_bids", str(bids), str(tmp / "out"), "participant", "--participant-label",
           "01", "--target-site", "siteA", "-w", str(tmp / "work"), "--nprocs", "2", "--omp-nthreads", "1",
           "--skip-bids-validation", "--sloppy"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    log = tmp / "stderr.txt"

    def default_sigint():  # a shell's background job starts with SIGINT ignored; a terminal's does not
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(log, "w"), start_new_session=True,
                            preexec_fn=default_sigint)
    return proc, log


def _wait_until(proc, ready, timeout=240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            return
        assert proc.poll() is None, "the run ended before the interrupt"
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the interrupt point")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads sessions from /proc")
@pytest.mark.parametrize("twice", [False, True], ids=["ctrl-c", "main-then-group"])
def test_ctrl_c_ends_the_run_with_one_line_and_no_process_left(bids_participants, tmp_path, twice):
    proc, log = _start(bids_participants, tmp_path)
    work = tmp_path / "work" / "hcld_bids_wf" / "sub_01_wf"
    # workers busy with the registration, the fork server done importing: every kind of process is there
    _wait_until(proc, lambda: any(work.rglob("register/_node.pklz")))
    if twice:
        os.kill(proc.pid, signal.SIGINT)
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGINT)
    code = proc.wait(timeout=120)
    stderr = log.read_text()
    assert code == 130, stderr[-3000:]
    assert stderr.strip().splitlines()[-1] == "hcld-bids: error: interrupted"
    assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
    deadline = time.monotonic() + 10 * execution.ORPHAN_CHECK_S
    while _session_processes(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _session_processes(proc.pid) == [], "workers or the fork server outlived the run"
    for image in (tmp_path / "out").glob("sub-*/anat/*.nii.gz"):  # nothing half-written under a final name
        assert image.with_name(image.name.replace(".nii.gz", ".json")).is_file(), image


def _frame_in(name: str):
    """A frame whose caller chain includes a function called ``name``."""
    def inner():
        return sys._getframe()
    namespace = {"inner": inner}
    exec(f"def {name}():\n    return inner()\n", namespace)
    return namespace[name]()


def test_a_worker_running_a_node_is_interrupted_and_an_idle_one_leaves_quietly():
    with pytest.raises(KeyboardInterrupt):
        execution._worker_interrupted(signal.SIGINT, _frame_in("run_node"))
    with pytest.raises(SystemExit) as left:
        execution._worker_interrupted(signal.SIGINT, _frame_in("_process_worker"))
    assert left.value.code == 130


def test_the_worker_server_module_makes_ctrl_c_silent_unless_sigint_is_handled_already():
    script = ("import os, signal, time\nimport hcld_bids._interrupt as i\nprint(i.install(), flush=True)\n"
              "os.kill(os.getpid(), signal.SIGINT)\ntime.sleep(5)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=str(REPO)),
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # imported once (installed then), install() again finds its own handler and leaves it
    assert (out.returncode, out.stdout.split(), out.stderr) == (130, ["False"], "")
    ignored = subprocess.run([sys.executable, "-c", "import signal\nimport hcld_bids._interrupt as i\n"
                              "print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"],
                             capture_output=True, text=True, timeout=60, env=dict(os.environ, PYTHONPATH=str(REPO)),
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert ignored.stdout.split() == ["True"], ignored.stderr  # an ignored SIGINT stays ignored
    assert _interrupt.install.__module__ == "hcld_bids._interrupt"


def test_a_worker_whose_main_process_is_gone_exits():
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    script = (f"import threading, time\nfrom hcld_bids.levels import execution as e\n"
              f"threading.Thread(target=e._exit_when_orphaned, args=({gone.pid},), daemon=True).start()\n"
              "time.sleep(60)\nprint('still here')\n")
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert out.returncode == 1 and "still here" not in out.stdout
    assert time.monotonic() - t0 < 30
    assert execution._process_exists(os.getpid())


def test_a_node_stopped_by_ctrl_c_reads_as_an_interruption_not_a_failure(tmp_path):
    crash = tmp_path / "crash-1.txt"
    crash.write_text("Node: hcld_bids_wf.sub_01_wf.outputs_wf.ds_preproc\n\nTraceback (most recent call last):\n"
                     '  File "x.py", line 1, in write\nKeyboardInterrupt\n')
    failed = tmp_path / "crash-2.txt"
    failed.write_text("Node: hcld_bids_wf.sub_01_wf.t1w_wf.anat_preproc_wf.register\n\n"
                      "Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: bad header\n")
    assert execution.read_crash_file(crash) == ("hcld_bids_wf.sub_01_wf.outputs_wf.ds_preproc", "KeyboardInterrupt")
    assert execution._interrupted([failed, crash]) and not execution._interrupted([failed])
    assert execution.read_crash_file(failed)[1] == "ValueError: bad header"


def test_an_output_write_refused_permission_reads_as_exit_73_not_a_failed_step(tmp_path):
    denied = tmp_path / "crash-3.txt"
    denied.write_text("Node: hcld_bids_wf.sub_01_wf.outputs_wf.ds_preproc\n\nTraceback (most recent call last):\n"
                      "  File \"x.py\", line 1\nPermissionError: [Errno 13] Permission denied: '/out/sub-01/anat/x'\n")
    elsewhere = tmp_path / "crash-4.txt"  # a preprocessing step refused a read: not an output problem
    elsewhere.write_text("Node: hcld_bids_wf.sub_01_wf.t1w_wf.anat_preproc_wf.validate\n\nTraceback (most recent "
                         "call last):\n  File \"x.py\", line 1\nPermissionError: [Errno 13] Permission denied: 'in'\n")
    assert execution._unwritable_output([elsewhere]) is None
    crash, error = execution._unwritable_output([elsewhere, denied])
    assert crash == denied and error.startswith("PermissionError: [Errno 13]")
