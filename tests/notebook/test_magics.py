"""The extension and its magics, driven through a real IPython ``InteractiveShell``."""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell

import nbdurable
from nbdurable import _store
from nbdurable._cellstep import CELL_FUNCTION, CELL_STEP, assigned_names
from nbdurable._magics import NbdurableMagics
from nbdurable._process import STATE
from nbdurable._text import table
from nbdurable.testing import FakeClock
from tests.shell import real_shell

DEFINE = """
import nbdurable
client = nbdurable.Client("nb", backoff=nbdurable.Backoff(initial=0, jitter=0))
calls = []
stop = set()

def work(name):
    calls.append(name)
    if name in stop:
        stop.discard(name)
        raise KeyboardInterrupt
    return name.upper()

@client.create_function(fn_id="etl", retries=1)
def etl(ctx):
    return [ctx.step.run(s, work, s) for s in ("a", "b", "c")]
"""


@pytest.fixture
def ip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[InteractiveShell]:
    """A real shell; the extension is unloaded after."""
    yield from real_shell(tmp_path, monkeypatch)


def interrupted_etl(ip: InteractiveShell, at: str) -> str:
    """Load the extension, define `etl` and stop it with Ctrl-C in step ``at``; the run's id."""
    load(ip)
    ip.run_cell(DEFINE)
    ip.user_ns["stop"].add(at)
    with pytest.raises(KeyboardInterrupt):
        ip.user_ns["etl"].run()
    return str(ip.user_ns["client"].runs()[0].id)


def load(ip: InteractiveShell) -> NbdurableMagics:
    ip.run_line_magic("load_ext", "nbdurable")
    magics = ip.magics_manager.registry["NbdurableMagics"]
    assert isinstance(magics, NbdurableMagics)
    return magics


def restart(ip: InteractiveShell, keep: tuple[str, ...] = ()) -> NbdurableMagics:
    """What a kernel restart does to the extension: everything in memory is gone, the store stays."""
    ip.extension_manager.unload_extension("nbdurable")
    saved = {k: ip.user_ns[k] for k in keep}
    ip.reset(new_session=False)
    ip.user_ns.update(saved)
    for path in list(STATE.open_stores):
        _store.Store.forget(path)
    return load(ip)


# -- load / unload -------------------------------------------------------------------------


def test_load_registers_the_magics(ip) -> None:
    """Loading adds %nbdurable and %%step (and no run hook); unloading removes exactly those."""
    before = list(STATE.run_hooks)
    magics = load(ip)
    assert ip.magics_manager.magics["line"]["nbdurable"].__self__ is magics
    assert ip.magics_manager.magics["cell"]["step"].__self__ is magics
    assert STATE.run_hooks == before
    ip.run_line_magic("unload_ext", "nbdurable")
    assert "nbdurable" not in ip.magics_manager.magics["line"]
    assert "step" not in ip.magics_manager.magics["cell"]
    assert "NbdurableMagics" not in ip.magics_manager.registry
    assert STATE.run_hooks == before


def test_reload_leaves_one_copy_of_every_hook(ip) -> None:
    """%reload_ext twice still leaves one magics object and working magics."""
    load(ip)
    ip.run_line_magic("reload_ext", "nbdurable")
    ip.run_line_magic("reload_ext", "nbdurable")
    magics = ip.magics_manager.registry["NbdurableMagics"]
    assert ip.magics_manager.magics["line"]["nbdurable"].__self__ is magics
    nbdurable.load_ipython_extension(ip)  # loading twice directly behaves the same
    again = ip.magics_manager.registry["NbdurableMagics"]
    assert ip.magics_manager.magics["line"]["nbdurable"].__self__ is again
    assert ip.magics_manager.magics["cell"]["step"].__self__ is again


def test_import_nbdurable_exposes_lazy_hooks() -> None:
    """The extension hooks are public names of the package."""
    assert {"load_ipython_extension", "unload_ipython_extension"} <= set(nbdurable.__all__)


def test_load_names_interrupted_runs_and_how_to_resume(ip, capsys) -> None:
    """A store holding an interrupted run gets a one-line notice on load."""
    run_id = interrupted_etl(ip, at="b")
    capsys.readouterr()
    restart(ip)
    out = capsys.readouterr().out
    assert out == (
        f"nbdurable: 1 interrupted run in the store (etl/{run_id}); resume with `%nbdurable resume --all` "
        "(functions must be defined) or re-run their cells.\n"
    )


