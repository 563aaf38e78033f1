# One llama-quantize per model × build (a quant type, a variant, or a fallback try), then the recipe check (the output's tensor types
# against what was asked), and the per-model SHA256SUMS of everything made.


rule quantize:
    input:
        unpack(quantize_inputs),
    output:
        gguf="results/{model}/quant/{model}-{quant}.gguf",
        sha="results/{model}/quant/{model}-{quant}.gguf.sha256",
        census="results/{model}/quant/{model}-{quant}.census.json",
    log:
        "results/logs/quantize/{model}-{quant}.log",
    benchmark:
        "results/benchmarks/quantize/{model}-{quant}.tsv"
    params:
        args=quantize_args,
        type=quant_type,
        recipe=census_args,
        verify=verify_flags("gguf", "imatrix"),
    threads: 8
    shell:
        "python -m workflow_scripts.gguf_census --preflight {input.gguf} --quant {params.type}"
        " {params.recipe} > {log}"
        " && python -m workflow_scripts.tool_step --stamp {input.stamp} --output {output.gguf}"
        " --log {log} {params.verify} --"
        " llama-quantize {params.args} {threads}"
        " && python -m workflow_scripts.gguf_census --gguf {output.gguf} --quant {params.type}"
        " {params.recipe} --quantize-log {log} --out {output.census} >> {log} 2>&1"


rule sha256sums:
    input:
        unpack(reference_inputs),
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
