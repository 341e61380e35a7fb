# skymatch: sky levels of an association's exposures, matched in their
# overlaps (one job per association).


def skylist_file():
    """The user's sky-level list when skymethod is 'user' (an input, so edits rerun skymatch), else nothing."""
    step = config.get("skymatch", {})
    return [step["skylist"]] if step.get("skymethod") == "user" and step.get("skylist") else []


for P in PRODUCTS:

    rule:
        name:
            P.rule("skymatch")
        input:
            cal=P.all_cal(),
            wcs=P.all_tweakreg_wcs(),
            skylist=skylist_file(),
        output:
            levels=P.skymatch(),
        params:
            step=step_params("skymatch"),
        log:
            f"{P.logs}/skymatch.log",
        benchmark:
            f"{P.bench}/skymatch.tsv"
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
