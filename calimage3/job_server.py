"""A warm job server for local runs: each job runs in a worker forked from a process that has already imported the science libraries.

Every Snakemake job is a fresh Python interpreter, and importing what a
step needs (astropy, gwcs with asdf's extensions, photutils, tweakwcs,
drizzle) costs 0.3-1.6 s, more than the work itself in many jobs of a
small run.  On a local run the workflow launches one server
(`JobServer`) while Snakemake plans: it imports those libraries once and
listens on a Unix socket.  Each job script begins with `run_in_job_server`: it sends
its ``snakemake`` object, working folder, environment and its standard
streams to the server, which hands them to a worker: a process forked
from the server, with every library loaded, that runs the script with
them.  The job process waits, forwards signals to the worker, and exits
with the job's status, which the worker sends it directly (the server may
be in the middle of an import; it reports only a worker that died
mid-job).  A worker runs one job at a time and, after it, puts back what
a job changes in the process (folder, environment, ``sys.path``, logging
handlers, warning filters, streams) and waits for the next; it keeps
the memory the job freed (up to `_WORKER_KEEP_MB`, and for
`_IDLE_KEEP_S` when no job follows), so the next job pays fewer page
faults of fresh memory.  A worker whose job failed, ran several threads or
left threads running exits instead, and a job that declares much memory
gets a fresh fork of its own (`_WorkerPool`).

Where no server answers (a cluster job on another node, ``--use-conda``
with another interpreter, ``job_server: false``), the script simply runs
in its own process, as Snakemake starts it.

Snakemake's ``benchmark:`` files measure the job process, which here only
waits; the job's own wall time, CPU and system time and the worker's peak
resident memory during the job are appended to the job's log as a
`USAGE_TAG` line, which ``bench/`` reads.  The peak counts the pages
shared with the server (the imported libraries), like a fresh
interpreter's would, and the memory the worker kept from earlier jobs.

This module imports only the standard library: a job imports it first.
"""

import functools
import json
import os
import pickle
import select
import selectors
import signal
import socket
import struct
import sys
import time

__all__ = [
    "ENV_VAR",
    "USAGE_TAG",
    "PRELOAD",
    "JobServer",
    "run_in_job_server",
    "parse_usage_line",
    "serve",
]

# The environment variable naming the server's socket; set by
# `JobServer.activate` in the Snakemake process, inherited by its jobs.
ENV_VAR = "CALIMAGE3_JOB_SERVER"
# Start of the line a job's log gets with the job's resource use in its worker.
USAGE_TAG = "calimage3 job server usage:"
# What the scripts import, at module level or inside the functions they
# call, in the order the DAG first needs it: jobs that arrive while the
# server is still importing are forked as soon as the modules of the early
# steps are in (they import the rest themselves).  skimage, matplotlib,
# gwcs and bottleneck are imported at top level only, before the first
# step's modules: photutils imports them in every detection and catalog, to
# record their versions in its tables (in a fresh worker, 0.1 s and 50 MB
# of page faults for the first three; gwcs alone is 170 modules); asdf's
# extensions are loaded later (`_AFTER_IMPORT`), and matplotlib's plotting
# modules (QA figures only) are left out.
PRELOAD = (
    "numpy",
    "astropy.io.fits",
    "astropy.table",
    "snakemake.iocontainers",
    "snakemake.logging",
    "snakemake.io",
    "astropy.io.misc.yaml",
    "calimage3.io",
    "calimage3.logs",
    "calimage3.layout",
    "calimage3.usable",
    "photutils.background",
    "photutils.detection",
    "skimage",
    "matplotlib",
    "bottleneck",
    "gwcs",
    "calimage3.source_detection",
    "asdf",
    "asdf_astropy",
    "tweakwcs",
    "spherical_geometry.graph",
    "calimage3.tweakreg",
    "calimage3.assign_mtwcs",
    "calimage3.skymatch",
    "calimage3.wcs_tools",
    "calimage3.tiling",
    "calimage3.pixmap",
    "drizzle.resample",
    "calimage3.outlier_detection",
    "calimage3.resample",
    "calimage3.mosaic_metadata",
    "calimage3.provenance",
    "calimage3.fits_wcs",
    # photutils.segmentation's imports, in parts (0.45 s in all here),
    # between which the server starts waiting jobs
    "scipy.interpolate",
    "scipy.stats",
    "scipy.signal",
    "photutils.segmentation",
    "photutils.aperture",
    "calimage3.reference_data",
    "calimage3.source_catalog",
)
# The step-1 modules: jobs wait until these are imported.
_FIRST_NEEDED = PRELOAD.index("calimage3.source_detection") + 1


