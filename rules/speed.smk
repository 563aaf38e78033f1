# Speed per shipped build × hardware tier (and the reference, the baseline of every speed-up),
# then the size and speed gates and a recommendation per tier. A speed job takes every core
# Snakemake was given, so no other job runs beside a speed measurement.


rule speed:
    input:
        unpack(speed_gguf),
        stamp=STAMP,
    output:
        "results/{model}/speed/{tier}/{build}.json",
    log:
        "results/logs/speed/{model}-{tier}-{build}.log",
    benchmark:
        "results/benchmarks/speed/{model}-{tier}-{build}.tsv"
    wildcard_constraints:
        build=_alternatives(BUILDS | {REFERENCE}),
    threads: workflow.cores
    resources:
        mem_mb=tier_resource("mem_mb"),
        slurm_partition=tier_resource("partition"),
        constraint=tier_resource("constraint"),
        gpu=tier_resource("gpu"),
        # A node to itself while a speed figure is taken, as on a workstation.
        slurm_extra="--exclusive",
        runtime=60,
    params:
        tier=speed_tier,
        settings=SPEED_SETTINGS,
        verify=verify_options("gguf", "paired"),
    shell:
        "python -m workflow_scripts.speed --stamp {input.stamp} --gguf {input.gguf} --reference-gguf {input.paired}"
        " {params.verify}"
        " --tier-json {params.tier:q} --settings-json {params.settings:q} --log {log} --out {output}"


rule speed_report:
    input:
        validation="results/{model}/validation_report.json",
        speeds=model_speeds,
    output:
        "results/{model}/speed_report.json",
    log:
        "results/logs/speed_report/{model}.log",
    params:
        reference=REFERENCE,
        tiers=json.dumps(list(PLAN.tiers.values()), sort_keys=True),
        tie_floor_pct=PLAN.benchmark["tie_floor_pct"],
    shell:
        "python -m workflow_scripts.recommend --model {wildcards.model} --validation {input.validation}"
        " --speeds {input.speeds} --reference {params.reference} --tiers-json {params.tiers:q}"
        " --tie-floor-pct {params.tie_floor_pct} --out {output} > {log} 2>&1"
