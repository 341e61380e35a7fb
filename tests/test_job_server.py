"""The warm job server (calimage3/job_server.py): jobs forked from one process give the same products, fail as jobs do, and die with their job."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from workflow_runs import REPO, run_snakemake

from calimage3 import io
from calimage3.job_server import USAGE_TAG, parse_usage_line
from calimage3.simulate import simulate_dither

MINI_SNAKEFILE = """
import os, sys
sys.path.insert(0, {repo!r})
os.environ["PYTHONPATH"] = {repo!r}
from calimage3.job_server import JobServer

# launched while Snakemake plans, activated when jobs start, as rules/common.smk does
SERVER = JobServer({sockets!r})

onstart:
    SERVER.activate()

onsuccess:
    SERVER.stop()

onerror:
    SERVER.stop()

rule job:
    output: "{{name}}.txt"
    log: "{{name}}.log"
    resources: mem_mb=lambda wildcards: 3000 if wildcards.name == "big" else 100
    script: "job.py"

# jobs in workers forked once the server's imports are in (first.txt's job outlasts them)
rule later:
    input: "first.txt"
    output: "{{name}}.later"
    log: "{{name}}.later.log"
    script: "job.py"
"""

MINI_SCRIPT = """
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import os, time
from calimage3.logs import configure_logging

configure_logging(snakemake.log[0])
name = snakemake.wildcards.name
if name == "fail":
    raise RuntimeError("deliberate failure")
if name == "sleep":
    with open("sleep.pid", "w") as fh:
        fh.write(str(os.getpid()))
    time.sleep(120)
if name == "first":  # long enough for the server to have imported everything meanwhile
    time.sleep(3)
if name == "alloc":  # 400 MB in arrays above glibc's largest mmap threshold, then freed
    import numpy as np
    arrays = [np.ones((2048, 2048)) for _ in range(12)]
    del arrays
if name == "watch":  # the resident memory of the worker that ran "alloc", once it is done
    import re
    while not os.path.exists("alloc.later"):
        time.sleep(0.02)
    worker = int(open("alloc.later").read().split()[0])
    def resident_mb():
        text = open(f"/proc/{worker}/status").read()
        return int(re.search(r"VmRSS:\\s+(\\d+)", text).group(1)) / 1024
    time.sleep(0.3)
    kept = resident_mb()
    time.sleep(2.5)
    with open("watch.rss", "w") as fh:
        fh.write(f"{kept} {resident_mb()}")
import logging
logging.getLogger("job").info("job %s ran", name)
with open(snakemake.output[0], "w") as fh:
    parent = open(f"/proc/{os.getppid()}/cmdline").read().replace("\\0", " ")
    fh.write(f"{os.getpid()} {os.getppid()} {os.environ.get('CALIMAGE3_JOB_SERVER')} {os.getcwd()} "
             f"{os.environ.get('LEFT_BY_A_JOB')}\\n{parent}")
