# Configuration check, input check, and the path helpers every rule uses.

import os
import sys
from pathlib import Path

import yaml
from snakemake.utils import validate

sys.path.insert(0, workflow.basedir)
from calimage3.config import coerce_types

with open(Path(workflow.basedir) / "config" / "schema.yaml") as _fh:
    coerce_types(config, yaml.safe_load(_fh))
validate(config, "../config/schema.yaml")

# Scripts import the package from this checkout, also inside --use-conda envs.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (workflow.basedir, os.environ.get("PYTHONPATH", "")) if p
)
# One job per core: keep numeric libraries from starting threads of their own.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

from calimage3.preflight import check_inputs

ASN = check_inputs(config["asn"])
OUT = str(Path(config["output_dir"]))
WORK = f"{OUT}/work"
LOGS = f"{OUT}/logs"
BENCH = f"{OUT}/benchmarks"
ROOTS = ASN.roots


wildcard_constraints:
    root="|".join(ROOTS),


def step_params(step, names=None):
    """Parameters of ``step`` from the config; only ``names`` when given.

    A rule's ``params`` are what make Snakemake rerun it when they change, so
    each rule takes just the parameters it uses.
    """
    params = dict(config.get(step, {}))
    if names is not None:
        params = {k: v for k, v in params.items() if k in names}
    return params


def cal_path(wildcards):
    """The _cal file of exposure ``wildcards.root``."""
    return str(ASN.member(wildcards.root).path)


def all_cal():
    return [str(m.path) for m in ASN.members]


def crf_path(root):
    return f"{OUT}/{root}_{ASN.asn_id}_crf.fits"


def all_crf():
    return [crf_path(r) for r in ROOTS]


def mtwcs_path(root):
    return f"{WORK}/assign_mtwcs/{root}_wcs.asdf"


def tweakreg_wcs_path(root):
    return f"{WORK}/tweakreg/{root}_tweakreg.asdf"


def tweakreg_catalogs():
    """Source catalogs tweakreg aligns; none when the step is skipped."""
    if config["tweakreg"].get("skip"):
        return []
    return [f"{WORK}/tweakreg/{r}_sources.ecsv" for r in ROOTS]


def outlier_median_inputs(wildcards):
    """The median and its grid, unless outlier detection is skipped."""
    if config["outlier_detection"].get("skip"):
        return {}
    return {
        "median": f"{WORK}/outlier_detection/median.fits",
        "grid": f"{WORK}/outlier_detection/grid_wcs.asdf",
    }


def i2d_path():
    return f"{OUT}/{ASN.product}_i2d.fits"


def resample_input(wildcards):
    """The file exposure ``wildcards.root`` is drizzled from: its _crf, or the lone _cal."""
    return cal_path(wildcards) if ASN.single else crf_path(wildcards.root)


def contribution_path(root):
    """One exposure drizzled onto its part of the mosaic grid (rules/resample.smk)."""
    return f"{WORK}/resample/{root}_contribution.fits"


def all_contributions():
    """Every exposure's contribution to the mosaic, in association order."""
    return [contribution_path(r) for r in ROOTS]


def resample_wcs_inputs():
    """Where the exposures' final WCSs are: tweakreg output, or the lone _cal."""
    return all_cal() if ASN.single else [tweakreg_wcs_path(r) for r in ROOTS]


def final_products():
    """Every product of the stage, as JWST names them."""
    products = [i2d_path(), f"{OUT}/{ASN.product}_cat.ecsv", f"{OUT}/{ASN.product}_segm.fits"]
    if not ASN.single:
        products += all_crf()
    if config["qa_figures"]:
        products += qa_figure_paths()  # rules/qa.smk
    return products


def mem_mb_group(wildcards, input, attempt):
    """Memory for a group job: a few copies of one input plus the output."""
    largest = max((os.path.getsize(f) for f in input if os.path.exists(f)), default=0)
    return int(1000 + 6 * largest / 1e6) * attempt


def mem_mb_exposure(wildcards, input, attempt):
    """Memory for a per-exposure job: a few copies of its inputs."""
    total = sum(os.path.getsize(f) for f in input if os.path.exists(f))
    return int(500 + 4 * total / 1e6) * attempt
