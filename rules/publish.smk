# Opt-in (publish.enabled): each model's package to its Hugging Face Hub repository, only the files
# that differ, in one commit recorded in published.json (workflow_scripts/publish.py). Local jobs:
# a cluster node may have no way out, and the token stays in the environment snakemake runs in.


localrules:
    publish_package,
    publish,


rule publish_package:
    input:
        sums="results/package/{model}/SHA256SUMS",
        manifest="results/package/{model}/manifest.json",
        card="results/package/{model}/README.md",
    output:
        "results/package/{model}/published.json",
    log:
        "results/logs/publish/{model}.log",
    wildcard_constraints:
        model=_alternatives(PLAN.publish),
    params:
        options=publish_options,
    shell:
        "python -m workflow_scripts.publish --package results/package/{wildcards.model} {params.options}"
        " --out {output} > {log} 2>&1"


# `snakemake publish`: every published model's record.
rule publish:
    input:
        publish_target,