def test_load_is_silent_without_interrupted_runs(ip, capsys, tmp_path) -> None:
    """No notice, and no store directory created, when there is nothing to say."""
    load(ip)
    assert capsys.readouterr().out == ""
    assert not (tmp_path / "store").exists()


# -- %nbdurable --------------------------------------------------------------------------------


def test_runs_lists_runs_as_a_table(ip, capsys) -> None:
    """`runs` prints a table (text in a terminal) with the function, id and status; filters apply."""
    load(ip)
    ip.run_cell(DEFINE)
    ip.user_ns["etl"].run()
    run_id = ip.user_ns["client"].runs()[0].id
    capsys.readouterr()
    ip.run_line_magic("nbdurable", "runs")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["app", "function", "run", "status", "steps", "took", "updated", "size"]
    assert lines[1].split()[:5] == ["nb", "etl", run_id, "COMPLETED", "3"]
    ip.run_line_magic("nbdurable", "runs etl --status failed")
    assert capsys.readouterr().out == "no runs of 'etl' with status FAILED\n"
    with pytest.raises(UsageError, match="unknown status 'nope'"):
        ip.run_line_magic("nbdurable", "runs --status nope")


def test_tables_render_as_html_for_notebooks() -> None:
    """The bundle behind every table carries HTML (notebooks) and aligned text (terminals)."""
    bundle = table(["a", "b"], [["1", "<x>"]])
    assert bundle["text/html"] == (
        "<table><thead><tr><th style='text-align:left'>a</th><th style='text-align:left'>b</th></tr></thead>"
        "<tr><td style='text-align:left'>1</td><td style='text-align:left'>&lt;x&gt;</td></tr></table>"
    )
    assert bundle["text/plain"] == "a  b\n1  <x>"


def test_show_prints_a_run_and_its_steps(ip, capsys) -> None:
    """`show` accepts the first characters of a run id and lists the run's steps with their sizes on disk."""
    load(ip)
    ip.run_cell(DEFINE)
    ip.user_ns["etl"].run()
    run_id = ip.user_ns["client"].runs()[0].id
    capsys.readouterr()
    ip.run_line_magic("nbdurable", f"show {run_id[:6]}")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"etl / {run_id}: COMPLETED")
    assert [line.split()[:4] for line in out[2:5]] == [
        ["\u2714", "a", "completed", "1/1"],
        ["\u2714", "b", "completed", "1/1"],
        ["\u2714", "c", "completed", "1/1"],
    ]
    assert all(line.split()[-1] == "B" for line in out[2:5])  # e.g. "182 B"
    assert out[5].startswith("on disk: ")
    with pytest.raises(UsageError, match="no run 'zzz'"):
        ip.run_line_magic("nbdurable", "show zzz")


def test_resume_executes_an_interrupted_run_from_where_it_stopped(ip, capsys) -> None:
    """`resume RUN` replays finished steps and executes the interrupted one and the rest."""
    run_id = interrupted_etl(ip, at="b")
    assert ip.user_ns["calls"] == ["a", "b"]
    ip.run_line_magic("nbdurable", f"resume {run_id}")
    assert ip.user_ns["calls"] == ["a", "b", "b", "c"]
    assert capsys.readouterr().out.endswith(f"etl/{run_id}: COMPLETED\n")


def test_resume_all_needs_the_function_defined(ip, capsys) -> None:
    """`resume --all` after a restart skips, naming it, a run whose function is not defined yet."""
    interrupted_etl(ip, at="a")
    restart(ip)
    capsys.readouterr()
    ip.run_line_magic("nbdurable", "resume --all")
    assert "skipped; function 'etl' (app 'nb') is not defined in this kernel" in capsys.readouterr().out
    run_id = nbdurable.Client("nb").runs("etl")[0].id
    with pytest.raises(UsageError, match="function 'etl' \\(app 'nb'\\) is not defined in this kernel"):
        ip.run_line_magic("nbdurable", f"resume etl/{run_id}")
    ip.run_cell(DEFINE)
    ip.run_line_magic("nbdurable", "resume --all")
    assert ip.user_ns["calls"] == ["a", "b", "c"]


def test_invalidate_from_a_step_makes_it_and_later_steps_execute_again(ip, capsys) -> None:
    """`invalidate FN --from STEP` forgets that step and the ones after it."""
    load(ip)
    ip.run_cell(DEFINE)
    ip.user_ns["etl"].run()
    ip.run_line_magic("nbdurable", "invalidate etl --from b")
    assert "forgot 2 step(s): b, c" in capsys.readouterr().out
    ip.user_ns["etl"].run()
    assert ip.user_ns["calls"] == ["a", "b", "c", "b", "c"]
    with pytest.raises(UsageError, match="no stored step 'x'"):
        ip.run_line_magic("nbdurable", "invalidate etl --from x")