def _load_asdf_extensions():
    """Load asdf's extension registry, paid otherwise on the first read of any gwcs.

    It parses the manifests of every installed ASDF extension (44 YAML
    documents) with PyYAML's pure-Python parser: 0.8 s here, during which
    the server starts no job.  libyaml's parser, where PyYAML was built
    with it, takes 0.05 s of that; the same safe constructor then builds
    the same objects from its events (`yaml.CSafeLoader`).  Only this
    call, in the server, uses it; the server runs one thread.
    """
    import asdf
    import yaml

    safe_load = yaml.safe_load
    if getattr(yaml, "__with_libyaml__", False):
        yaml.safe_load = functools.partial(yaml.load, Loader=yaml.CSafeLoader)
    try:
        asdf.get_config().extensions
    finally:
        yaml.safe_load = safe_load


# First calls that cost more than the import, made right after it (gwcs has
# imported asdf by then: its extensions wait until the first step's modules are in).
_AFTER_IMPORT = {"asdf": _load_asdf_extensions}
# Seconds a connecting job may take to send its request.
_REQUEST_TIMEOUT = 30.0


# ---- messages: a 4-byte length, then JSON ---------------------------------

def _send_message(sock, obj):
    data = json.dumps(obj).encode()
    sock.sendall(struct.pack("!I", len(data)) + data)


def _receive_exactly(sock, n):
    chunks, remaining = [], n
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            raise ConnectionError("connection closed mid-message")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _receive_message(sock):
    """The next message, or None when the other end closed the connection."""
    try:
        (n,) = struct.unpack("!I", _receive_exactly(sock, 4))
        return json.loads(_receive_exactly(sock, n))
    except ConnectionError:
        return None


# ---- the job's side ---------------------------------------------------------

def _declared_mem_mb(job):
    """The job's ``mem_mb`` resource, 0 when it declares none."""
    try:
        return float(job.resources.get("mem_mb", 0) or 0)
    except (AttributeError, TypeError, ValueError):
        return 0.0


def run_in_job_server(script_globals):
    """Run the calling job script in the job server and exit with its status; return when there is none.

    Parameters
    ----------
    script_globals : dict
        The script's ``globals()``: its ``snakemake`` object and ``__file__``
        (Snakemake points ``__file__`` at the original script).

    Notes
    -----
    Returns without doing anything outside a Snakemake job, inside the
    server's own workers, when no server is set or answering, or when the
    server runs another Python interpreter; the script then goes on in
    this process.  Once the server has started the job it does not return:
    the process exits with the job's status.
    """
    path = os.environ.get(ENV_VAR)
    job = script_globals.get("snakemake")
    if not path or job is None or "__file__" not in script_globals:
        return
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        header = json.dumps({
            "script": os.path.realpath(script_globals["__file__"]),
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "executable": sys.executable,
            "sys_path": sys.path,
            "mem_mb": _declared_mem_mb(job),
            "threads": int(getattr(job, "threads", 1) or 1),
        }).encode()
        payload = pickle.dumps(job, protocol=4)
        socket.send_fds(sock, [struct.pack("!II", len(header), len(payload))], [0, 1, 2])
        sock.sendall(header + payload)
        reply = _receive_message(sock)
    except OSError:
        return
    if not reply or not ("pid" in reply or "status" in reply):
        sock.close()
        return
    # The server names the worker, and the worker sends the result when its
    # job is done: a very short job's result can come first.
    result = reply if "status" in reply else None
    if result is None:
        worker = reply["pid"]

        def forward(signum, _frame):
            try:
                os.kill(worker, signum)
            except ProcessLookupError:
                pass

        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, forward)
        result = _receive_message(sock)
        if result is None:
            print(f"calimage3: the job server lost the job in worker {worker} (rule {job.rule})", file=sys.stderr)
            sys.exit(1)
    _record_usage(job, result)
    # At once: the worker did the job, and this interpreter has nothing to
    # clean up (its finalization, with Snakemake imported, took 10-20 ms a job).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(result["status"])


