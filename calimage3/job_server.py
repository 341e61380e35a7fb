"""A warm job server for local runs: each job is forked from a process that has already imported the science libraries.

Every Snakemake job is a fresh Python interpreter, and importing what a
step needs (astropy, gwcs with asdf's extensions, photutils, tweakwcs,
drizzle) costs 0.3-1.6 s, more than the work itself in many jobs of a
small run.  On a local run the workflow launches one server
(`JobServer`) while Snakemake plans: it imports those libraries once and
listens on a Unix socket.  Each job script begins with `run_in_job_server`: it sends
its ``snakemake`` object, working folder, environment and its standard
streams to the server, which forks a child that runs the script with
them; the job process waits, forwards signals to the child, and exits
with the child's status.  A forked child starts with every library
loaded and runs nothing else, so jobs stay isolated from each other.

Where no server answers (a cluster job on another node, ``--use-conda``
with another interpreter, ``job_server: false``), the script simply runs
in its own process, as Snakemake starts it.

Snakemake's ``benchmark:`` files measure the job process, which here only
waits; the child's own wall time, CPU time and peak resident memory
(`os.wait4`) are appended to the job's log as a `USAGE_TAG` line, which
``bench/`` reads.  The peak counts the pages shared with the server
(the imported libraries), like a fresh interpreter's would.

This module imports only the standard library: a job imports it first.
"""

import json
import os
import pickle
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
# Start of the line a job's log gets with the forked child's resource use.
USAGE_TAG = "calimage3 job server usage:"
# What the scripts import, at module level or inside the functions they
# call, in the order the DAG first needs it: jobs that arrive while the
# server is still importing are forked as soon as the modules of the early
# steps are in (they import the rest themselves).  matplotlib (QA figures
# only) is left out: it is large and the figures are off the critical path.
PRELOAD = (
    "numpy",
    "astropy.io.fits",
    "astropy.table",
    "snakemake.iocontainers",
    "snakemake.logging",
    "calimage3.io",
    "calimage3.usable",
    "photutils.background",
    "photutils.detection",
    "calimage3.source_detection",
    "asdf",
    "asdf_astropy",
    "gwcs",
    "tweakwcs",
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
    "photutils.segmentation",
    "photutils.aperture",
    "calimage3.reference_data",
    "calimage3.source_catalog",
)
# The step-1 modules: jobs wait until these are imported.
_FIRST_NEEDED = PRELOAD.index("calimage3.source_detection") + 1


def _load_asdf_extensions():
    """Load asdf's extension registry: entry points of every installed ASDF
    extension, over a second, paid on the first read of any gwcs."""
    import asdf

    asdf.get_config().extensions


# First calls that cost more than the import, made right after it.
_AFTER_IMPORT = {"gwcs": _load_asdf_extensions}
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
    server's own children, when no server is set or answering, or when the
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
        }).encode()
        payload = pickle.dumps(job, protocol=4)
        socket.send_fds(sock, [struct.pack("!II", len(header), len(payload))], [0, 1, 2])
        sock.sendall(header + payload)
        reply = _receive_message(sock)
    except OSError:
        return
    if not reply or "pid" not in reply:
        sock.close()
        return
    child = reply["pid"]

    def forward(signum, _frame):
        try:
            os.kill(child, signum)
        except ProcessLookupError:
            pass

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, forward)
    result = _receive_message(sock)
    if result is None:
        print(f"calimage3: the job server lost job {child} (rule {job.rule})", file=sys.stderr)
        sys.exit(1)
    _record_usage(job, result)
    sys.exit(result["status"])


