# Configuration check, input check, and the path helpers every rule uses.

import os
import re
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

from calimage3 import io as _io
from calimage3.preflight import check_campaign, check_inputs

# One association (asn=PATH): every product directly in output_dir.  A
# campaign (asns=GLOB, folder or list): one folder per product under
# output_dir, each with its own work/, logs/ and benchmarks/; the
# association-independent tweakreg source detection is shared under
# output_dir/work, output_dir/logs and output_dir/benchmarks.
if config.get("asn") and config.get("asns"):
    raise _io.InputFileError("config 'asn' and 'asns'", "give one association (asn=PATH) or a campaign (asns=GLOB), not both")
CAMPAIGN = bool(config.get("asns"))
ASNS = check_campaign(config["asns"]) if CAMPAIGN else [check_inputs(config["asn"])]
OUT = str(Path(config["output_dir"]))
WORK = f"{OUT}/work"
LOGS = f"{OUT}/logs"
BENCH = f"{OUT}/benchmarks"
# Exposure root -> _cal file, over every association (preflight made them agree).
CAL_FILES = {m.root: str(m.path) for a in ASNS for m in a.members}
ROOTS = list(CAL_FILES)


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
    return CAL_FILES[wildcards.root]


def sources_path(root):
    """Tweakreg sources of one exposure: shared by every association that has it."""
    return f"{WORK}/tweakreg/{root}_sources.ecsv"


class Product:
    """Paths and rule names of one association's jobs.

    Each step's .smk file defines its rules once per Product; the bound
    methods taking ``wildcards`` are the rules' input functions.  With one
    association the rule names are the plain step names; in a campaign of
    several they end in ``__<product>``.
    """

    def __init__(self, asn, out, suffix=""):
        self.asn = asn
        self.out = out
        self.work = f"{out}/work"
        self.logs = f"{out}/logs"
        self.bench = f"{out}/benchmarks"
        self.qa = f"{out}/qa"
        self.roots = asn.roots
        self.single = asn.single
        self.suffix = suffix

    def rule(self, step):
        """Name of this association's rule of ``step``."""
        return step + self.suffix

    def all_cal(self):
        return [str(m.path) for m in self.asn.members]

    def crf(self, root):
        return f"{self.out}/{root}_{self.asn.asn_id}_crf.fits"

    def all_crf(self):
        return [self.crf(r) for r in self.roots]

    def mtwcs(self, root):
        return f"{self.work}/assign_mtwcs/{root}_wcs.asdf"

    def tweakreg_wcs(self, root):
        return f"{self.work}/tweakreg/{root}_tweakreg.asdf"

    def all_tweakreg_wcs(self):
        return [self.tweakreg_wcs(r) for r in self.roots]

    def tweakreg_catalogs(self):
        """Source catalogs tweakreg aligns; none when the step is skipped or the
        target moves (JWST then runs assign_mtwcs instead of tweakreg)."""
        if config["tweakreg"].get("skip") or self.asn.moving_target:
            return []
        return [sources_path(r) for r in self.roots]

    def skymatch(self):
        return f"{self.work}/skymatch/skymatch.json"

    def outlier_grid(self):
        return f"{self.work}/outlier_detection/grid_wcs.asdf"

    def rendered_wcs(self, root):
        """Exposure ``root``'s aligned WCS rendered for its _crf (calimage3.io.write_rendered_wcs)."""
        return f"{self.work}/outlier_detection/{root}_crf_wcs.fits"

    def outlier_pixmap(self, root):
        """Exposure ``root``'s pixel map onto the outlier-detection grid (calimage3.pixmap)."""
        return f"{self.work}/outlier_detection/{root}_pixmap.fits"

    def outlier_single(self, root):
        return f"{self.work}/outlier_detection/{root}_single.fits"

    def outlier_median(self):
        return f"{self.work}/outlier_detection/median.fits"

    def outlier_median_inputs(self, wildcards):
        """The median and its grid, unless outlier detection is skipped."""
        if config["outlier_detection"].get("skip"):
            return {}
        return {"median": self.outlier_median(), "pixmap": self.outlier_pixmap(wildcards.root)}

    def resample_grid(self):
        """The mosaic grid, its WCS rendered as the _i2d carries it (calimage3.io.write_rendered_wcs)."""
        return f"{self.work}/resample/output_wcs.fits"

    def resample_pixmap(self, root):
        """Exposure ``root``'s pixel map onto the mosaic grid (calimage3.pixmap)."""
        return f"{self.work}/resample/{root}_pixmap.fits"

    def resample_input(self, wildcards):
        """The file exposure ``wildcards.root`` is drizzled from: its _crf, or the lone _cal."""
        return cal_path(wildcards) if self.single else self.crf(wildcards.root)

    def contribution(self, root):
        """One exposure drizzled onto its part of the mosaic grid (rules/resample.smk)."""
        return f"{self.work}/resample/{root}_contribution.fits"

    def all_contributions(self):
        """Every exposure's contribution to the mosaic, in association order."""
        return [self.contribution(r) for r in self.roots]

    def resample_wcs_inputs(self):
        """Where the exposures' final WCSs are: tweakreg output, or the lone _cal."""
        return self.all_cal() if self.single else self.all_tweakreg_wcs()

    def i2d(self):
        return f"{self.out}/{self.asn.product}_i2d.fits"

    def cat(self):
        return f"{self.out}/{self.asn.product}_cat.ecsv"

    def segm(self):
        return f"{self.out}/{self.asn.product}_segm.fits"

    def final_products(self):
        """Every product of this association, as JWST names them."""
        single_images = bool(config["resample"].get("single"))
        if single_images:
            # JWST resample single=true: one resampled image per exposure, no mosaic or catalog
            products = all_single_resampled(self)  # rules/resample.smk
        else:
            products = [self.i2d(), self.cat(), self.segm()]
        if not self.single:
            products += self.all_crf()
        if config["qa_figures"] and not single_images:  # the QA figures are of the mosaic
            products += qa_figure_paths(self)  # rules/qa_common.smk
        return products


def _rule_suffix(asn):
    return f"__{re.sub(r'[^A-Za-z0-9_]', '_', asn.product)}" if len(ASNS) > 1 else ""


PRODUCTS = [Product(a, f"{OUT}/{a.product}" if CAMPAIGN else OUT, _rule_suffix(a)) for a in ASNS]


def final_products():
    """Every product of the stage, of every association."""
    return [path for p in PRODUCTS for path in p.final_products()]


def mem_mb_group(wildcards, input, attempt):
    """Memory for a group job: a few copies of one input plus the output."""
    largest = max((os.path.getsize(f) for f in input if os.path.exists(f)), default=0)
    return int(1000 + 6 * largest / 1e6) * attempt


def runtime_minutes(wildcards, input, attempt):
    """Wall-time request: 5 minutes plus one per 20 MB of input (measured jobs read
    well over 100 MB a minute), doubled on each retry."""
    total = sum(os.path.getsize(f) for f in input if os.path.exists(f))
    return int(5 + total / 20e6) * 2 ** (attempt - 1)


def mem_mb_exposure(wildcards, input, attempt):
    """Memory for a per-exposure job: a few copies of its inputs."""
    total = sum(os.path.getsize(f) for f in input if os.path.exists(f))
    return int(500 + 4 * total / 1e6) * attempt
