"""Selection: the processes `top`/the exporter cover with --pids/--tree,
and a PID that comes back as another process is not the one asked for."""
from idlemap.backends.system import Selection
from idlemap.kernel.tasks import TaskInfo


def task(pid, ppid=1, start=100):
    return TaskInfo(pid, ppid, f"p{pid}", "S", start, False)


def test_given_pids_only():
    sel = Selection(pids=frozenset({10, 11}))
    assert [t.pid for t in sel.apply([task(10), task(11), task(12)])] == [10, 11]


def test_a_reused_pid_drops_out():
    sel = Selection(pids=frozenset({10, 11}), identities=frozenset({(10, 100), (11, 100)}))
    # PID 11 exited and a new process (started later) got the number.
    assert [t.pid for t in sel.apply([task(10), task(11, start=999)])] == [10]


def test_a_reused_tree_root_takes_no_new_tree():
    sel = Selection(trees=frozenset({20}), identities=frozenset({(20, 100)}))
    tasks = [task(20), task(21, ppid=20), task(22, ppid=21)]
    assert sorted(t.pid for t in sel.apply(tasks)) == [20, 21, 22]
    reused = [task(20, start=999), task(21, ppid=20), task(30)]
    assert sel.apply(reused) == []
