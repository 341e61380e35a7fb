"""Campaign mode: several associations sharing exposures built in one DAG (asns=GLOB)."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from astropy.io import fits
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


def test_outlier_parameters_rerun_flagging_and_dependents(campaign_run):
    """Changing outlier_detection.snr plans flagging, the final drizzle, resample and catalog of every association."""
    jobs = planned_jobs(campaign_run["glob"], campaign_run["out"], *SETTINGS,
                        "outlier_detection={'snr': '4.5 3.5'}")
    n_members = sum(len(roots) for _, _, roots in campaign_run["products"])
    n_products = len(campaign_run["products"])
    assert jobs == {"outlier_flag": n_members, "resample_exposure": n_members, "resample": n_products,
                    "source_catalog": n_products, "all": 1}


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


def test_rules_are_defined_once(campaign_run):
    """A campaign has the same rules as one association: no per-association rule copies."""
    proc = run_snakemake(campaign_run["glob"], campaign_run["out"], *SETTINGS, flags=("--list-rules",))
    rules = set(proc.stdout.split())
    assert {"tweakreg_align", "skymatch", "outlier_flag", "resample", "source_catalog"} <= rules
    assert not [r for r in rules if "__" in r]


def test_constraints_are_fixed_patterns(campaign_run):
    """No wildcard constraint lists the campaign's roots or products (matching cost independent of size)."""
    text = (REPO / "rules" / "common.smk").read_text()
    block = text.split("wildcard_constraints:", 1)[1].split("\n\n", 1)[0]
    assert "ROOTS" not in block and "join" not in block
    for _, _, roots in campaign_run["products"]:
        assert not any(root in block for root in roots)


def test_shards_partition_the_campaign(tmp_path):
    """shard=I/N plans every N-th association from the I-th; the shards together plan each once."""
    pattern, products = write_campaign(tmp_path / "data")
    names = [p for p, _, _ in products]
    planned = []
    for shard in ("1/2", "2/2"):
        jobs = planned_jobs(pattern, tmp_path / "out", *SETTINGS, f"shard={shard}")
        assert jobs["source_catalog"] == len(names[int(shard[0]) - 1 :: 2])
        planned.append(jobs["source_catalog"])
    assert sum(planned) == len(names)


def test_shards_share_per_exposure_detection(tmp_path):
    """After shard 1/2 ran, shard 2/2 detects only the exposures shard 1 did not have."""
    pattern, products = write_campaign(tmp_path / "data", groups=((1, 2, 3), (2, 3, 4)))
    out = tmp_path / "out"
    run_snakemake(pattern, out, *SETTINGS, "shard=1/2")
    assert (out / products[0][0] / f"{products[0][0]}_i2d.fits").is_file()
    assert not (out / products[1][0]).exists()
    jobs = planned_jobs(pattern, out, *SETTINGS, "shard=2/2")
    assert jobs["tweakreg_detect"] == 1  # exposure 4; 2 and 3 were detected by shard 1
    assert jobs["source_catalog"] == 1