def _record_usage(job, result):
    """Append the job's resource use in its worker to the job's log (stderr when it has none)."""
    wildcards = ",".join(f"{k}={v}" for k, v in job.wildcards.items())
    line = (f"{USAGE_TAG} rule={job.rule} wildcards={wildcards} wall_s={result['wall_s']:.3f} "
            f"cpu_s={result['cpu_s']:.3f} sys_s={result.get('sys_s', 0.0):.3f} max_rss_mb={result['max_rss_mb']:.1f} "
            f"server_rss_mb={result['server_rss_mb']:.1f} worker={result.get('worker', 0)} start_rss_mb={result.get('start_rss_mb', 0.0):.1f} start={result['start']:.3f} status={result['status']}\n")
    if len(job.log):
        with open(job.log[0], "a") as fh:
            fh.write(line)
    else:
        sys.stderr.write(line)


def parse_usage_line(line):
    """The fields of a `USAGE_TAG` line as a dict (numbers as float); None for any other line."""
    if not line.startswith(USAGE_TAG):
        return None
    fields = dict(item.split("=", 1) for item in line[len(USAGE_TAG):].split())
    for key in ("wall_s", "cpu_s", "sys_s", "max_rss_mb", "start_rss_mb", "server_rss_mb", "start", "status"):
        if key in fields:
            fields[key] = float(fields[key])
    return fields


# ---- the Snakemake process's side -------------------------------------------

class JobServer:
    """A job server process for this run; jobs use it once `activate` has set `ENV_VAR`.

    Parameters
    ----------
    socket_dir : str or Path
        A folder on a local disk for the socket (a Unix socket path is
        limited to about 100 bytes, so not a deep output folder).

    Notes
    -----
    The process starts importing at once; the workflow launches it while
    Snakemake builds the DAG and activates it when the jobs are about to
    start, so that the imports overlap the planning.  Whether or not it is
    activated, it exits by itself when the process that launched it ends.
    """

    def __init__(self, socket_dir):
        import subprocess
        import tempfile

        self.folder = tempfile.mkdtemp(prefix="calimage3-jobs-", dir=socket_dir)
        self.path = os.path.join(self.folder, "jobs.sock")
        # Not the terminal's or a pipe's streams: a pipe reader (`snakemake ... | tee`)
        # would wait for the server to exit too.  Its workers get each job's own.
        self.log = os.path.join(self.folder, "server.log")
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "calimage3.job_server", self.path, str(os.getpid())],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)

    def activate(self, timeout=10.0):
        """Point this process's jobs (`ENV_VAR`) at the server, once its socket exists; return self."""
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.path) and self.process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if os.path.exists(self.path):
            os.environ[ENV_VAR] = self.path
        return self

    def stop(self):
        """Stop the server and remove its socket (a worker running a job finishes it, then exits)."""
        if os.environ.get(ENV_VAR) == self.path:
            del os.environ[ENV_VAR]
        if self.process.poll() is None:
            # it holds nothing to flush, and a clean interpreter exit with every
            # library loaded takes a good part of a second: the folder is removed here
            self.process.kill()
        self.process.wait()
        _remove_folder(self.folder)