# state a job may leave behind: the next job in the same worker must not see it
os.environ["LEFT_BY_A_JOB"] = name
os.chdir("/")
"""


@pytest.fixture
def mini_workflow(tmp_path):
    sockets = tmp_path / "sockets"
    sockets.mkdir()
    (tmp_path / "Snakefile").write_text(MINI_SNAKEFILE.format(repo=str(REPO), sockets=str(sockets)))
    (tmp_path / "job.py").write_text(MINI_SCRIPT)
    return tmp_path


def _snakemake(folder, *targets, cores=2, **kwargs):
    return subprocess.run([sys.executable, "-m", "snakemake", "--cores", str(cores), *targets], cwd=folder,
                          capture_output=True, text=True, timeout=120, **kwargs)


def _usage(log_path):
    lines = [parse_usage_line(line) for line in log_path.read_text().splitlines()]
    return [u for u in lines if u]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is dead for our purposes
    with open(f"/proc/{pid}/stat") as fh:
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_job_runs_forked_from_the_server(mini_workflow):
    proc = _snakemake(mini_workflow, "a.txt", "b.txt")
    assert proc.returncode == 0, proc.stderr
    for name in ("a", "b"):
        ids, parent = (mini_workflow / f"{name}.txt").read_text().split("\n")
        pid, ppid, env, cwd, left = ids.split()
        # the job ran in a child of the server, not in the process Snakemake started
        assert "calimage3.job_server" in parent
        assert env == "None" and cwd == str(mini_workflow) and left == "None"
        usage = _usage(mini_workflow / f"{name}.log")
        assert len(usage) == 1 and usage[0]["status"] == 0 and usage[0]["rule"] == "job"
        assert usage[0]["max_rss_mb"] > 10 and usage[0]["cpu_s"] >= 0
    # both jobs were forked from one server, which is gone with the run
    assert (mini_workflow / "a.txt").read_text().split()[1] == (mini_workflow / "b.txt").read_text().split()[1]
    assert not _alive(int((mini_workflow / "a.txt").read_text().split()[1]))
    assert not list((mini_workflow / "sockets").iterdir())


def test_jobs_in_one_worker_do_not_see_each_other(mini_workflow):
    # one core: the jobs run one after the other, reusing a worker; the one that served jobs
    # while the server was still importing is let go once the server has imported 0.1 s' worth
    # more (the first job's 3 s usually covers all of it), so a, b and c share one worker, or at
    # most two
    proc = _snakemake(mini_workflow, "first.txt", "a.txt", "b.txt", "c.txt", "big.txt", "--prioritize", "first.txt",
                      cores=1)
    assert proc.returncode == 0, proc.stderr
    ids = [(mini_workflow / f"{n}.txt").read_text().split("\n")[0].split() for n in "abc"]
    assert len({pid for pid, *_ in ids}) <= 2, "the worker was not reused"
    # a job declaring much memory gets a fresh fork of its own
    big = (mini_workflow / "big.txt").read_text().split()
    assert big[0] not in {pid for pid, *_ in ids} and big[1] == ids[0][1]
    for (_, _, _, cwd, left), name in zip(ids, "abc"):
        assert cwd == str(mini_workflow) and left == "None"
        log = (mini_workflow / f"{name}.log").read_text()
        # each job's log holds its own lines only
        assert f"job {name} ran" in log and sum("ran" in line for line in log.splitlines()) == 1
        assert _usage(mini_workflow / f"{name}.log")[0]["worker"] == ids["abc".index(name)][0]


def test_worker_keeps_freed_memory_for_the_next_job_and_gives_it_back_when_idle(mini_workflow):
    """Freed arrays stay in the worker's heap (the next job reuses the pages instead of
    faulting in fresh ones) until no job has come for a second; then they go back."""
    proc = _snakemake(mini_workflow, "alloc.later", "watch.later")
    assert proc.returncode == 0, proc.stderr
    kept, idle = (float(v) for v in (mini_workflow / "watch.rss").read_text().split())
    assert kept > idle + 300, (kept, idle)


def test_failing_job_fails_with_its_traceback_in_log_and_terminal(mini_workflow):
    proc = _snakemake(mini_workflow, "fail.txt")
    assert proc.returncode != 0
    assert "deliberate failure" in proc.stderr
    log = (mini_workflow / "fail.log").read_text()
    assert "JOB FAILED: RuntimeError: deliberate failure" in log
    assert _usage(mini_workflow / "fail.log")[0]["status"] == 1
    assert not (mini_workflow / "fail.txt").exists()


def test_killed_run_leaves_no_job_or_server_behind(mini_workflow):
    proc = subprocess.Popen([sys.executable, "-m", "snakemake", "--cores", "2", "sleep.txt"], cwd=mini_workflow,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    pid_file = mini_workflow / "sleep.pid"
    deadline = time.monotonic() + 60
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    child = int(pid_file.read_text())
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child), "the forked job outlived its killed run"


def test_usage_line_round_trip():
    line = f"{USAGE_TAG} rule=resample wildcards=root=a,product=b wall_s=1.5 cpu_s=1.25 max_rss_mb=300.0 " \
           "server_rss_mb=160.0 status=0"
    usage = parse_usage_line(line)
    assert usage["rule"] == "resample" and usage["wildcards"] == "root=a,product=b"
    assert usage["cpu_s"] == 1.25 and usage["max_rss_mb"] == 300.0
    assert parse_usage_line("12:00:00 INFO resample: done") is None


def test_products_identical_without_the_server(tmp_path):
    """The same association with and without the job server: identical mosaics, catalogs and _crf flags."""
    sim = simulate_dither(tmp_path / "data", n_exposures=3, shape=(256, 256), seed=11)
    outs = {}
    for setting in ("true", "false"):
        out = tmp_path / f"server_{setting}"
        run_snakemake(f"asn={sim['asn']}", out, "qa_figures=false", f"job_server={setting}")
        outs[setting] = out
    used = [parse_usage_line(line) for log in (outs["true"] / "logs").rglob("*.log") for line in log.read_text().splitlines()]
    assert len([u for u in used if u]) >= 3 * 4 + 6  # every job reported its usage
    assert not any(USAGE_TAG in log.read_text() for log in (outs["false"] / "logs").rglob("*.log"))
    i2d = {k: io.read_i2d(next(out.glob("*_i2d.fits")))[0] for k, out in outs.items()}
    np.testing.assert_array_equal(i2d["true"]["data"], i2d["false"]["data"])
    np.testing.assert_array_equal(i2d["true"]["wht"], i2d["false"]["wht"])
    cats = {k: io.read_table(next(out.glob("*_cat.ecsv"))) for k, out in outs.items()}
    np.testing.assert_array_equal(cats["true"]["aper_total_flux"], cats["false"]["aper_total_flux"])
    for crf in outs["true"].glob("*_crf.fits"):
        a = io.read_exposure(crf, arrays=("dq",), with_wcs=False).dq
        b = io.read_exposure(outs["false"] / crf.name, arrays=("dq",), with_wcs=False).dq
        np.testing.assert_array_equal(a, b)


def test_dry_and_no_op_runs_leave_no_socket_folder(mini_workflow):
    """A run that starts no job never activates or stops the server: it exits with Snakemake and removes its folder."""
    assert _snakemake(mini_workflow, "a.txt").returncode == 0
    for flags in (("-n",), ()):  # a dry run; a run with nothing to do
        proc = _snakemake(mini_workflow, *flags, "a.txt")
        assert proc.returncode == 0, proc.stderr
    deadline = time.monotonic() + 10
    while list((mini_workflow / "sockets").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not list((mini_workflow / "sockets").iterdir())


def test_workers_forked_before_the_imports_were_in_are_let_go():
    """A worker forked while the server was still importing exits once the server has imported
    more than `_BEHIND_S` seconds' worth since (its next jobs would import those modules, and load
    asdf's extensions, each for itself); one forked after them takes the next job."""
    import selectors
    import socket

    from calimage3.job_server import _BEHIND_S, _receive_message, _Worker, _WorkerPool

    selector = selectors.DefaultSelector()
    pool = _WorkerPool(selector, lambda: None)

    def idle_worker(pid):
        control, worker_end = socket.socketpair()
        pool.workers[pid] = _Worker(pid, control, pool.import_s)
        selector.register(control, selectors.EVENT_READ, pid)
        pool.idle.append(pid)
        return worker_end

    early = idle_worker(101)
    pool.imported(0.6 * _BEHIND_S)  # a small module: the job would import it in less than a fresh fork costs
    assert pool.idle == [101]
    pool.imported(0.6 * _BEHIND_S)
    assert pool.idle == []
    assert early.recv(1) == b""  # its control socket is closed: the worker's wait for a job ends, and it exits
    late = idle_worker(102)
    job, job_end = socket.socketpair()
    pool.dispatch(job, [], {"mem_mb": 100}, b"payload", server_rss=0.0)
    assert _receive_message(job_end) == {"pid": 102}
    assert late.recv(4096)  # the job went down the late worker's control socket