def test_bad_shard_is_named(tmp_path):
    """A shard that is not I/N with 1 <= I <= N stops before any job, naming the setting."""
    pattern, _ = write_campaign(tmp_path / "data", groups=((1, 2), (2, 3)))
    proc = run_snakemake(pattern, tmp_path / "out", *SETTINGS, "shard=3/2", flags=("--dry-run",), check=False)
    assert proc.returncode != 0
    assert "shard" in proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def broken_campaign(tmp_path_factory):
    """Three associations, the first with a member whose data fail its checksum, plus one with a missing member.

    The damaged member passes the input checks (they read headers only) and
    fails its first job; the missing member is refused before any job.  Run
    with the local profile (keep-going); return the run and the status.
    """
    base = tmp_path_factory.mktemp("broken_campaign")
    pattern, products = write_campaign(base / "data")
    # Exposure 1 belongs to the first association only: written with checksums, then one SCI byte flipped.
    first_root = products[0][2][0]
    cal = base / "data" / f"{first_root}_cal.fits"
    with fits.open(cal) as hdul:
        hdul.writeto(cal, overwrite=True, checksum=True)
        offset = hdul.fileinfo(hdul.index_of("SCI"))["datLoc"] + 4000
    raw = bytearray(cal.read_bytes())
    raw[offset] ^= 0x40
    cal.write_bytes(bytes(raw))
    missing = json.loads((base / "data" / "campaign2_asn.json").read_text())
    missing["products"][0]["name"] = "jw01234-o001_t009_nircam_clear-f200w"
    missing["products"][0]["members"][0]["expname"] = "jw_not_there_cal.fits"
    (base / "data" / "campaign9_asn.json").write_text(json.dumps(missing))
    out = base / "out"
    proc = run_snakemake(pattern, out, *SETTINGS, flags=("--profile", "profiles/local", "--cores", "2"),
                         check=False)
    status = subprocess.run([sys.executable, "-m", "calimage3.status", str(out), "--json"],
                            capture_output=True, text=True, cwd=REPO)
    return {"proc": proc, "out": out, "products": products, "status": status, "missing": missing,
            "glob": pattern}


def test_broken_association_does_not_stop_the_others(broken_campaign):
    """The run fails, but every association without the damaged member is complete."""
    assert broken_campaign["proc"].returncode != 0
    out = broken_campaign["out"]
    for product, asn_id, roots in broken_campaign["products"][1:]:
        for suffix in ("i2d.fits", "cat.ecsv", "segm.fits"):
            assert (out / product / f"{product}_{suffix}").is_file(), product
        for root in roots:
            assert (out / product / f"{root}_{asn_id}_crf.fits").is_file()
    first = broken_campaign["products"][0][0]
    assert not (out / first / f"{first}_i2d.fits").exists()


def test_status_names_failed_and_complete(broken_campaign):
    """calimage3-status: the damaged and the refused association failed (with what to read), the rest complete."""
    status = broken_campaign["status"]
    assert status.returncode == 1, status.stderr
    rows = json.loads(status.stdout)
    by_product = {r["product"]: r for r in rows if r["product"]}
    first = broken_campaign["products"][0]
    damaged = by_product[first[0]]
    assert damaged["state"] == "failed"
    # the log of the failed job: the damaged member's source detection, naming the file
    assert damaged["detail"] == str(broken_campaign["out"] / "logs" / "tweakreg_detect" / f"{first[2][0]}.log")
    log_text = Path(damaged["detail"]).read_text()
    assert "JOB FAILED" in log_text and f"{first[2][0]}_cal.fits" in log_text
    for product, _, _ in broken_campaign["products"][1:]:
        assert by_product[product]["state"] == "complete"
        assert by_product[product]["done"] == by_product[product]["total"] > 0
    refused = [r for r in rows if r["asn"].endswith("campaign9_asn.json")]
    assert len(refused) == 1 and refused[0]["state"] == "failed"
    assert "jw_not_there_cal.fits" in refused[0]["detail"]


def test_status_lists_pending_before_a_run(tmp_path):
    """Right after planning (a dry run), every association is pending."""
    pattern, products = write_campaign(tmp_path / "data", groups=((1, 2), (2, 3)))
    run_snakemake(pattern, tmp_path / "out", *SETTINGS, flags=("--dry-run",))
    status = subprocess.run([sys.executable, "-m", "calimage3.status", str(tmp_path / "out")],
                            capture_output=True, text=True, cwd=REPO)
    assert status.returncode == 0, status.stderr
    assert "2 associations: 0 complete, 0 failed, 2 pending" in status.stdout


def test_status_without_a_run_is_an_error(tmp_path):
    """calimage3-status on a folder the workflow never used says so and exits 2."""
    status = subprocess.run([sys.executable, "-m", "calimage3.status", str(tmp_path)],
                            capture_output=True, text=True, cwd=REPO)
    assert status.returncode == 2
    assert "no campaign manifest" in status.stderr