# ---- the server ---------------------------------------------------------------

def _resident_mb():
    """This process's resident memory now, MB (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return 0.0


def serve(path, parent_pid, preload=PRELOAD, first_needed=_FIRST_NEEDED):
    """Listen on ``path``, import ``preload``, and run each job in a worker forked from here, until ``parent_pid`` ends.

    The socket is bound before the imports, so jobs that start meanwhile
    wait in the listen queue; once the first ``first_needed`` modules are
    in, waiting jobs are started between the remaining imports.  A job goes
    to an idle worker (`_worker_main`) when there is one, else to a new one
    forked from this process.  The server is single-threaded (forking a
    threaded process is unsafe): one selector waits on the socket, on the
    workers' control sockets and on a wake-up pipe written by SIGCHLD.
    """
    import importlib

    # From the start: a SIGTERM (stop, or the parent's death) runs the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _exit_with_parent()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(256)
    listener.setblocking(False)  # accept() until the queue is empty
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)

    def close_server_fds():  # in a forked worker
        listener.close()
        os.close(wake_r)
        os.close(wake_w)

    pool = _WorkerPool(selector, close_server_fds)

    def serve_once(timeout):
        events = selector.select(timeout=timeout)
        # The workers' news first: a worker that is ready again takes a job
        # waiting in the queue rather than a fresh fork.
        for key, _ in events:
            if key.fileobj == wake_r:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
            elif key.fileobj is not listener:
                pool.on_control(key.data)
        pool.reap()
        if any(key.fileobj is listener for key, _ in events):
            for conn in _waiting_connections(listener):
                request = _read_request(conn)
                if request is not None:
                    pool.dispatch(conn, *request, server_rss=_resident_mb())

    try:
        if os.getppid() != parent_pid:  # the parent ended before the handler was set
            return
        for i, name in enumerate(preload):
            started = time.perf_counter()
            try:
                importlib.import_module(name)
                _AFTER_IMPORT.get(name, lambda: None)()
            except ImportError:
                pass  # the job imports it (and reports it) if it needs it
            pool.imported(time.perf_counter() - started)
            if i + 1 >= first_needed:
                serve_once(0)
        while os.getppid() == parent_pid:
            serve_once(1.0)
    finally:
        listener.close()
        _remove_folder(os.path.dirname(path))


def _waiting_connections(listener):
    """Accept every connection in a non-blocking listener's queue (while the
    server imports, several jobs queue up)."""
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return
        yield conn


def _remove_folder(folder):
    """Remove the server's socket folder (socket and log); a dry run or a finished
    output never stops the server, which then exits with the Snakemake process."""
    for name in ("jobs.sock", "server.log"):
        try:
            os.unlink(os.path.join(folder, name))
        except OSError:
            pass
    try:
        os.rmdir(folder)
    except OSError:
        pass


def _call_libc(name, *args):
    """Call a C library function where it exists (Linux, glibc); elsewhere do nothing."""
    try:
        import ctypes

        getattr(ctypes.CDLL(None), name)(*args)
    except (OSError, AttributeError):
        pass


def _exit_with_parent():
    """Ask Linux to send SIGTERM when the launching process dies (the 1 s poll of
    the parent is the fallback elsewhere)."""
    _call_libc("prctl", 1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _read_request(conn):
    """``(fds, header, payload)`` of the job request on ``conn``; None (``conn`` closed) when it is unusable."""
    fds = []
    try:
        conn.settimeout(_REQUEST_TIMEOUT)
        lengths, fds, _, _ = socket.recv_fds(conn, 8, 3)
        n_header, n_payload = struct.unpack("!II", lengths)
        data = _receive_exactly(conn, n_header + n_payload)
        header, payload = json.loads(data[:n_header]), data[n_header:]
        conn.settimeout(None)
        if header["executable"] != sys.executable or len(fds) != 3:
            _send_message(conn, {"refused": "another Python interpreter"})
            raise ConnectionError
    except (OSError, ValueError, ConnectionError, struct.error):
        for fd in fds:
            os.close(fd)
        conn.close()
        return None
    return fds, header, payload


class _Worker:
    """The server's record of one worker: its control socket and the job it runs."""

    def __init__(self, pid, control, import_s):
        self.pid = pid
        self.control = control
        # the seconds the server had spent importing when it forked this worker
        # (what the server imported after, its jobs import themselves)
        self.import_s = import_s
        self.conn = None  # the running job's connection to its job process
        self.start = 0.0
        self.server_rss = 0.0


