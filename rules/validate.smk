# Quality of every build against its model's reference on held-out text: the reference logits
# once per model, one KL-divergence run and one sanity generation per build, a verdict per build
# by the configured gates (a build made with the imatrix also by its expert coverage), and the
# next fallback build for each one that failed.


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
    threads: 8
    resources:
        mem_mb=mem_mb(1.5, 2000),
        runtime=240,
    params:
        ctx=PLAN.evaluation["ctx"],
        chunks=PLAN.evaluation["chunks"],
        verify=verify_options("gguf"),
        gpu_layers=GPU_LAYERS,
    shell:
        "python -m workflow_scripts.validate reference --stamp {input.stamp} --gguf {input.gguf} --text {input.text}"
        " --ctx {params.ctx} --chunks {params.chunks} --threads {threads} {params.gpu_layers} {params.verify}"
        " --logits {output.logits} --log {log} --out {output.reference}"


rule validate_quant:
    input:
        stamp=STAMP,
        gguf="results/{model}/quant/{model}-{build}.gguf",
        census="results/{model}/quant/{model}-{build}.census.json",
        logits="results/{model}/validate/{model}-reference.logits",
    output:
        "results/{model}/validate/{build}.json",
    log:
        "results/logs/validate/{model}-{build}.log",
    benchmark:
        "results/benchmarks/validate/{model}-{build}.tsv"
    threads: 8
    resources:
        mem_mb=mem_mb(1.2, 2000),
        runtime=120,
    params:
        verify=verify_options("gguf", "logits"),
        gpu_layers=GPU_LAYERS,
    shell:
        "python -m workflow_scripts.validate quant --name {wildcards.build} --stamp {input.stamp} --gguf {input.gguf}"
        " --logits {input.logits} --census {input.census} {params.verify} --threads {threads} {params.gpu_layers}"
        " --log {log} --out {output}"


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
    threads: 4
    params:
        settings=SANITY,
        verify=verify_options("gguf"),
        gpu_layers=GPU_LAYERS,
    shell:
        "python -m workflow_scripts.sanity --stamp {input.stamp} --gguf {input.gguf} {params.verify}"
        " --settings-json {params.settings:q} --threads {threads} {params.gpu_layers} --out {output} > {log} 2>&1"


rule sanity_quant:
    input:
        stamp=STAMP,
        gguf="results/{model}/quant/{model}-{build}.gguf",
        reference="results/{model}/validate/reference.sanity.json",
    output:
        "results/{model}/validate/{build}.sanity.json",
    log:
        "results/logs/sanity/{model}-{build}.log",
    benchmark:
        "results/benchmarks/sanity/{model}-{build}.tsv"
    threads: 4
    params:
        settings=SANITY,
        verify=verify_options("gguf"),
        gpu_layers=GPU_LAYERS,
    shell:
        "python -m workflow_scripts.sanity --stamp {input.stamp} --gguf {input.gguf} {params.verify}"
        " --reference {input.reference} --settings-json {params.settings:q} --threads {threads}"
        " {params.gpu_layers} --out {output} > {log} 2>&1"


rule tensor_error:
    input:
        gguf=REFERENCE_GGUF,
        sha=f"{REFERENCE_GGUF}.sha256",
        quant="results/{model}/quant/{model}-{build}.gguf",
    output:
        "results/{model}/validate/{build}.tensors.json",
    log:
        "results/logs/tensor_error/{model}-{build}.log",
    benchmark:
        "results/benchmarks/tensor_error/{model}-{build}.tsv"
    threads: 4
    resources:
        mem_mb=mem_mb(1.0, 1000),
        runtime=60,
    params:
        verify=verify_options("quant", "gguf"),
    shell:
        "python -m workflow_scripts.tensor_error --gguf {input.quant} --reference {input.gguf} {params.verify}"
        " --worst 10 --threads {threads} --out {output} > {log} 2>&1"


# A checkpoint: whether a build passed decides whether its next remedy is built (see fallback_chain()).
checkpoint verdict:
    input:
        unpack(build_coverage),
        metrics="results/{model}/validate/{build}.json",
        sanity="results/{model}/validate/{build}.sanity.json",
        tensors="results/{model}/validate/{build}.tensors.json",
    output:
        "results/{model}/validate/{build}.verdict.json",
    log:
        "results/logs/verdict/{model}-{build}.log",
    params:
        build=build_json,
        coverage=input_option("coverage"),
    shell:
        "python -m workflow_scripts.validate verdict --metrics {input.metrics} --sanity {input.sanity}"
        " --tensors {input.tensors} {params.coverage} --build-json {params.build:q} --out {output} > {log} 2>&1"


rule validation_report:
    input:
        unpack(model_coverage),
        reference="results/{model}/validate/reference.json",
        sanity="results/{model}/validate/reference.sanity.json",
        chat_template="results/{model}/checks/chat_template.json",
        verdicts=model_verdicts,
    output:
        "results/{model}/validation_report.json",
    log:
        "results/logs/validation_report/{model}.log",
    benchmark:
        "results/benchmarks/validation_report/{model}.tsv"
    params:
        attempts=attempts_json,
        coverage=input_option("coverage"),
    shell:
        "python -m workflow_scripts.validate report --model {wildcards.model} --reference {input.reference}"
        " --sanity {input.sanity} {params.coverage} --chat-template {input.chat_template}"
        " --verdicts {input.verdicts} --attempts-json {params.attempts:q}"
        " --out {output} > {log} 2>&1"


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