def test_clear_deletes_a_functions_runs(ip, capsys) -> None:
    """`clear FN` deletes its runs; `clear` without a target is a usage error."""
    load(ip)
    ip.run_cell(DEFINE)
    ip.user_ns["etl"].run()
    ip.run_line_magic("nbdurable", "clear etl")
    assert capsys.readouterr().out == "cleared 1 run(s) of 'etl'\n"
    assert ip.user_ns["client"].runs() == []
    with pytest.raises(UsageError, match="give a function id or --all"):
        ip.run_line_magic("nbdurable", "clear")


def test_store_shows_and_switches_the_store(ip, capsys, tmp_path, monkeypatch) -> None:
    """`store` names the store; `store PATH` makes new clients and cell steps use PATH."""
    magics = load(ip)
    ip.run_line_magic("nbdurable", "store")
    assert capsys.readouterr().out == f"store: {tmp_path / 'store'} (0 runs)\n"
    ip.run_line_magic("nbdurable", f"store {tmp_path / 'other'}")
    assert nbdurable.Client("x").store_path == str(tmp_path / "other")
    assert magics.cells.client(magics.commands.store_path).store_path == str(tmp_path / "other")
    monkeypatch.setenv("NBDURABLE_STORE", str(tmp_path / "store"))  # restored for the teardown


def test_send_parses_json_and_sends(ip, capsys) -> None:
    """`send NAME JSON` sends one event (JSON bare or quoted as for a shell); non-objects are refused."""
    load(ip)
    ip.run_cell(
        "import nbdurable\nclient = nbdurable.Client('nb')\ngot = []\n"
        "@client.create_function(fn_id='hear', trigger=nbdurable.TriggerEvent(event='app/x'))\n"
        "def hear(ctx):\n    got.append(ctx.event.data)\n"
    )
    with pytest.raises(UsageError, match=r"the data must be a JSON object"):
        ip.run_line_magic("nbdurable", "send app/x [1]")
    ip.run_line_magic("nbdurable", 'send app/x {"a": 1}')
    ip.run_line_magic("nbdurable", """send app/x '{"a": 2}'""")
    assert capsys.readouterr().out.startswith("sent 'app/x' (")
    from tests.waiting import eventually

    eventually(lambda: len(ip.user_ns["got"]) == 2)
    assert sorted(d["a"] for d in ip.user_ns["got"]) == [1, 2]


def test_help_and_unknown_commands(ip, capsys) -> None:
    """`help` documents every command; an unknown one is a usage error pointing to help."""
    load(ip)
    ip.run_line_magic("nbdurable", "help")
    out = capsys.readouterr().out
    for command in ("runs", "show", "resume", "invalidate", "clear", "store", "send", "help", "%%step"):
        assert command in out
    with pytest.raises(UsageError, match=r"unknown command 'bogus'\. See %nbdurable help"):
        ip.run_line_magic("nbdurable", "bogus")


# -- %%step ------------------------------------------------------------------------------------


class Hits:
    """Counts cell executions; its content fingerprint never changes, so it is no dataflow input."""

    def __init__(self) -> None:
        self.items: list[object] = []

    def append(self, item: object) -> None:
        self.items.append(item)

    def __len__(self) -> int:
        return len(self.items)

    def __eq__(self, other: object) -> bool:
        return self.items == other

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple[type, tuple[()]]:
        return (Hits, ())


LOAD = """
import math
hits.append("load")
data = [1, 2, 3]
total: int = sum(data)
total += 1
def double(x):
    return 2 * x
class Box:
    value = 7
box = Box()
"""


def test_cell_step_runs_once_then_restores(ip, capsys) -> None:
    """The second run of a cell step restores its names without executing it, and says so."""
    load(ip)
    ip.user_ns["hits"] = Hits()
    ip.run_cell_magic("step", "load", LOAD)
    ip.user_ns["data"] = None
    ip.run_cell_magic("step", "load", LOAD)
    assert ip.user_ns["hits"] == ["load"]
    assert ip.user_ns["data"] == [1, 2, 3]
    assert ip.user_ns["total"] == 7
    out = capsys.readouterr().out
    assert out.startswith("%%step load: restored math, data, total, double, Box, box from ")
    assert "(the cell took " in out


