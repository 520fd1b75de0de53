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
