"""rounds.paced: the one round loop, and how a stop request ends it (no
clock involved: interval 0 means "already due")."""
from idlemap import rounds


def test_count_and_results():
    calls = []
    out = list(rounds.paced(lambda: calls.append(1) or len(calls), 0.0, 3))
    assert out == [1, 2, 3] and not rounds.stopped()


def test_a_stop_request_ends_the_loop_after_the_round_in_progress():
    assert rounds.stop_request() is False          # no loop: the caller interrupts at once
    seen = []

    def step():
        seen.append(len(seen))
        if len(seen) == 2:
            # What cli.main's signal handler does on the first Ctrl-C ...
            assert rounds.stop_request() is True
            # ... and on a second one: interrupt now.
            assert rounds.stop_request() is False
        return len(seen)

    out = list(rounds.paced(step, 0.0, None))
    assert out == [1, 2]                            # round 2 finished and was kept
    assert rounds.stopped() and not rounds.STOP.is_set()   # cleared for the next loop


def test_a_callers_own_stop_event():
    import threading
    ev = threading.Event()
    out = []
    for r in rounds.paced(lambda: len(out), 0.0, 10, stop=ev):
        out.append(r)
        if len(out) == 4:
            ev.set()
    assert out == [0, 1, 2, 3] and rounds.stopped()


STRESS = r"""
import faulthandler, random, signal, sys, time
from idlemap import cli, rounds
faulthandler.dump_traceback_later(30, exit=True)      # a hang prints where, then exits 1
signal.signal(signal.SIGALRM, cli._on_signal)          # the handler cli.main installs
rnd, loops = random.Random(1), 0
t_end = time.monotonic() + float(sys.argv[1])
while time.monotonic() < t_end:
    try:
        signal.setitimer(signal.ITIMER_REAL, rnd.uniform(0.00002, 0.002))
        for _ in rounds.paced(lambda: None, 0.0005, None):
            pass
        loops += 1
    except KeyboardInterrupt:      # the signal came outside the loop: cli interrupts at once
        pass
signal.setitimer(signal.ITIMER_REAL, 0)
print(loops)
"""


def test_a_signal_at_any_moment_of_the_wait_stops_the_loop():
    """cli's signal handler asks the loop to stop from inside the main
    thread, between any two bytecodes -- also inside the loop's wait.  A
    threading.Event as the stop flag deadlocked there (its set() takes the
    lock its wait() holds; CI once saw `wss` ignore Ctrl-C for 120 s).
    Thousands of loops, each ended by one timer signal at a random moment."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-c", STRESS, "3"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert int(r.stdout) > 100