def test_cell_step_restores_after_a_restart(ip) -> None:
    """After a restart, the same cell restores modules, values, defs and instances of its classes."""
    load(ip)
    ip.user_ns["hits"] = Hits()
    ip.run_cell_magic("step", "load", LOAD)
    hits = ip.user_ns["hits"]
    restart(ip, keep=("hits",))
    assert "data" not in ip.user_ns
    ip.run_cell_magic("step", "load", LOAD)
    assert hits == ["load"]
    ns = ip.user_ns
    assert (ns["data"], ns["total"], ns["double"](4), ns["box"].value, ns["math"].pi) == (
        [1, 2, 3],
        7,
        8,
        7,
        ns["math"].pi,
    )
    assert isinstance(ns["box"], ns["Box"])


def test_editing_a_cell_step_executes_it_and_the_ones_after_it(ip, capsys) -> None:
    """Changing an earlier cell step re-executes it and every cell step after it; unchanged ones restore."""
    load(ip)
    ip.user_ns["hits"] = Hits()
    a1 = "hits.append('a'); x = 1"
    a2 = "hits.append('a'); x = 2"
    b = "hits.append('b'); y = x * 10"
    ip.run_cell_magic("step", "a", a1)
    ip.run_cell_magic("step", "b", b)
    ip.run_cell_magic("step", "a", a1)
    ip.run_cell_magic("step", "b", b)
    assert ip.user_ns["hits"] == ["a", "b"]
    capsys.readouterr()
    ip.run_cell_magic("step", "a", a2)
    assert capsys.readouterr().out == "%%step a: executed again (its source changed)\n"
    ip.run_cell_magic("step", "b", b)
    assert capsys.readouterr().out == "%%step b: executed again (x changed)\n"
    assert ip.user_ns["hits"] == ["a", "b", "a", "b"]
    assert ip.user_ns["y"] == 20


def test_refresh_executes_a_cell_step_again_and_identical_values_invalidate_nothing(ip) -> None:
    """--refresh executes an unchanged cell step; a reader of the identical value it binds still restores."""
    load(ip)
    ip.user_ns["hits"] = Hits()
    ip.run_cell_magic("step", "a", "hits.append('a'); x = 1")
    ip.run_cell_magic("step", "b", "hits.append('b'); y = x")
    ip.run_cell_magic("step", "a --refresh", "hits.append('a'); x = 1")
    ip.run_cell_magic("step", "b", "hits.append('b'); y = x")
    assert ip.user_ns["hits"] == ["a", "b", "a"]


def test_cell_step_retries_with_backoff(ip, capsys) -> None:
    """--retries N: a failing cell is executed again after a backoff delay, and says so."""
    magics = load(ip)
    magics.cells.clock = clock = FakeClock()
    magics.cells.backoff = nbdurable.Backoff(initial=1, factor=2, jitter=0)
    ip.user_ns["hits"] = Hits()
    cell = "hits.append(1)\nif len(hits) < 3:\n    raise ConnectionError('flaky')\nz = len(hits)"
    ip.run_cell_magic("step", "flaky --retries 2", cell)
    assert ip.user_ns["z"] == 3
    assert clock.slept == [1.0, 2.0]
    out = capsys.readouterr().out.splitlines()
    assert out == [
        "%%step flaky: attempt 1/3 failed (ConnectionError: flaky); retrying in 1.0s",
        "%%step flaky: attempt 2/3 failed (ConnectionError: flaky); retrying in 2.0s",
    ]


def test_failing_cell_step_raises_the_cells_own_error(ip) -> None:
    """Without retries, the cell's exception reaches the user as itself, not wrapped."""
    load(ip)
    with pytest.raises(ZeroDivisionError):
        ip.run_cell_magic("step", "bad", "x = 1 / 0")


def test_strict_refuses_an_unpicklable_name_and_stores_nothing(ip) -> None:
    """--strict: a lock bound by a cell step fails it naming the variable and type; nothing is stored."""
    magics = load(ip)
    ip.user_ns["hits"] = Hits()
    cell = "import threading\nhits.append(1)\ngood = 1\nlock = threading.Lock()"
    with pytest.raises(TypeError, match=r"cannot store lock \(_thread.lock: .*pickle.*Fix: `del`"):
        ip.run_cell_magic("step", "locky --retries 3 --strict", cell)
    assert ip.user_ns["hits"] == [1]  # not retried: retrying cannot make it picklable
    client = magics.cells.client(magics.commands.store_path)
    got = client.store.get_step(_store.step_prefix(client.app_id, CELL_FUNCTION, "locky") + CELL_STEP)
    assert got[0].status == "FAILED"
    assert got[1] == b""


