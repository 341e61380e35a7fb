"""The workflow run through SLURM (profiles/slurm) on a one-node cluster equals a local run.

Needs root and the Debian packages ``slurm-wlm`` and ``munge`` (.ci/slurm_setup.sh)
plus ``snakemake-executor-plugin-slurm`` (the ``slurm`` extra).  The cluster is
started by ci/slurm_cluster.sh; when it cannot start, the tests fail with the
script's output, they are never skipped.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.coordinates import SkyCoord
from astropy.io import fits
from astropy.table import Table

from calimage3.simulate import simulate_dither

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "ci" / "slurm_cluster.sh"
pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# Image arrays compared between the two runs, per product.
I2D_ARRAYS = ("SCI", "ERR", "CON", "WHT", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT")
CRF_ARRAYS = ("SCI", "ERR", "DQ", "VAR_POISSON", "VAR_RNOISE", "VAR_FLAT")


def _cluster(command, env):
    """Run ``ci/slurm_cluster.sh command``; fail the test with its output if it fails."""
    proc = subprocess.run(["bash", str(CLUSTER), command], capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"ci/slurm_cluster.sh {command} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="module")
def slurm_env():
    """A running one-node SLURM cluster; yields the environment that submits to it."""
    # The script's default state folder: a cluster left running by hand is
    # restarted rather than clashing with this one over ports.
    env = dict(os.environ)
    env["SLURM_CONF"] = os.path.join(env.get("CALIMAGE3_SLURM_DIR", "/tmp/calimage3-slurm"), "slurm.conf")
    try:
        _cluster("start", env)
        yield env
    finally:
        subprocess.run(["bash", str(CLUSTER), "stop"], env=env, timeout=120)


def _snakemake(asn, output_dir, env, *extra):
    """Start the workflow with the documented command line plus ``extra``; return the process."""
    cmd = [sys.executable, "-m", "snakemake", *extra, "--config", f"asn={asn}", f"output_dir={output_dir}"]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _finish(proc):
    """Wait for a run started by ``_snakemake``; its output, or AssertionError when it failed."""
    try:
        text, _ = proc.communicate(timeout=1500)
    except subprocess.TimeoutExpired:
        proc.kill()
        text, _ = proc.communicate()
        raise AssertionError(f"{' '.join(proc.args)} timed out:\n{text[-8000:]}")
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(proc.args)} failed ({proc.returncode}):\n{text[-8000:]}")
    return text


@pytest.fixture(scope="module")
def runs(slurm_env, tmp_path_factory):
    """The same 3-exposure dither run locally (--cores 2) and through the SLURM profile."""
    base = tmp_path_factory.mktemp("slurm_e2e")
    sim = simulate_dither(base / "data", n_exposures=3, shape=(256, 256), seed=5)
    # Both runs at once (different output folders): the SLURM run spends most
    # of its time waiting on job start-up and status polls.
    slurm = _snakemake(
        sim["asn"], base / "slurm", slurm_env,
        "--profile", "profiles/slurm",
        # Keep the SLURM logs of this run apart from the checkout's .snakemake/.
        "--slurm-logdir", str(base / "slurm_logs"),
        # Short jobs: look at the queue soon after submitting.
        "--slurm-init-seconds-before-status-checks", "2",
    )
    local = _snakemake(sim["asn"], base / "local", slurm_env, "--cores", "2")
    logs, failures = {}, []
    for name, proc in (("local", local), ("slurm", slurm)):
        try:
            logs[name] = _finish(proc)
        except AssertionError as error:
            failures.append(f"{name} run: {error}")
    if failures:
        raise AssertionError("\n\n".join(failures))
    local_log, slurm_log = logs["local"], logs["slurm"]
    return {"sim": sim, "local": base / "local", "slurm": base / "slurm", "local_log": local_log,
            "slurm_log": slurm_log, "slurm_logs": base / "slurm_logs", "env": slurm_env}


def _submitted(log):
    """(rule, SLURM job id) of every job the executor submitted, from the Snakemake log."""
    pattern = r"has been submitted with SLURM jobid (\d+) \(log: (\S+)/rule_(\w+)/"
    return [(rule, jobid) for jobid, _, rule in re.findall(pattern, log)]


def _steps(log):
    """Total number of jobs of a finished run ("N of N steps (100%) done")."""
    return int(re.findall(r"(\d+) of \1 steps \(100%\) done", log)[-1])


def test_every_job_ran_as_a_slurm_job(runs):
    """Each non-local job was an sbatch job that SLURM reports COMPLETED and that left a SLURM log."""
    log = runs["slurm_log"]
    submitted = _submitted(log)
    # The same jobs as the local run; all but local rules (the target `all`,
    # run by Snakemake itself) went to SLURM.
    assert _steps(log) == _steps(runs["local_log"])
    local_rules = re.findall(r"^localrule (\w+):", log, flags=re.MULTILINE)
    assert len(submitted) == _steps(log) - len(local_rules) > 10
    assert {"tweakreg_align", "skymatch", "outlier_flag", "resample", "source_catalog"} <= {r for r, _ in submitted}
    ids = sorted({j for _, j in submitted}, key=int)
    assert len(ids) == len(submitted)
    query = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%T", "--jobs", ",".join(ids)],
                           capture_output=True, text=True, env=runs["env"], timeout=60)
    assert query.returncode == 0, query.stderr
    states = dict(line.split("|") for line in query.stdout.split())
    assert states == {j: "COMPLETED" for j in ids}
    for rule, jobid in submitted:
        assert list(runs["slurm_logs"].glob(f"rule_{rule}/**/{jobid}.log")), (rule, jobid)
    # Status came from squeue (no accounting database on this cluster).
    assert "Falling back to 'sacct'" not in log


def _products(run_dir, pattern):
    return sorted(p.name for p in run_dir.glob(pattern))


def _assert_same_arrays(name, a, b, extensions):
    with fits.open(a) as ha, fits.open(b) as hb:
        for ext in extensions:
            x, y = ha[ext].data, hb[ext].data
            assert x.dtype == y.dtype and x.shape == y.shape, (name, ext)
            assert np.array_equal(x, y, equal_nan=True), f"{name} {ext} differs between local and SLURM runs"


def test_i2d_equals_local_run(runs):
    """The _i2d arrays (SCI, ERR, CON, WHT, variances) of the SLURM run equal the local run's exactly."""
    names = _products(runs["local"], "*_i2d.fits")
    assert names == [f"{runs['sim']['product']}_i2d.fits"]
    assert _products(runs["slurm"], "*_i2d.fits") == names
    _assert_same_arrays(names[0], runs["local"] / names[0], runs["slurm"] / names[0], I2D_ARRAYS)


