# Configuration check, input check, and the path helpers every rule uses.

import gc
import os
import re
import sys
import tempfile
from pathlib import Path

import yaml
from snakemake.logging import logger
from snakemake.utils import validate

# What Snakemake has imported and built so far lives as long as the run: out
# of the garbage collector's passes, which otherwise walk it over and over
# while the DAG is built (a dry run of 8 exposures: 1.55 -> 1.33 s, the exit
# included).  Objects that live on are frozen again by the hooks
# (`freeze_live_objects`).
gc.freeze()

sys.path.insert(0, workflow.basedir)

# Scripts import the package from this checkout, also inside --use-conda envs.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (workflow.basedir, os.environ.get("PYTHONPATH", "")) if p
)
# One job per core: keep numeric libraries from starting threads of their own.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

# The warm job server (calimage3/job_server.py) is launched here, as early
# as it can be (once the environment its workers inherit is set; before the
# configuration check, whose `job_server` value `job_server_wanted` reads
# again), so that its imports overlap the rest of the parsing and the DAG's
# planning; whether this run uses it (local, not --use-conda) is known only
# when the jobs start (onstart).  A dry run, a finished output or a parse
# error never starts jobs: the server then exits with this process.
if config.get("job_server", True) and workflow.is_main_process:
    from calimage3.job_server import JobServer

    JOB_SERVER = JobServer(tempfile.gettempdir())
else:
    JOB_SERVER = None

from calimage3.config import coerce_types

with open(Path(workflow.basedir) / "config" / "schema.yaml") as _fh:
    coerce_types(config, yaml.safe_load(_fh))
validate(config, "../config/schema.yaml")

from calimage3 import io as _io
from calimage3.campaign import MANIFEST, manifest_entry, select_shard
from calimage3.preflight import check_campaign, check_inputs, resolve_asn_paths

# One association (asn=PATH): every product directly in output_dir.  A
# campaign (asns=GLOB, folder or list): one folder per product under
# output_dir, each with its own work/, logs/ and benchmarks/; the
# association-independent tweakreg source detection is shared under
# output_dir/work, output_dir/logs and output_dir/benchmarks.
if config.get("asn") and config.get("asns"):
    raise _io.InputFileError("config 'asn' and 'asns'", "give one association (asn=PATH) or a campaign (asns=GLOB), not both")
CAMPAIGN = bool(config.get("asns"))
OUT = str(Path(config["output_dir"]))
# Findings on each member are cached in OUT/.calimage3/preflight.json: a later
# start opens only members whose size or modification time changed.
_CHECKS = {"cache_dir": OUT, "allow_mixed_filters": config["allow_mixed_filters"]}
if CAMPAIGN:
    try:
        _asn_paths = select_shard(resolve_asn_paths(config["asns"]), config.get("shard"))
    except ValueError as _exc:
        raise _io.InputFileError("config 'shard'", str(_exc)) from None
    ASNS, REJECTED = check_campaign([str(p) for p in _asn_paths], skip_bad=config["skip_bad_associations"],
                                    **_CHECKS)
    for _path, _reason in REJECTED.items():
        logger.warning(f"calimage3: association {_path} left out of the campaign: {_reason}")
else:
    ASNS, REJECTED = [check_inputs(config["asn"], **_CHECKS)], {}
WORK = f"{OUT}/work"
LOGS = f"{OUT}/logs"
BENCH = f"{OUT}/benchmarks"
# Exposure root -> _cal file, over every association (preflight made them agree).
CAL_FILES = {m.root: str(m.path) for a in ASNS for m in a.members}

if CAMPAIGN:
    _single_cal = [a.members[0].path for a in ASNS if a.single]
    if _single_cal:
        raise _io.InputFileError(_single_cal[0], "a campaign (asns=...) takes image3 associations (.json); "
                                                 "run a lone _cal with asn=PATH")

# Every rule is defined once: a product's files are under PRODUCT_DIR, which
# in a campaign holds the {product} wildcard, and an input function finds
# the association of the job's product.  The constraints are fixed
# patterns, so matching a file against a rule costs the same however large
# the campaign (a list of every root or product would not).
PRODUCT_DIR = f"{OUT}/{{product}}" if CAMPAIGN else OUT