def test_cell_step_may_await_at_top_level(ip) -> None:
    """A cell step that awaits at top level (as notebook cells may) executes and stores its names."""
    load(ip)
    ip.user_ns["hits"] = Hits()
    cell = "import asyncio\nhits.append(1)\nawait asyncio.sleep(0)\nv = 5"
    ip.run_cell_magic("step", "awaits", cell)
    ip.run_cell_magic("step", "awaits", cell)
    assert (ip.user_ns["v"], ip.user_ns["hits"]) == (5, [1])


def test_step_needs_a_name(ip) -> None:
    """%%step without a name is a usage error."""
    load(ip)
    with pytest.raises(UsageError, match="the following arguments are required: name"):
        ip.run_cell_magic("step", "", "x = 1")


def test_assigned_names_cover_every_binding_form() -> None:
    """Assignments, augmented/annotated ones, for/with targets, imports and defs count; inner scopes do not."""
    tree = ast.parse(
        "a = b, (c, *d) = 1, (2, 3)\n"
        "e += 1\n"
        "f: int = 1\n"
        "g: int\n"
        "for h, i in []: j = 1\n"
        "with open('x') as k: pass\n"
        "import os.path, numpy as np\n"
        "from x import y as z, w\n"
        "def fn(): inner = 1\n"
        "class C: attr = 1\n"
        "if True:\n    m = 1\nelse:\n    n = 1\n"
        "try:\n    o = 1\nexcept ValueError as p:\n    q = 1\n"
        "print(r := 1)\n"
    )
    names, defs = assigned_names(tree)
    assert names == [
        "a",
        "b",
        "c",
        "d",
        "e",
        "f",
        "h",
        "i",
        "j",
        "k",
        "os",
        "np",
        "z",
        "w",
        "fn",
        "C",
        "m",
        "n",
        "o",
        "p",
        "q",
        "r",
    ]
    assert sorted(defs) == ["C", "fn"]


def test_decorated_defs_and_classes_restore_with_their_decorators(ip) -> None:
    """A @dataclass class and an @lru_cache function come back decorated after a restart."""
    load(ip)
    ip.user_ns["hits"] = Hits()
    cell = (
        "import dataclasses, functools\nhits.append('cell')\n"
        "@dataclasses.dataclass\nclass Point:\n    x: int\n    y: int\n\n"
        "@functools.lru_cache(maxsize=None)\ndef square(n):\n    return n * n\n\np = Point(3, 4)\n"
    )
    ip.run_cell_magic("step", "shapes", cell)
    restart(ip, keep=("hits",))
    ip.run_cell_magic("step", "shapes", cell)
    ns = ip.user_ns
    assert ns["hits"] == ["cell"]
    assert ns["Point"](1, 2).x == 1
    assert ns["square"](5) == 25
    assert ns["square"].cache_info().hits == 0
    assert (ns["p"].x, ns["p"].y) == (3, 4)


def test_restore_follows_the_order_the_cell_bound_names_in(ip) -> None:
    """A class built on a name the cell imported restores after that name, as the cell ran."""
    load(ip)
    ip.user_ns["hits"] = Hits()
    cell = "from collections import OrderedDict\nhits.append('cell')\nclass Registry(OrderedDict):\n    pass\n"
    ip.run_cell_magic("step", "models", cell)
    restart(ip, keep=("hits",))
    ip.run_cell_magic("step", "models", cell)
    assert ip.user_ns["hits"] == ["cell"]
    assert issubclass(ip.user_ns["Registry"], ip.user_ns["OrderedDict"])


def test_cells_run_in_another_order_after_a_restart_still_restore(ip, capsys) -> None:
    """The link to the previous cell step is the stored one: running B before A after a restart restores both."""
    load(ip)
    ip.user_ns["hits"] = Hits()
    a, b = "hits.append('a'); x = 1", "hits.append('b'); y = 2"
    ip.run_cell_magic("step", "a", a)
    ip.run_cell_magic("step", "b", b)
    restart(ip, keep=("hits",))
    capsys.readouterr()
    ip.run_cell_magic("step", "b", b)
    ip.run_cell_magic("step", "a", a)
    assert ip.user_ns["hits"] == ["a", "b"]
    assert (ip.user_ns["x"], ip.user_ns["y"]) == (1, 2)
    assert "executed again" not in capsys.readouterr().out


