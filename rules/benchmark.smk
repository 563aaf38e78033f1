# Speed per shipped build × hardware tier (and the reference, the baseline of every speed-up),
# then the size and speed gates and a recommendation per tier. A benchmark job takes every core
# Snakemake was given, so no other job runs beside a speed measurement.


rule benchmark:
    input:
        unpack(bench_gguf),
        stamp=STAMP,
    output:
        "results/{model}/benchmark/{tier}/{bench}.json",
    log:
        "results/logs/benchmark/{model}-{tier}-{bench}.log",
    benchmark:
        "results/benchmarks/benchmark/{model}-{tier}-{bench}.tsv"
    params:
        tier=bench_tier,
        settings=json.dumps(PLAN.benchmark, sort_keys=True),
    threads: workflow.cores
    resources:
        mem_mb=tier_resource("mem_mb"),
        slurm_partition=tier_resource("partition"),
        constraint=tier_resource("constraint", None),
        gpu=tier_resource("gpu"),
        # A node to itself while a speed figure is taken, as on a workstation.
        slurm_extra="--exclusive",
        runtime=60,
    shell:
        "python -m workflow_scripts.benchmark --stamp {input.stamp} --gguf {input.gguf} " + verify_options("gguf") +
        " --tier-json {params.tier:q} --settings-json {params.settings:q} --log {log} --out {output}"


rule speed_report:
    input:
        validation="results/{model}/validation_report.json",
        benchmarks=model_benchmarks,
    output:
        "results/{model}/speed_report.json",
    log:
        "results/logs/speed_report/{model}.log",
    params:
        tiers=json.dumps(list(PLAN.tiers.values()), sort_keys=True),
    shell:
        "python -m workflow_scripts.recommend --model {wildcards.model} --validation {input.validation}"
        f" --benchmarks {{input.benchmarks}} --reference {REFERENCE} --tiers-json {{params.tiers:q}}"
        " --out {output} > {log} 2>&1"
