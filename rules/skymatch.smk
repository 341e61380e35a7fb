# skymatch: sky levels of an association's exposures, matched in their
# overlaps (one job per association).


def skylist_file():
    """The user's sky-level list when skymethod is 'user' (an input, so edits rerun skymatch), else nothing."""
    step = config.get("skymatch", {})
    return [step["skylist"]] if step.get("skymethod") == "user" and step.get("skylist") else []


rule skymatch:
    input:
        cal=member_cal_files,
        wcs=aligned_wcs_folder,
        skylist=skylist_file(),
    output:
        levels=RULE.skymatch(),
    params:
        step=step_params("skymatch"),
        roots=member_roots,
    log:
        f"{RULE.logs}/skymatch.log",
    benchmark:
        f"{RULE.bench}/skymatch.tsv"
    # on the critical path: every single drizzle waits for it
    priority: 2
    threads: 1
    resources:
        mem_mb=mem_mb_group,
        runtime=runtime_minutes,
    conda:
        "../envs/calimage3.yaml"
    script:
        "../scripts/skymatch.py"