FAKE_JOB = """
class Resources(dict):
    pass


class Job:
    # what a job script and `run_in_job_server` read of Snakemake's object
    def __init__(self, folder):
        self.rule = "quick"
        self.wildcards = {"name": "quick"}
        self.log = [folder + "/quick.log"]
        self.output = [folder + "/quick.txt"]
        self.threads = 1
        self.resources = Resources(mem_mb=100)
"""

QUICK_SCRIPT = """
from calimage3.job_server import run_in_job_server

run_in_job_server(globals())

import os, sys
with open(snakemake.output[0], "w") as fh:
    fh.write(str("slow" in sys.modules))
"""

JOB_CLIENT = """
import sys
import fake_job
from calimage3.job_server import run_in_job_server

run_in_job_server({"snakemake": fake_job.Job(sys.argv[1]), "__file__": sys.argv[2]})
sys.exit(99)  # not served
"""


def test_job_gets_its_result_while_the_server_is_still_importing(tmp_path):
    """The worker sends its job process the result itself: a job started between the server's
    imports finishes while the server is still in the next one (here a 6 s import)."""
    (tmp_path / "fake_job.py").write_text(FAKE_JOB)
    (tmp_path / "quick.py").write_text(QUICK_SCRIPT)
    (tmp_path / "client.py").write_text(JOB_CLIENT)
    # the job connects during "gate" and is started before "slow", which takes 6 s
    (tmp_path / "gate.py").write_text("import time\ntime.sleep(3)\n")
    (tmp_path / "slow.py").write_text("import time\ntime.sleep(6)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(REPO)])}
    path = str(tmp_path / "jobs.sock")
    server = subprocess.Popen([sys.executable, "-c", "import sys; from calimage3.job_server import serve; "
                               f"serve({path!r}, {os.getpid()}, preload=('gate', 'slow'), first_needed=1)"],
                              env=env, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        client = subprocess.run([sys.executable, str(tmp_path / "client.py"), str(tmp_path),
                                 str(tmp_path / "quick.py")],
                                env={**env, "CALIMAGE3_JOB_SERVER": path}, cwd=tmp_path, timeout=60)
        took = time.monotonic() - started
        assert client.returncode == 0
        # forked before "slow" was imported, and done well before its 6 s are over
        assert (tmp_path / "quick.txt").read_text() == "False"
        assert took < 3 + 4, took
        usage = _usage(tmp_path / "quick.log")
        assert len(usage) == 1 and usage[0]["status"] == 0 and usage[0]["rule"] == "quick"
        assert server.poll() is None
    finally:
        server.kill()
        server.wait()


def test_asdf_manifests_read_the_same_with_libyaml():
    """The server parses asdf's extension manifests with libyaml's parser: every installed
    manifest gives the same objects as PyYAML's own parser, and ``yaml.safe_load`` is put back."""
    import asdf
    import yaml

    from calimage3.job_server import _load_asdf_extensions

    if not yaml.__with_libyaml__:
        pytest.skip("PyYAML without libyaml: the server uses the pure-Python parser")
    resources = asdf.get_config().resource_manager
    manifests = [uri for uri in resources if "/manifests/" in uri]
    assert len(manifests) > 10
    for uri in manifests:
        assert yaml.load(resources[uri], Loader=yaml.CSafeLoader) == yaml.safe_load(resources[uri]), uri
    safe_load = yaml.safe_load
    _load_asdf_extensions()
    assert yaml.safe_load is safe_load
    assert any("astropy" in ext.extension_uri for ext in asdf.get_config().extensions if ext.extension_uri)
