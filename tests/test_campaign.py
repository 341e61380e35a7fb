"""Campaign mode: several associations sharing exposures built in one DAG (asns=GLOB)."""

import json
import re
from pathlib import Path

import pytest
import workflow_runs

from calimage3 import io
from calimage3.association import exposure_root
from calimage3.preflight import check_campaign, resolve_asn_paths
from calimage3.simulate import simulate_dither

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow
# Exposures (1-based) of the three associations: 3 is in all, 2 and 4 in two.
GROUPS = ((1, 2, 3), (2, 3, 4), (3, 4, 5))
SETTINGS = ("tweakreg={'minobj': 8}", "qa_figures=false")


def run_snakemake(asns, output_dir, *config_items, flags=(), check=True):
    """Run the workflow on ``asns``; return the completed process."""
    return workflow_runs.run_snakemake(f"asns={asns}", output_dir, *config_items, flags=flags, check=check)


def planned_jobs(asns, output_dir, *config_items):
    """Rule -> job count a dry run on ``asns`` would execute."""
    return workflow_runs.planned_jobs(f"asns={asns}", output_dir, *config_items)


def write_campaign(folder, groups=GROUPS):
    """Three ASNs over one simulated dither set, next to its _cal files; return (glob, products)."""
    sim = simulate_dither(folder, n_exposures=5, shape=(256, 256), seed=7, n_stars=160, n_galaxies=10)
    template = json.loads(Path(sim["asn"]).read_text())
    Path(sim["asn"]).unlink()  # only the campaign's associations match the glob
    members = template["products"][0]["members"]
    products = []
    for k, group in enumerate(groups, start=1):
        product = f"jw01234-o001_t00{k}_nircam_clear-f200w"
        content = dict(template, asn_id=f"a300{k}",
                       products=[{"name": product, "members": [members[i - 1] for i in group]}])
        (Path(folder) / f"campaign{k}_asn.json").write_text(json.dumps(content, indent=2))
        products.append((product, f"a300{k}", [exposure_root(members[i - 1]["expname"]) for i in group]))
    return f"{folder}/*_asn.json", products


@pytest.fixture(scope="module")
def campaign_run(tmp_path_factory):
    """Simulate 5 exposures, write 3 overlapping ASNs and run the campaign once."""
    base = tmp_path_factory.mktemp("campaign")
    pattern, products = write_campaign(base / "data")
    out = base / "out"
    run_snakemake(pattern, out, *SETTINGS)
    return {"glob": pattern, "products": products, "out": out}


def test_each_product_has_its_folder(campaign_run):
    """Every association's _crf, _i2d, _cat and _segm are in DIR/<product>/."""
    out = campaign_run["out"]
    for product, asn_id, roots in campaign_run["products"]:
        folder = out / product
        for root in roots:
            assert (folder / f"{root}_{asn_id}_crf.fits").is_file()
        for suffix in ("i2d.fits", "cat.ecsv", "segm.fits"):
            assert (folder / f"{product}_{suffix}").is_file()
        assert (folder / "logs" / "resample.log").is_file()
        assert (folder / "benchmarks" / "source_catalog.tsv").is_file()
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == []


def test_shared_exposures_detected_once(campaign_run):
    """tweakreg_detect ran once for each of the 5 exposures, not once per association."""
    out = campaign_run["out"]
    assert len(list((out / "benchmarks" / "tweakreg_detect").glob("*.tsv"))) == 5
    assert len(list(out.rglob("*_sources.ecsv"))) == 5
    assert list(out.glob("*/benchmarks/tweakreg_detect")) == []


def test_rerun_plans_nothing(campaign_run):
    """A second run with the same configuration has nothing to do."""
    assert planned_jobs(campaign_run["glob"], campaign_run["out"], *SETTINGS) == {}


def test_catalog_parameters_rerun_only_catalogs(campaign_run):
    """Changing source_catalog parameters plans one catalog job per association."""
    jobs = planned_jobs(campaign_run["glob"], campaign_run["out"], *SETTINGS,
                        "source_catalog={'snr_threshold': 4.0}")
    assert jobs == {"source_catalog": len(campaign_run["products"]), "all": 1}


def test_asn_and_asns_together_rejected(tmp_path):
    """Giving both asn and asns stops before any job with a message naming both."""
    proc = run_snakemake("x_asn.json", tmp_path / "out", "asn=y_asn.json", flags=("--dry-run",), check=False)
    assert proc.returncode != 0
    assert "not both" in proc.stdout + proc.stderr


def test_glob_without_match_is_named(tmp_path):
    """A glob matching no file is an error that names the glob."""
    pattern = f"{tmp_path}/*_asn.json"
    with pytest.raises(io.InputFileError, match=re.escape(pattern) + ": glob matches no association file"):
        resolve_asn_paths(pattern)


def test_duplicate_product_rejected(tmp_path):
    """Two associations with the same product name would share a folder: an error."""
    pattern, _ = write_campaign(tmp_path, groups=((1, 2), (2, 3)))
    second = tmp_path / "campaign2_asn.json"
    content = json.loads(second.read_text())
    content["products"][0]["name"] = "jw01234-o001_t001_nircam_clear-f200w"
    second.write_text(json.dumps(content))
    with pytest.raises(io.InputFileError, match="also the product of"):
        check_campaign(pattern)