def _asn_id_pattern():
    """Regex of the {asn_id} in _crf names: an asn_id without '_' when all are (JWST's are, e.g. a3001)."""
    ids = sorted({a.asn_id for a in ASNS}, key=len, reverse=True)
    if all("_" not in i for i in ids):
        return "[^_/]+"
    return "|".join(re.escape(i) for i in ids)


wildcard_constraints:
    root="[^/]+",
    product="[^/]+",
    asn_id=_asn_id_pattern(),


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
    return CAL_FILES[wildcards.root]


def sources_path(root):
    """Tweakreg sources of one exposure: shared by every association that has it."""
    return f"{WORK}/tweakreg/{root}_sources.ecsv"


class ProductPaths:
    """Where one product's files are: under ``out``, named with ``product`` and ``asn_id``.

    With literal names these are a product's files; with ``{product}``,
    ``{asn_id}`` and ``{root}`` wildcards they are the rules' patterns.
    Folders written whole by one group job (``*_dir``) hold one file per
    exposure, named by `calimage3.layout`.
    """

    def __init__(self, out, product, asn_id):
        self.out = out
        self.product = product
        self.asn_id = asn_id
        self.work = f"{out}/work"
        self.logs = f"{out}/logs"
        self.bench = f"{out}/benchmarks"
        self.qa = f"{out}/qa"

    def crf(self, root):
        return f"{self.out}/{root}_{self.asn_id}_crf.fits"

    def mtwcs_dir(self):
        """Every exposure's WCS shifted onto the moving target (assign_mtwcs)."""
        return f"{self.work}/assign_mtwcs"

    def tweakreg_dir(self):
        """Every exposure's aligned WCS (tweakreg_align; calimage3.layout.aligned_wcs)."""
        return f"{self.work}/tweakreg/aligned"

    def skymatch(self):
        return f"{self.work}/skymatch/skymatch.json"

    def outlier_grid_dir(self):
        """The outlier-detection grid, each exposure's pixel map onto it and its WCS rendered for the _crf."""
        return f"{self.work}/outlier_detection/grid"

    def outlier_single(self, root):
        return f"{self.work}/outlier_detection/{root}_single.fits"

    def outlier_median(self):
        return f"{self.work}/outlier_detection/median.fits"

    def resample_grid_dir(self):
        """The mosaic grid as the _i2d carries it and each exposure's pixel map onto it."""
        return f"{self.work}/resample/grid"

    def contribution(self, root):
        """One exposure drizzled onto its part of the mosaic grid (rules/resample.smk)."""
        return f"{self.work}/resample/{root}_contribution.fits"

    def single_resampled(self, root):
        """Exposure ``root`` resampled alone onto the mosaic grid, named as JWST names single outputs."""
        return f"{self.out}/{root}_outlier_i2d.fits"

    def i2d(self):
        return f"{self.out}/{self.product}_i2d.fits"

    def cat(self):
        return f"{self.out}/{self.product}_cat.ecsv"

    def segm(self):
        return f"{self.out}/{self.product}_segm.fits"

    # ---- sky tiles (rules/tiles.smk): the same products per tile ---------

    def tile_grid_dir(self, tile):
        """A sky tile's grid as its _i2d carries it and the pixel maps onto it of the exposures touching it."""
        return f"{self.work}/tiles/{tile}/grid"

    def tile_contribution(self, tile, root):
        """Exposure ``root`` drizzled onto its part of sky tile ``tile``."""
        return f"{self.work}/tiles/{tile}/{root}_contribution.fits"

    def tile_i2d(self, tile):
        return f"{self.out}/{self.product}_{tile}_i2d.fits"

    def tile_cat(self, tile):
        return f"{self.out}/{self.product}_{tile}_cat.ecsv"

    def tile_segm(self, tile):
        return f"{self.out}/{self.product}_{tile}_segm.fits"

    def outlier_tile_grid_dir(self, tile):
        """An outlier-detection tile's grid and the pixel maps onto it (tiling.outlier_tile_size)."""
        return f"{self.work}/outlier_detection/tiles/{tile}/grid"

    def outlier_tile_single(self, tile, root):
        return f"{self.work}/outlier_detection/tiles/{tile}/{root}_single.fits"

    def outlier_tile_median(self, tile):
        return f"{self.work}/outlier_detection/tiles/{tile}/median.fits"

    def tiles_cat(self):
        """The product's catalog over all its tiles: each source once, measured on the tile owning it."""
        return f"{self.out}/{self.product}_tiles_cat.ecsv"