class _WorkerPool:
    """Workers forked from the server; each runs jobs one after the other.

    A worker that has run a job keeps the memory it freed, so the next job
    reuses pages already mapped instead of faulting in new ones (on the
    virtual machines the benchmarks run on, first-touch page faults were up
    to a quarter of the jobs' CPU time); above `_WORKER_KEEP_MB`, or when
    no job has come for `_IDLE_KEEP_S`, it gives the free memory back.
    Jobs never run at the same time in one worker, and a worker puts back
    the process state a job changes (`_run_job`); one that may be left in a
    doubtful state exits after its job, and a job declaring
    `_FRESH_FORK_MB` or more runs in a fresh fork of its own
    (`_worker_should_retire`, `_runs_alone`).
    """

    def __init__(self, selector, close_server_fds):
        self.selector = selector
        self.close_server_fds = close_server_fds
        self.workers = {}  # pid -> _Worker
        self.idle = []  # pids, most recently used last
        self.import_s = 0.0  # seconds the server has spent importing

    def imported(self, seconds):
        """The server has imported for ``seconds`` more: idle workers now `_BEHIND_S` behind it exit.

        Their next jobs would import those modules (asdf's extensions,
        tweakwcs, drizzle...) each for itself; a worker forked from the
        server now has them.
        """
        self.import_s += seconds
        for pid in list(self.idle):
            self._retire_if_behind(self.workers.get(pid))

    def _retire_if_behind(self, worker):
        """Let ``worker`` go (closing its control socket ends it) when it lacks
        more than `_BEHIND_S` of the server's imports."""
        if worker is None or self.import_s - worker.import_s <= _BEHIND_S:
            return False
        self._forget(worker)
        return True

    def dispatch(self, conn, fds, header, payload, *, server_rss):
        """Hand a job to an idle worker, or to a new one; tell the job process
        the worker's pid (the worker sends it the result)."""
        worker = None
        header = {**header, "server_rss_mb": server_rss}  # for the job's usage line
        # a large job gets a fresh fork, as its memory peak would in a fresh process
        while self.idle and worker is None and not _runs_alone(header):
            candidate = self.workers.get(self.idle.pop())
            if self._retire_if_behind(candidate):
                continue
            try:
                if candidate is not None:
                    _send_job(candidate.control, conn, fds, header, payload)
                    worker = candidate
            except OSError:
                pass  # it died while idle: reap() removes it
        if worker is None:
            worker = self._fork_worker(conn, fds, header, payload)
        for fd in fds:
            os.close(fd)
        worker.conn, worker.start, worker.server_rss = conn, time.time(), server_rss
        try:
            _send_message(conn, {"pid": worker.pid})
        except OSError:
            pass

    def _fork_worker(self, conn, fds, header, payload):
        control, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:
            # a worker holds only its own job's descriptors
            control.close()
            self.close_server_fds()
            os.close(self.selector.fileno())
            for other in self.workers.values():
                other.control.close()
                if other.conn is not None:
                    other.conn.close()
            _worker_main(child_end, conn, fds, header, payload)  # never returns
        child_end.close()
        worker = _Worker(pid, control, self.import_s)
        self.workers[pid] = worker
        self.selector.register(control, selectors.EVENT_READ, pid)
        return worker

    def on_control(self, pid, worker=None):
        """A worker's message: its job is done (it sends the result to the job
        process itself), and whether it is ready again."""
        worker = worker or self.workers.get(pid)
        if worker is None:
            return
        message = _receive_message(worker.control)
        if message is None:  # it exited: reap() reports its job, if any
            self._forget(worker)
            return
        if message.get("done") and worker.conn is not None:
            worker.conn.close()
            worker.conn = None
        if message.get("ready") and pid in self.workers:
            self.idle.append(pid)

    def _finish(self, worker, result):
        """Send the job process of a worker that died mid-job its result."""
        result = {**result, "wall_s": time.time() - worker.start, "start": worker.start,
                  "server_rss_mb": worker.server_rss}
        if worker.conn is not None:
            try:
                _send_message(worker.conn, result)
            except OSError:
                pass
            worker.conn.close()
            worker.conn = None

    def _forget(self, worker):
        try:
            self.selector.unregister(worker.control)
        except (KeyError, ValueError):
            pass
        worker.control.close()
        if worker.pid in self.idle:
            self.idle.remove(worker.pid)

    def reap(self):
        """Collect exited workers; the job of one that died mid-job fails with its exit status."""
        for pid in list(self.workers):
            try:
                done, status, usage = os.wait4(pid, os.WNOHANG)
            except ChildProcessError:
                done, status, usage = pid, 1 << 8, None
            if done == 0:
                continue
            worker = self.workers.pop(pid)
            # what it sent before it exited (its last job's result) comes first
            while worker.conn is not None and worker.control.fileno() >= 0 and _readable(worker.control):
                self.on_control(pid, worker)
            if worker.conn is not None:
                code = os.waitstatus_to_exitcode(status)
                self._finish(worker, {
                    "status": code if code >= 0 else 128 - code,
                    "cpu_s": (usage.ru_utime + usage.ru_stime) if usage else 0.0,
                    "sys_s": usage.ru_stime if usage else 0.0,
                    "max_rss_mb": usage.ru_maxrss / 1024 if usage else 0.0,  # kB on Linux
                })
            if worker.control.fileno() >= 0:
                self._forget(worker)


