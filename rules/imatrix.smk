# One importance matrix per model, reused by all its quants. The calibration text is copied to a
# stable relative path first: llama.cpp writes that path into the imatrix and every quant. Beside
# the imatrix: how many experts of each MoE expert tensor it covered (workflow_scripts/imatrix.py).


rule calibration_text:
    input:
        calibration_source,
    output:
        "results/{model}/imatrix/calibration.txt",
    log:
        "results/logs/calibration_text/{model}.log",
    benchmark:
        "results/benchmarks/calibration_text/{model}.tsv"
    shell:
        "python -m workflow_scripts.calibration {input} {output} > {log} 2>&1"


rule imatrix:
    input:
        gguf=REFERENCE_GGUF,
        sha=f"{REFERENCE_GGUF}.sha256",
        stamp=STAMP,
        text="results/{model}/imatrix/calibration.txt",
        parity="results/{model}/checks/tokenizer_parity.json",
    output:
        imatrix="results/{model}/imatrix/{model}.imatrix.gguf",
        sha="results/{model}/imatrix/{model}.imatrix.gguf.sha256",
        coverage="results/{model}/imatrix/{model}.imatrix.coverage.json",
    log:
        "results/logs/imatrix/{model}.log",
    benchmark:
        "results/benchmarks/imatrix/{model}.tsv"
    threads: 8
    resources:
        mem_mb=mem_mb(1.5, 2000),
        runtime=240,
    params:
        calibration=imatrix_params,
        verify=verify_options("gguf"),
        offload=OFFLOAD,
    shell:
        "python -m workflow_scripts.imatrix --stamp {input.stamp} --output {output.imatrix} --log {log}"
        " --reference {input.gguf} --coverage {output.coverage} {params.verify}"
        " -- llama-imatrix -m {input.gguf} -f {input.text} -o {{out}} --output-format gguf {params.calibration}"
        " -t {threads} --no-ppl {params.offload}"
