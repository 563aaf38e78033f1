# Where each model comes from, with a digest of every source file (re-checked by convert).


rule source_local:
    input:
        source_inputs,
    output:
        manifest="results/{model}/source/source.json",
    log:
        "results/logs/source/{model}.log",
    benchmark:
        "results/benchmarks/source/{model}.tsv"
    wildcard_constraints:
        model=_models_with_source("local", "gguf"),
    params:
        source=source_json,
    shell:
        "python -m workflow_scripts.sources manifest --source-json {params.source:q}"
        " --out {output.manifest} > {log} 2>&1"


rule source_hub:
    output:
        manifest="results/{model}/source/source.json",
        snapshot=directory("results/{model}/source/hf"),
    log:
        "results/logs/source/{model}.log",
    benchmark:
        "results/benchmarks/source/{model}.tsv"
    wildcard_constraints:
        model=_models_with_source("hf"),
    params:
        source=source_json,
    shell:
        "python -m workflow_scripts.sources manifest --source-json {params.source:q}"
        " --dest {output.snapshot} --out {output.manifest} > {log} 2>&1"