def _readable(sock, timeout=0.0):
    """Whether ``sock`` has something to read (or is closed) within ``timeout`` seconds."""
    return bool(select.select([sock], [], [], timeout)[0])


def _send_job(control, conn, fds, header, payload):
    """Send a job (its streams, its connection, header and pickled ``snakemake``) down a worker's control socket."""
    header_bytes = json.dumps(header).encode()
    socket.send_fds(control, [struct.pack("!II", len(header_bytes), len(payload))], [*fds, conn.fileno()])
    control.sendall(header_bytes + payload)


def _receive_job(control):
    """The next job from the server: ``(conn, fds, header, payload)``; None when the server is gone."""
    try:
        lengths, fds, _, _ = socket.recv_fds(control, 8, 4)
        if not lengths:
            return None
        n_header, n_payload = struct.unpack("!II", lengths)
        data = _receive_exactly(control, n_header + n_payload)
    except (OSError, ConnectionError, struct.error):
        return None
    conn = socket.socket(fileno=fds[3])
    return conn, fds[:3], json.loads(data[:n_header]), data[n_header:]


# An idle worker forked before the server had spent this many more seconds
# importing is let go rather than given a job: the job would import those
# modules itself, which costs more than a fresh fork's first-touch page faults.
_BEHIND_S = 0.1
# Worker limits: jobs one worker runs before it exits and a fresh one is
# forked; resident memory above which a worker gives its free memory back
# after a job (below it, the next job reuses those pages: with the heap
# settings below, the 2048 x 2048 jobs' system time went from 10.4 to 7.5 s
# of 50 CPU seconds on 8 exposures); how long an idle worker keeps its free
# memory before it gives it back (jobs that follow one another come within
# a fraction of a second; an idle worker holds no more than it needs).
_JOBS_PER_WORKER = 200
_WORKER_KEEP_MB = 1024
_IDLE_KEEP_S = 1.0
# Jobs that declare at least this much memory (the group jobs of large
# mosaics: catalog, combination, median) run in a fresh fork of their own:
# a worker's heap, fragmented by earlier jobs, added about 8% to the peak of
# a 2 GB catalog job, and one such job gains little from reused pages.
_FRESH_FORK_MB = 2000
# glibc malloc: keep up to this much freed memory at the top of the heap (the
# default gives back all but 128 kB), and serve every block from the heap,
# not from mmap: a 2048 x 2048 float64 array (33.5 MB) is above mmap's
# largest threshold (32 MB), so each one was mapped, faulted in page by page
# and unmapped again; from the heap, a freed array's pages are reused.
_TRIM_THRESHOLD = _WORKER_KEEP_MB << 20
_MMAP_MAX = 0


