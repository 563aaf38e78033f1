# Quality of every quant against its model's reference on held-out text: the reference logits
# once per model, one KL-divergence run per quant, then the verdicts by the configured gates.


rule reference_logits:
    input:
        unpack(reference_inputs),
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
        verify=verify_flags,
    threads: 8
    shell:
        "python -m workflow_scripts.tool_step --stamp {input.stamp} --output {output.logits}"
        " --log {log} {params.verify} --"
        " llama-perplexity -m {input.gguf} -f {input.text} {params.evaluation} -t {threads}"
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
    shell:
        "python -m workflow_scripts.validate quant --stamp {input.stamp} --gguf {input.gguf}"
        " --logits {input.logits} --census {input.census} --threads {threads} --log {log} --out {output}"


rule sanity_reference:
    input:
        unpack(reference_inputs),
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
        "python -m workflow_scripts.sanity --stamp {input.stamp} --gguf {input.gguf}"
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
        "python -m workflow_scripts.sanity --stamp {input.stamp} --gguf {input.gguf} --reference {input.reference}"
        " --settings-json {params.settings:q} --threads {threads} --out {output} > {log} 2>&1"


rule validation_report:
    input:
        reference="results/{model}/validate/reference.json",
        metrics=model_metrics,
        sanity=model_sanity,
    output:
        "results/{model}/validation_report.json",
    log:
        "results/logs/validation_report/{model}.log",
    benchmark:
        "results/benchmarks/validation_report/{model}.tsv"
    params:
        gates=model_gates,
    shell:
        "python -m workflow_scripts.validate report --model {wildcards.model} --reference {input.reference}"
        " --metrics {input.metrics} --sanity {input.sanity} --gates-json {params.gates:q} --out {output} > {log} 2>&1"


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