def test_crf_equal_local_run(runs):
    """Each _crf's SCI, ERR and DQ (with the OUTLIER flags) equal the local run's exactly."""
    names = _products(runs["local"], "*_crf.fits")
    assert len(names) == 3
    assert _products(runs["slurm"], "*_crf.fits") == names
    for name in names:
        _assert_same_arrays(name, runs["local"] / name, runs["slurm"] / name, CRF_ARRAYS)


def test_catalog_and_segmentation_equal_local_run(runs):
    """Every column and row of the _cat.ecsv table, and the _segm map, equal the local run's."""
    product = runs["sim"]["product"]
    local = Table.read(runs["local"] / f"{product}_cat.ecsv", format="ascii.ecsv")
    remote = Table.read(runs["slurm"] / f"{product}_cat.ecsv", format="ascii.ecsv")
    assert len(local) > 0
    assert local.colnames == remote.colnames and len(local) == len(remote)
    for col in local.colnames:
        a, b = local[col], remote[col]
        if isinstance(a, SkyCoord):
            pairs = [(a.ra.deg, b.ra.deg), (a.dec.deg, b.dec.deg)]
        else:
            assert getattr(a, "unit", None) == getattr(b, "unit", None), col
            pairs = [(np.asarray(a), np.asarray(b))]
        for x, y in pairs:
            assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), col
    name = f"{product}_segm.fits"
    _assert_same_arrays(name, runs["local"] / name, runs["slurm"] / name, ("SCI",))