def _tune_malloc():
    """Let a worker's heap keep freed memory between jobs (glibc only; elsewhere nothing)."""
    _call_libc("mallopt", -1, _TRIM_THRESHOLD)  # M_TRIM_THRESHOLD
    _call_libc("mallopt", -4, _MMAP_MAX)  # M_MMAP_MAX


def _worker_main(control, conn, fds, header, payload):
    """In a forked worker: run this job, then the jobs the server sends, until told to stop."""
    signal.set_wakeup_fd(-1)
    for signum in (signal.SIGCHLD, signal.SIGTERM):
        signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _tune_malloc()
    devnull = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(devnull, target)
    os.close(devnull)
    jobs = 0
    while True:
        start = time.time()
        result = _run_job(conn, fds, header, payload)
        result.update(wall_s=time.time() - start, start=start, server_rss_mb=header.get("server_rss_mb", 0.0))
        jobs += 1
        retire = _worker_should_retire(result, jobs, header)
        try:
            # ready before the job process hears of it, and so before Snakemake
            # sends the next job, which otherwise could get a fresh fork; a job
            # sent meanwhile waits in the socket for the clean-up below
            _send_message(control, {"done": True, "ready": not retire})
        except OSError:
            retire = True
        try:
            # straight to the job process: the server may be busy importing
            _send_message(conn, result)
        except OSError:
            pass  # the job process is gone
        conn.close()
        if retire:
            os._exit(0)
        import gc

        gc.collect()
        if _resident_mb() > _WORKER_KEEP_MB:
            _release_free_memory()
        if not _readable(control, _IDLE_KEEP_S):
            _release_free_memory()
        job = _receive_job(control)
        if job is None:  # the server is gone
            os._exit(0)
        conn, fds, header, payload = job


def _runs_alone(header):
    """Whether a job gets a worker of its own, forked for it and gone after it."""
    return header.get("mem_mb", 0) >= _FRESH_FORK_MB


def _worker_should_retire(result, jobs, header):
    """Whether a worker exits after this job instead of waiting for another."""
    return (result["status"] != 0 or result.pop("dirty", False) or jobs >= _JOBS_PER_WORKER
            or _runs_alone(header))


def _release_free_memory():
    """Give the heap's free pages back to the system (glibc ``malloc_trim``)."""
    _call_libc("malloc_trim", 0)


def _watch_job_process(conn, stop_r):
    """In a worker, while a job runs: exit if its job process goes away (killed, or Snakemake stopped)."""
    sel = selectors.DefaultSelector()
    sel.register(conn, selectors.EVENT_READ)
    sel.register(stop_r, selectors.EVENT_READ)
    while True:
        for key, _ in sel.select():
            if key.fileobj == stop_r:
                sel.close()
                return
            try:
                if conn.recv(1):
                    continue
            except OSError:
                pass
            os._exit(1)