class Product(ProductPaths):
    """One association's files, and the lists of them its group jobs take."""

    def __init__(self, asn, out):
        super().__init__(out, asn.product, asn.asn_id)
        self.asn = asn
        self.roots = asn.roots
        self.single = asn.single

    def all_cal(self):
        return [str(m.path) for m in self.asn.members]

    def all_crf(self):
        return [self.crf(r) for r in self.roots]

    def tweakreg_catalogs(self):
        """Source catalogs tweakreg aligns; none when the step is skipped or the
        target moves (JWST then runs assign_mtwcs instead of tweakreg)."""
        if config["tweakreg"].get("skip") or self.asn.moving_target:
            return []
        return [sources_path(r) for r in self.roots]

    def all_contributions(self):
        """Every exposure's contribution to the mosaic, in association order."""
        return [self.contribution(r) for r in self.roots]

    def final_products(self):
        """Every product of this association, as JWST names them."""
        single_images = bool(config["resample"].get("single"))
        if single_images:
            # JWST resample single=true: one resampled image per exposure, no mosaic or catalog
            products = [self.single_resampled(r) for r in self.roots]
        elif TILING_ON:
            products = tile_products(self)  # rules/tiles.smk
        else:
            products = [self.i2d(), self.cat(), self.segm()]
        if not self.single:
            products += self.all_crf()
        if config["qa_figures"] and not single_images:  # the QA figures are of the mosaic
            # with sky tiles there is no mosaic: the figure of the tile layout (rules/tiles.smk)
            products += tile_qa_paths(self) if TILING_ON else qa_figure_paths(self)  # rules/qa_common.smk
        return products


PRODUCTS = {a.product: Product(a, f"{OUT}/{a.product}" if CAMPAIGN else OUT) for a in ASNS}
# The rules' patterns.  One association: its literal folder, product and
# asn_id (no wildcards but {root}); a campaign: {product} and {asn_id}.
RULE = (ProductPaths(PRODUCT_DIR, "{product}", "{asn_id}") if CAMPAIGN
        else ProductPaths(OUT, ASNS[0].product, ASNS[0].asn_id))
# Whether the rules make the figures of exposures (not for a lone _cal).
RULE_HAS_EXPOSURES = not (len(ASNS) == 1 and ASNS[0].single)


def final_products():
    """Every product of the stage, of every association."""
    return [path for p in PRODUCTS.values() for path in p.final_products()] + tile_index_path()  # rules/tiles.smk


def write_campaign_manifest():
    """Record what `calimage3-status OUTPUT_DIR` reads: every planned association,
    the files that make it complete and its logs, and the refused ones.
    Called by the Snakefile once every rule file is included."""
    _io.write_manifest(f"{OUT}/{MANIFEST}", {
        "campaign": CAMPAIGN,
        "products": {
            name: manifest_entry(P.asn.path or P.asn.members[0].path, P.out, P.final_products(), P.logs,
                                 [f"{LOGS}/tweakreg_detect/{r}.log" for r in P.roots])
            for name, P in PRODUCTS.items()
        },
        "rejected": {str(path): reason for path, reason in REJECTED.items()},
    })


def exposure_batch(step):
    """Job group of a per-exposure rule of ``step``; None unless ``exposure_batches``.

    The SLURM profile turns ``exposure_batches`` on (its config file) and
    its ``group-components`` submits up to N of these jobs as one cluster
    job.  In a campaign the group is per product, so a batch never holds
    jobs of two associations and one failing association cannot hold back
    the others.  Locally groups would only cost planning time.
    """
    if not config["exposure_batches"]:
        return None
    return f"{step}_{{product}}" if CAMPAIGN else step


# ---- input functions: a job's association from its wildcards -------------

def product_of(wildcards):
    """The Product of a job: from its {product} wildcard in a campaign, else the only one."""
    if CAMPAIGN:
        return PRODUCTS[wildcards.product]
    return next(iter(PRODUCTS.values()))


