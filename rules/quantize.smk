# One llama-quantize per model × build (a quant type, a variant, or a fallback try), then the
# recipe check (the output's tensor types against what was asked), and the per-model SHA256SUMS.


rule quantize:
    input:
        gguf=REFERENCE_GGUF,
        sha=f"{REFERENCE_GGUF}.sha256",
        stamp=STAMP,
        parity="results/{model}/checks/tokenizer_parity.json",
        imatrix=build_imatrix,
    output:
        gguf="results/{model}/quant/{model}-{quant}.gguf",
        sha="results/{model}/quant/{model}-{quant}.gguf.sha256",
        census="results/{model}/quant/{model}-{quant}.census.json",
    log:
        "results/logs/quantize/{model}-{quant}.log",
    benchmark:
        "results/benchmarks/quantize/{model}-{quant}.tsv"
    params:
        q=quantize_params,
    threads: 8
    resources:
        mem_mb=mem_mb(1.5),
        runtime=120,
    shell:
        "python -m workflow_scripts.gguf_census --preflight {input.gguf} --quant {params.q.type}"
        " {params.q.recipe} > {log}"
        " && python -m workflow_scripts.tool_step --stamp {input.stamp} --output {output.gguf}"
        " --log {log} {params.q.verify} --"
        " llama-quantize {params.q.args} {threads}"
        " && python -m workflow_scripts.gguf_census --gguf {output.gguf} --quant {params.q.type}"
        " {params.q.recipe} --quantize-log {log} --out {output.census} >> {log} 2>&1"


rule sha256sums:
    input:
        gguf=REFERENCE_GGUF,
        sha=f"{REFERENCE_GGUF}.sha256",
        quants=model_quants,
        imatrix=model_imatrix,
    output:
        "results/{model}/SHA256SUMS",
    log:
        "results/logs/sha256sums/{model}.log",
    benchmark:
        "results/benchmarks/sha256sums/{model}.tsv"
    shell:
        "python -m workflow_scripts.checksums {input.gguf} {input.imatrix} {input.quants}"
        " --out {output} > {log} 2>&1"
