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


def _snakemake(asn, output_dir, env, *extra, config=()):
    """Start the workflow with the documented command line plus ``extra``; return the process.

    ``asn`` is ``asn=PATH`` or ``asns=GLOB`` (a bare path means ``asn=``).
    """
    item = asn if str(asn).startswith(("asn=", "asns=")) else f"asn={asn}"
    cmd = [sys.executable, "-m", "snakemake", *extra, "--config", item, f"output_dir={output_dir}", *config]
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


def _slurm_flags(slurm_logdir):
    """The SLURM profile as a user runs it, fitted to the one-node, 2-CPU test cluster."""
    return (
        "--profile", "profiles/slurm",
        # Keep the SLURM logs of this run apart from the checkout's .snakemake/.
        "--slurm-logdir", str(slurm_logdir),
        # Short jobs: look at the queue soon after submitting.
        "--slurm-init-seconds-before-status-checks", "2",
        # Batches no wider than the test node (the profile's 4 would never start on it).
        "--cores", "2",
    )


@pytest.fixture(scope="module")
def runs(slurm_env, tmp_path_factory):
    """The same 3-exposure dither run locally (--cores 2) and through the SLURM profile."""
    base = tmp_path_factory.mktemp("slurm_e2e")
    sim = simulate_dither(base / "data", n_exposures=3, shape=(256, 256), seed=5)
    # Both runs at once (different output folders): the SLURM run spends most
    # of its time waiting on job start-up and status polls.
    slurm = _snakemake(
        sim["asn"], base / "slurm", slurm_env,
        *_slurm_flags(base / "slurm_logs"),
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
    """(SLURM log folder, SLURM job id) of every SLURM job the executor submitted, from the Snakemake log.

    The folder is ``rule_<rule>`` for one job, ``group_<group id>...`` for a batch.
    """
    pattern = r"has been submitted with SLURM jobid (\d+) \(log: \S+/((?:rule|group)_[^/]+)/"
    return [(folder, jobid) for jobid, folder in re.findall(pattern, log)]


def _steps(log):
    """Total number of jobs of a finished run ("N of N steps (100%) done")."""
    return int(re.findall(r"(\d+) of \1 steps \(100%\) done", log)[-1])


def _assert_completed_slurm_jobs(run, submitted):
    """Every submitted SLURM job is COMPLETED in squeue and left its SLURM log."""
    ids = sorted({j for _, j in submitted}, key=int)
    assert len(ids) == len(submitted)
    query = subprocess.run(["squeue", "--states=all", "--noheader", "--format=%i|%T", "--jobs", ",".join(ids)],
                           capture_output=True, text=True, env=run["env"], timeout=60)
    assert query.returncode == 0, query.stderr
    states = dict(line.split("|") for line in query.stdout.split())
    assert states == {j: "COMPLETED" for j in ids}
    for folder, jobid in submitted:
        assert list(run["slurm_logs"].glob(f"{folder}/**/{jobid}.log")), (folder, jobid)
    # Status came from squeue (no accounting database on this cluster).
    assert "Falling back to 'sacct'" not in run["slurm_log"]


def test_every_job_ran_in_a_slurm_job(runs):
    """Every non-local job ran inside an sbatch job (the per-exposure ones in batches), all COMPLETED."""
    log = runs["slurm_log"]
    submitted = _submitted(log)
    # The same jobs as the local run; all but local rules (the target `all`,
    # run by Snakemake itself) went to SLURM, the per-exposure ones batched.
    assert _steps(log) == _steps(runs["local_log"])
    local_rules = re.findall(r"^localrule (\w+):", log, flags=re.MULTILINE)
    folders = {folder for folder, _ in submitted}
    assert {"rule_tweakreg_align", "rule_skymatch", "rule_resample", "rule_source_catalog"} <= folders
    for batched in ("tweakreg_detect", "outlier_single", "outlier_flag", "resample_exposure"):
        assert any(f.startswith(f"group_{batched}") for f in folders), batched
        assert f"rule_{batched}" not in folders, batched
    assert 10 < len(submitted) < _steps(log) - len(local_rules)
    _assert_completed_slurm_jobs(runs, submitted)


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


@pytest.fixture(scope="module")
def campaign_runs(slurm_env, tmp_path_factory):
    """A campaign of 3 associations over 5 exposures, run locally and through the SLURM profile."""
    sys.path.insert(0, str(REPO / "tests"))
    from test_campaign import write_campaign

    base = tmp_path_factory.mktemp("slurm_campaign")
    pattern, products = write_campaign(base / "data")
    config = ("tweakreg={'minobj': 8}", "qa_figures=false")
    slurm = _snakemake(f"asns={pattern}", base / "slurm", slurm_env, *_slurm_flags(base / "slurm_logs"),
                       config=config)
    local = _snakemake(f"asns={pattern}", base / "local", slurm_env, "--cores", "2", config=config)
    logs = {name: _finish(proc) for name, proc in (("local", local), ("slurm", slurm))}
    return {"products": products, "local": base / "local", "slurm": base / "slurm", "local_log": logs["local"],
            "slurm_log": logs["slurm"], "slurm_logs": base / "slurm_logs", "env": slurm_env}


def test_campaign_submits_far_fewer_slurm_jobs(campaign_runs):
    """The campaign's per-exposure work goes to SLURM in batches: far fewer SLURM jobs than Snakemake jobs."""
    log = campaign_runs["slurm_log"]
    submitted = _submitted(log)
    steps = _steps(log)
    assert steps == _steps(campaign_runs["local_log"]) > 50
    assert len(submitted) < 0.7 * steps, (len(submitted), steps)
    # a batch holds one association's jobs: its name carries the product
    batches = [folder for folder, _ in submitted if folder.startswith("group_outlier_flag")]
    assert len(batches) == len(campaign_runs["products"])
    for product, _, _ in campaign_runs["products"]:
        assert sum(f.startswith(f"group_outlier_flag_{product}") for f in batches) == 1, product
    _assert_completed_slurm_jobs(campaign_runs, submitted)


def test_campaign_products_equal_local_run(campaign_runs):
    """Each association's _i2d, _crf and _segm arrays from SLURM equal the local run's exactly."""
    for product, asn_id, roots in campaign_runs["products"]:
        local, remote = campaign_runs["local"] / product, campaign_runs["slurm"] / product
        name = f"{product}_i2d.fits"
        _assert_same_arrays(name, local / name, remote / name, I2D_ARRAYS)
        name = f"{product}_segm.fits"
        _assert_same_arrays(name, local / name, remote / name, ("SCI",))
        for root in roots:
            name = f"{root}_{asn_id}_crf.fits"
            _assert_same_arrays(name, local / name, remote / name, CRF_ARRAYS)
