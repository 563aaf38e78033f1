# One quantize job per model × build (a quant type, a variant, or a fallback try): the recipe
# checked, llama-quantize, the recipe check of the output (workflow_scripts/quantize.py); then the
# per-model SHA256SUMS.


rule quantize:
    input:
        gguf=REFERENCE_GGUF,
        sha=f"{REFERENCE_GGUF}.sha256",
        stamp=STAMP,
        parity="results/{model}/checks/tokenizer_parity.json",
        imatrix=build_imatrix,
        tensor_types=build_tensor_types,
    output:
        gguf="results/{model}/quant/{model}-{build}.gguf",
        sha="results/{model}/quant/{model}-{build}.gguf.sha256",
        census="results/{model}/quant/{model}-{build}.census.json",
    log:
        "results/logs/quantize/{model}-{build}.log",
    benchmark:
        "results/benchmarks/quantize/{model}-{build}.tsv"
    threads: 8
    resources:
        mem_mb=mem_mb(1.5),
        runtime=120,
    params:
        build=quantize_build,
        verify=verify_options("gguf", "imatrix"),
    shell:
        "python -m workflow_scripts.quantize --stamp {input.stamp} --reference {input.gguf}"
        " --build-json {params.build:q} --threads {threads} {params.verify} --out {output.gguf}"
        " --census {output.census} --log {log}"


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
        "python -m workflow_scripts.checksums {input.gguf} {input.imatrix} {input.quants} --out {output} > {log} 2>&1"


# A checkpoint: a remedy whose planned tensor types are those of the build before it is never
# built (see fallback_chain()). llama-quantize --dry-run with the remedy's own arguments.
checkpoint remedy_plan:
    input:
        unpack(remedy_plan_inputs),
        gguf=REFERENCE_GGUF,
        stamp=STAMP,
        imatrix=build_imatrix,
        tensor_types=build_tensor_types,
    output:
        "results/{model}/quant/{model}-{build}.plan.json",
    log:
        "results/logs/remedy_plan/{model}-{build}.log",
    params:
        build=quantize_build,
    shell:
        "python -m workflow_scripts.remedy_plan --stamp {input.stamp} --build-json {params.build:q}"
        " --name {wildcards.build} --previous {input.previous} --log {log} --out {output}"