def test_runs_sharing_an_id_are_addressed_as_fn_slash_run(ip, capsys) -> None:
    """Two functions' runs with one id: a bare id is ambiguous (the error names FN/RUN), FN/RUN picks one."""
    load(ip)
    ip.run_cell(
        "import nbdurable\nclient = nbdurable.Client('nb')\n"
        "@client.create_function(fn_id='a')\ndef a(ctx):\n    return ctx.step.run('x', lambda: 'from a')\n"
        "@client.create_function(fn_id='b')\ndef b(ctx):\n    return ctx.step.run('x', lambda: 'from b')\n"
        "a.run(run_id='nightly'); b.run(run_id='nightly')\n"
    )
    with pytest.raises(UsageError, match=r"matches several runs .* or FN/RUN"):
        ip.run_line_magic("nbdurable", "show nightly")
    capsys.readouterr()
    ip.run_line_magic("nbdurable", "show b/nightly")
    assert "b / nightly" in capsys.readouterr().out


def test_send_reaches_the_functions_of_every_client(ip, capsys) -> None:
    """%nbdurable send triggers functions on every client in the namespace, not just the first."""
    load(ip)
    ip.run_cell(
        "import nbdurable, threading\ngot = threading.Event()\n"
        "alpha = nbdurable.Client('alpha')\nbeta = nbdurable.Client('beta')\n"
        "@beta.create_function(fn_id='listener', trigger=nbdurable.TriggerEvent(event='app/ping'))\n"
        "def listener(ctx):\n    got.set()\n"
    )
    ip.run_line_magic("nbdurable", "send app/ping")
    assert ip.user_ns["got"].wait(5)
    assert "on <nbdurable.Client app_id='beta'" in capsys.readouterr().out


def test_resume_finds_on_failure_functions(ip) -> None:
    """An interrupted on_failure run is resumed by `resume --all` once its parent function is defined."""
    from tests.waiting import eventually

    load(ip)
    ip.run_cell(
        "import nbdurable, threading\nclient = nbdurable.Client('nb')\n"
        "state = {'stop': True}\ndone = threading.Event()\n"
        "def notify(ctx):\n"
        "    def once():\n"
        "        if state['stop']:\n"
        "            state['stop'] = False\n"
        "            raise KeyboardInterrupt\n"
        "        done.set()\n"
        "    ctx.step.run('notify', once)\n"
        "@client.create_function(fn_id='job', retries=0, on_failure=notify)\n"
        "def job(ctx):\n    ctx.step.run('boom', lambda: 1 / 0)\n"
    )
    client = ip.user_ns["client"]
    with pytest.raises(nbdurable.RunFailedError):
        ip.user_ns["job"].run()
    eventually(lambda: [r.status for r in client.runs("job-failure")] == [nbdurable.RunStatus.INTERRUPTED])
    ip.run_line_magic("nbdurable", "resume --all")
    assert ip.user_ns["done"].wait(5)


FAILING = """
import nbdurable
tb_client = nbdurable.Client("tb", backoff=nbdurable.Backoff(initial=0, jitter=0))
def fetch():
    raise ValueError("bad row 7")
@tb_client.create_function(fn_id="tb", retries=0)
def tb(ctx):
    return ctx.step.run("fetch", fetch)
"""


def test_a_failing_step_traceback_shows_the_users_lines_not_nbdurables(ip, capsys) -> None:
    """The handler's line and the cell's run() call are shown; the engine's frames are folded away."""
    load(ip)
    ip.run_cell(FAILING)
    capsys.readouterr()
    ip.run_cell("tb.run()")
    shown = capsys.readouterr()
    text = re.sub(r"\x1b\[[0-9;]*m", "", shown.out + shown.err)  # without colours
    assert 'raise ValueError("bad row 7")' in text
    assert "tb.run()" in text
    assert "RunFailedError" in text
    assert "skipping hidden" in text
    frames = re.findall(r", in (\S+)\(", text)  # the header of every frame shown
    assert [f for f in frames if f != "fetch"] == ["Function.run"]  # the one line that raises
    ip.run_line_magic("xmode", "--show")  # one switch away, for debugging nbdurable itself
    try:
        ip.run_cell("tb.run()")
        assert ", in _call_sync(" in re.sub(r"\x1b\[[0-9;]*m", "", capsys.readouterr().out)
    finally:
        ip.run_line_magic("xmode", "--hide")