def member_cal_files(wildcards):
    """The _cal files of the job's association, in association order."""
    return product_of(wildcards).all_cal()


def member_roots(wildcards):
    """Exposure roots of the job's association, in association order."""
    return product_of(wildcards).roots


def member_group_ids(wildcards):
    """The ASN group_id of each member (tweakreg's exposure groups)."""
    return [m.group_id for m in product_of(wildcards).asn.members]


def member_crf_files(wildcards):
    """The _crf files of the job's association."""
    return product_of(wildcards).all_crf()


def aligned_wcs_folder(wildcards):
    """Folder of the association's tweakreg WCSs."""
    return product_of(wildcards).tweakreg_dir()


def mem_mb_group(wildcards, input, attempt):
    """Memory for a group job: a few copies of one input plus the output."""
    largest = max((os.path.getsize(f) for f in input if os.path.isfile(f)), default=0)
    return int(1000 + 6 * largest / 1e6) * attempt


def runtime_minutes(wildcards, input, attempt):
    """Wall-time request: 5 minutes plus one per 20 MB of input (measured jobs read
    well over 100 MB a minute), doubled on each retry."""
    total = sum(os.path.getsize(f) for f in input if os.path.isfile(f))
    return int(5 + total / 20e6) * 2 ** (attempt - 1)


# Size of every exposure's _cal, MB, read once: the per-exposure jobs' requests
# scale with it (a callable with `input` would stat every input of every job
# while planning, which doubled the planning time of a 1,000-association campaign).
CAL_MB = {root: os.path.getsize(path) / 1e6 for root, path in CAL_FILES.items()}


def mem_mb_exposure(wildcards, attempt):
    """Memory for a per-exposure job: a few copies of its _cal (the grid or
    median it also reads is about one _cal extension), doubled on each retry."""
    return int(500 + 6 * CAL_MB[wildcards.root]) * attempt


def runtime_exposure(wildcards, attempt):
    """Wall-time request of a per-exposure job: 5 minutes plus one per 10 MB of
    _cal (jobs read well over 100 MB a minute), doubled on each retry."""
    return int(5 + CAL_MB[wildcards.root] / 10) * 2 ** (attempt - 1)


# ---- the warm job server (calimage3/job_server.py) ---------------------------

def job_server_wanted():
    """Whether this run forks its jobs from a warm job server: local runs with
    ``job_server`` on, the jobs in this interpreter (not --use-conda)."""
    from snakemake.settings.types import DeploymentMethod

    return (bool(config.get("job_server", True)) and workflow.local_exec and workflow.is_main_process
            and DeploymentMethod.CONDA not in workflow.deployment_settings.deployment_method)


def activate_job_server_if_wanted():
    """Point the jobs at the job server when `job_server_wanted`, else stop it (the Snakefile's onstart)."""
    if JOB_SERVER is not None:
        if job_server_wanted():
            JOB_SERVER.activate()
        else:
            JOB_SERVER.stop()


def stop_job_server():
    """Stop the job server, if this run launched one (onsuccess and onerror)."""
    if JOB_SERVER is not None:
        JOB_SERVER.stop()


def freeze_live_objects():
    """Move every object alive now out of the garbage collector's passes (onstart, onsuccess, onerror).

    At onstart that is the DAG and its jobs, which the scheduler keeps to
    the end; at onsuccess and onerror, everything: the interpreter's last
    collection at exit then skips them (a third of a second after the last
    job of a 4-exposure run).  Frozen objects are not freed by the collector;
    these are kept, or freed by the exit, anyway.
    """
    gc.freeze()


def cancel_idle_timers():
    """Cancel the timers Snakemake's job-rate limiter left behind (onsuccess and onerror).

    With its default ``--max-jobs-per-timespan`` the scheduler arms a 1 s
    ``threading.Timer`` (not a daemon) to look at the queue again; the last
    one outlives the run, and Python waits for it before exiting: every run
    ended about a second after its last job.  The scheduler has returned
    when these hooks run, so nothing is left for the timers to wake.
    """
    import threading

    for thread in threading.enumerate():
        if isinstance(thread, threading.Timer):
            thread.cancel()
