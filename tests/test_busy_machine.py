"""A busy machine is said, with what --threads would do (engine/runtime.py), without changing the
thread count behind the user's back (that would change the losses' bits)."""

import subprocess
import sys
import time

from tui_trainer.engine.runtime import busy_machine_note, cores_busy_elsewhere


def test_an_idle_machine_gets_no_note():
    assert busy_machine_note(threads=2, cores=2, busy_elsewhere=0.1) is None
    assert busy_machine_note(threads=2, cores=2, busy_elsewhere=None) is None
    assert busy_machine_note(threads=4, cores=16, busy_elsewhere=3.0) is None  # cores to spare


def test_a_busy_machine_names_the_load_and_the_threads_that_fit():
    note = busy_machine_note(threads=2, cores=2, busy_elsewhere=1.0)
    assert note is not None and "~1.0 of its 2 cores" in note and "--threads 1" in note
    note = busy_machine_note(threads=1, cores=2, busy_elsewhere=1.8)
    assert note is not None and "--threads" not in note  # one thread is already the least


def test_a_competing_process_is_measured():
    spinner = subprocess.Popen([sys.executable, "-c", "import time\nend = time.time() + 20\nwhile time.time() < end: pass"])
    try:
        time.sleep(0.3)
        busy = cores_busy_elsewhere(window_seconds=0.5)
    finally:
        spinner.kill()
        spinner.wait()
    assert busy is not None and busy >= 0.6, busy
