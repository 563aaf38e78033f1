# Quality of every build against its model's reference on held-out text: the reference logits
# once per model, one KL-divergence run and one sanity generation per build, a verdict per build
# by the configured gates, and the next fallback build for each one that failed.


rule reference_logits:
    input:
        gguf=REFERENCE_GGUF,
        sha=f"{REFERENCE_GGUF}.sha256",
        stamp=STAMP,
        text=PLAN.evaluation["text"],
    output:
        logits=logits_output("results/{model}/validate/{model}-reference.logits"),
        sha="results/{model}/validate/{model}-reference.logits.sha256",
        reference="results/{model}/validate/reference.json",
    log:
        "results/logs/reference_logits/{model}.log",
    benchmark:
        "results/benchmarks/reference_logits/{model}.tsv"
    params:
        evaluation=evaluation_params(),
    threads: 8
    resources:
        mem_mb=mem_mb(1.5, 2000),
        runtime=240,
    shell:
        "python -m workflow_scripts.tool_step --stamp {input.stamp} --output {output.logits}"
        " --log {log} " + verify_options("gguf") + " --"
        " llama-perplexity -m {input.gguf} -f {input.text} {params.evaluation} -t {threads}"
        + offload_option(PLAN.toolchain) +
        " --kl-divergence-base {{out}}"
        " && python -m workflow_scripts.validate reference --log {log} --out {output.reference}"


rule validate_quant:
    input:
        stamp=STAMP,
        gguf="results/{model}/quant/{model}-{quant}.gguf",
        census="results/{model}/quant/{model}-{quant}.census.json",
        logits="results/{model}/validate/{model}-reference.logits",
    output:
        "results/{model}/validate/{quant}.json",
    log:
        "results/logs/validate/{model}-{quant}.log",
    benchmark:
        "results/benchmarks/validate/{model}-{quant}.tsv"
    threads: 8
    resources:
        mem_mb=mem_mb(1.2, 2000),
        runtime=120,
    shell:
        "python -m workflow_scripts.validate quant --name {wildcards.quant} --stamp {input.stamp} --gguf {input.gguf}"
        " --logits {input.logits} --census {input.census} " + verify_options("gguf", "logits") + " --threads {threads}"
        + gpu_layers_option(PLAN.toolchain) + " --log {log} --out {output}"


rule sanity_reference:
    input:
        gguf=REFERENCE_GGUF,
        sha=f"{REFERENCE_GGUF}.sha256",
        stamp=STAMP,
    output:
        "results/{model}/validate/reference.sanity.json",
    log:
        "results/logs/sanity/{model}-reference.log",
    benchmark:
        "results/benchmarks/sanity/{model}-reference.tsv"
    params:
        settings=sanity_settings(),
    threads: 4
    shell:
        "python -m workflow_scripts.sanity --stamp {input.stamp} --gguf {input.gguf} " + verify_options("gguf") +
        " --settings-json {params.settings:q} --threads {threads} --out {output} > {log} 2>&1"


rule sanity_quant:
    input:
        stamp=STAMP,
        gguf="results/{model}/quant/{model}-{quant}.gguf",
        reference="results/{model}/validate/reference.sanity.json",
    output:
        "results/{model}/validate/{quant}.sanity.json",
    log:
        "results/logs/sanity/{model}-{quant}.log",
    benchmark:
        "results/benchmarks/sanity/{model}-{quant}.tsv"
    params:
        settings=sanity_settings(),
    threads: 4
    shell:
        "python -m workflow_scripts.sanity --stamp {input.stamp} --gguf {input.gguf} " + verify_options("gguf") + " --reference {input.reference}"
        " --settings-json {params.settings:q} --threads {threads} --out {output} > {log} 2>&1"


rule tensor_error:
    input:
        gguf=REFERENCE_GGUF,
        sha=f"{REFERENCE_GGUF}.sha256",
        quant="results/{model}/quant/{model}-{quant}.gguf",
    output:
        "results/{model}/validate/{quant}.tensors.json",
    log:
        "results/logs/tensor_error/{model}-{quant}.log",
    benchmark:
        "results/benchmarks/tensor_error/{model}-{quant}.tsv"
    resources:
        mem_mb=mem_mb(1.0, 1000),
        runtime=60,
    shell:
        "python -m workflow_scripts.tensor_error --gguf {input.quant} --reference {input.gguf} " + verify_options("quant", "gguf") +
        " --worst 10 --out {output} > {log} 2>&1"


# A checkpoint: whether a build passed decides whether its next remedy is built (see attempts()).
checkpoint verdict:
    input:
        metrics="results/{model}/validate/{quant}.json",
        sanity="results/{model}/validate/{quant}.sanity.json",
        tensors="results/{model}/validate/{quant}.tensors.json",
    output:
        "results/{model}/validate/{quant}.verdict.json",
    log:
        "results/logs/verdict/{model}-{quant}.log",
    params:
        build=build_json,
    shell:
        "python -m workflow_scripts.validate verdict --metrics {input.metrics} --sanity {input.sanity} --tensors {input.tensors}"
        " --build-json {params.build:q} --out {output} > {log} 2>&1"


rule validation_report:
    input:
        reference="results/{model}/validate/reference.json",
        verdicts=model_verdicts,
    output:
        "results/{model}/validation_report.json",
    log:
        "results/logs/validation_report/{model}.log",
    benchmark:
        "results/benchmarks/validation_report/{model}.tsv"
    params:
        attempts=attempts_json,
    shell:
        "python -m workflow_scripts.validate report --model {wildcards.model} --reference {input.reference}"
        " --verdicts {input.verdicts} --attempts-json {params.attempts:q} --out {output} > {log} 2>&1"


rule quality_table:
    input:
        expand("results/{model}/validation_report.json", model=sorted(MODELS)),
    output:
        "results/quality.csv",
    log:
        "results/logs/quality_table/quality.log",
    benchmark:
        "results/benchmarks/quality_table/quality.tsv"
    shell:
        "python -m workflow_scripts.validate quality-table {input} --out {output} > {log} 2>&1"