def _record_usage(job, result):
    """Append the child's resource use to the job's log (stderr when it has none)."""
    wildcards = ",".join(f"{k}={v}" for k, v in job.wildcards.items())
    line = (f"{USAGE_TAG} rule={job.rule} wildcards={wildcards} wall_s={result['wall_s']:.3f} "
            f"cpu_s={result['cpu_s']:.3f} max_rss_mb={result['max_rss_mb']:.1f} "
            f"server_rss_mb={result['server_rss_mb']:.1f} start={result['start']:.3f} status={result['status']}\n")
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
    for key in ("wall_s", "cpu_s", "max_rss_mb", "server_rss_mb", "start", "status"):
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
        # would wait for the server to exit too.  Its children get each job's own.
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
        """Stop the server and remove its socket (jobs still running are its children's: they stay)."""
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
    """Listen on ``path``, import ``preload``, and fork one child per job until ``parent_pid`` ends.

    The socket is bound before the imports, so jobs that start meanwhile
    wait in the listen queue; once the first ``first_needed`` modules are
    in, waiting jobs are forked between the remaining imports.  The server
    is single-threaded (forking a threaded process is unsafe): one selector
    waits on the socket and on a wake-up pipe written by SIGCHLD.
    """
    import importlib

    # From the start: a SIGTERM (stop, or the parent's death) runs the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _exit_with_parent()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(256)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ)
    selector.register(wake_r, selectors.EVENT_READ)
    children = {}

    def serve_once(timeout):
        for key, _ in selector.select(timeout=timeout):
            if key.fileobj is listener:
                conn, _ = listener.accept()
                _start_child(conn, listener, children, _resident_mb())
            else:
                try:
                    os.read(wake_r, 4096)
                except BlockingIOError:
                    pass
        _reap(children)

    try:
        if os.getppid() != parent_pid:  # the parent ended before the handler was set
            return
        for i, name in enumerate(preload):
            try:
                importlib.import_module(name)
                _AFTER_IMPORT.get(name, lambda: None)()
            except ImportError:
                pass  # the job imports it (and reports it) if it needs it
            if i + 1 >= first_needed:
                serve_once(0)
        while os.getppid() == parent_pid:
            serve_once(1.0)
    finally:
        listener.close()
        _remove_folder(os.path.dirname(path))


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


def _exit_with_parent():
    """Ask Linux to send SIGTERM when the launching process dies (the 1 s poll of
    the parent is the fallback elsewhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _start_child(conn, listener, children, server_rss):
    """Read one job request from ``conn`` and fork the child that runs it."""
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
        return
    start = time.time()
    pid = os.fork()
    if pid == 0:
        listener.close()
        _run_child(conn, fds, header, payload)  # never returns
    for fd in fds:
        os.close(fd)
    children[pid] = (conn, start, server_rss)
    try:
        _send_message(conn, {"pid": pid})
    except OSError:
        pass


def _reap(children):
    """Tell each finished child's job its status and resource use."""
    for pid in list(children):
        try:
            done, status, usage = os.wait4(pid, os.WNOHANG)
        except ChildProcessError:
            done, status, usage = pid, 1 << 8, None
        if done == 0:
            continue
        conn, start, server_rss = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        result = {
            "status": code if code >= 0 else 128 - code,
            "wall_s": time.time() - start,
            "start": start,
            "cpu_s": (usage.ru_utime + usage.ru_stime) if usage else 0.0,
            "max_rss_mb": usage.ru_maxrss / 1024 if usage else 0.0,  # kB on Linux
            "server_rss_mb": server_rss,
        }
        try:
            _send_message(conn, result)
        except OSError:
            pass
        conn.close()


def _exit_when_job_ends(conn):
    """In a child: exit when the job process goes away (killed, or Snakemake stopped)."""
    try:
        while conn.recv(1):
            pass
    except OSError:
        pass
    os._exit(1)


def _run_child(conn, fds, header, payload):
    """In the forked child: become the job (its streams, folder, environment) and run its script."""
    import runpy
    import threading

    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(header["cwd"])
        os.environ.clear()
        os.environ.update(header["env"])
        os.environ.pop(ENV_VAR, None)
        sys.path[:] = header["sys_path"]
        sys.argv = [header["script"]]
        threading.Thread(target=_exit_when_job_ends, args=(conn,), daemon=True).start()
        job = pickle.loads(payload)
        runpy.run_path(header["script"], init_globals={"snakemake": job}, run_name="__main__")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        code = 1
    finally:
        try:
            import logging

            logging.shutdown()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


if __name__ == "__main__":
    serve(sys.argv[1], int(sys.argv[2]))
