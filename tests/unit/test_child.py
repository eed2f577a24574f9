"""agent.run.child.Job: output of a check or reclaim job is capped (issue 11 part 3); a stop hurries it."""

import selectors
import sys
import time

from agent.run import child as C

# A hub that answers a check with a flood: markers first, then 15 MB, then more (never reached).
FLOOD = ("import sys\n"
         "print('sshkeep-check 1 ok', flush=True)\n"
         "line = 'x' * 99 + '\\n'\n"
         "for _ in range(150000):\n"
         "    sys.stdout.write(line)\n"
         "print('sshkeep-check 2 never', flush=True)\n")


def _run(job, limit=30.0, started=False):
    assert started or job.start()
    sel = selectors.DefaultSelector()
    for fd in job.fds():
        sel.register(fd, selectors.EVENT_READ)
    deadline = time.monotonic() + limit
    while not job.check():
        assert time.monotonic() < deadline, "job did not end"
        for key, _ in sel.select(0.2):
            job.pump(key.fd)
            if key.fd not in job.fds():
                sel.unregister(key.fd)
    sel.close()


def test_flooding_job_is_ended_and_keeps_markers_and_a_tail():
    job = C.Job([sys.executable, "-c", FLOOD], timeout=60)
    _run(job)
    assert job.overflow and not job.timed_out
    assert job.returncode is not None and job.returncode != 0        # ended, not run to completion
    assert job.out[0] == "sshkeep-check 1 ok"
    assert "sshkeep-check 2 never" not in job.out
    assert len(job.out) <= C.JOB_KEEP_MARKERS + C.JOB_TAIL
    assert sum(len(l) for l in job.out) < 64 * 1024
    assert job.out[-1] == "x" * 99                                   # a short tail of what came last


def test_small_job_keeps_all_its_output():
    job = C.Job([sys.executable, "-c", "print('a'); print('sshkeep-check 1 ok'); print('b')"], timeout=20)
    _run(job)
    assert not job.overflow and job.returncode == 0
    assert job.out == ["a", "sshkeep-check 1 ok", "b"]


def test_a_hurried_job_ends_within_its_new_bound():
    """The stop path: a check with a long budget is TERMed now and gone by the shortened deadline."""
    job = C.Job([sys.executable, "-c", "import time; time.sleep(60)"], timeout=60)
    assert job.start()
    job.hurry(1.0)
    assert job.deadline <= time.monotonic() + 1.0
    _run(job, limit=10.0, started=True)
    assert job.returncode is not None and job.returncode != 0       # TERMed, not run to completion