def _peak_rss_mb():
    """This process's peak resident memory since `_reset_peak_rss`, MB (None where /proc lacks it)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def _reset_peak_rss():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def _run_job(conn, fds, header, payload):
    """Become the job (its streams, folder, environment), run its script, put the process back; its result.

    The result holds the job's exit status, CPU and system time and peak
    resident memory, and ``dirty``: whether the job may have left state this
    function cannot put back (threads still running) or memory it cannot
    give back (a job with ``threads`` > 1: its threads' malloc arenas).
    """
    import logging
    import resource
    import runpy
    import threading
    import warnings

    saved = {"cwd": os.getcwd(), "env": dict(os.environ), "path": list(sys.path), "argv": list(sys.argv),
             "excepthook": sys.excepthook, "filters": list(warnings.filters), "threads": threading.active_count(),
             "handlers": list(logging.getLogger().handlers), "level": logging.getLogger().level,
             "streams": (sys.stdin, sys.stdout, sys.stderr),
             "numpy_err": sys.modules["numpy"].geterr() if "numpy" in sys.modules else None}
    if header.get("threads", 1) > 1:
        # its threads allocate in arenas of their own, which cannot reuse the
        # memory the worker kept in its main heap: that would only add to its peak
        _release_free_memory()
    before = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    start_rss = _resident_mb()
    _reset_peak_rss()
    stop_r, stop_w = os.pipe()
    watcher = threading.Thread(target=_watch_job_process, args=(conn, stop_r), daemon=True)
    code = 1
    threaded = False
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(header["cwd"])
        os.environ.clear()
        os.environ.update(header["env"])
        os.environ.pop(ENV_VAR, None)
        sys.path[:] = header["sys_path"]
        sys.argv = [header["script"]]
        watcher.start()
        job = pickle.loads(payload)
        threaded = getattr(job, "threads", 1) > 1
        runpy.run_path(header["script"], init_globals={"snakemake": job}, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    finally:
        for stream in {sys.stdout, sys.stderr, *saved["streams"][1:]}:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os.write(stop_w, b"x")
        watcher.join()
        os.close(stop_r)
        os.close(stop_w)
    after = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    peak = _peak_rss_mb()
    # put the process back as the job found it
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler not in saved["handlers"]:
            root.removeHandler(handler)
            handler.close()
    for handler in saved["handlers"]:
        if handler not in root.handlers:
            root.addHandler(handler)
    root.setLevel(saved["level"])
    sys.excepthook = saved["excepthook"]
    sys.stdin, sys.stdout, sys.stderr = saved["streams"]
    if saved["numpy_err"] is not None:
        sys.modules["numpy"].seterr(**saved["numpy_err"])
    warnings.filters[:] = saved["filters"]
    getattr(warnings, "_filters_mutated", lambda: None)()  # forget which warnings were shown
    os.chdir(saved["cwd"])
    os.environ.clear()
    os.environ.update(saved["env"])
    sys.path[:] = saved["path"]
    sys.argv = saved["argv"]
    devnull = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(devnull, target)
    os.close(devnull)
    cpu = sum(u.ru_utime + u.ru_stime for u in after) - sum(u.ru_utime + u.ru_stime for u in before)
    return {
        "status": code,
        "cpu_s": cpu,
        # kernel time, mostly first-touch page faults of fresh arrays
        "sys_s": sum(u.ru_stime for u in after) - sum(u.ru_stime for u in before),
        "max_rss_mb": peak if peak is not None else after[0].ru_maxrss / 1024,  # kB on Linux
        # a multi-threaded job leaves memory in its threads' malloc arenas
        "dirty": threaded or threading.active_count() > saved["threads"],
        "worker": os.getpid(),
        "start_rss_mb": start_rss,
    }


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
