# The pinned llama.cpp: built once per (version, backend, flags) in a cache outside the checkout.
# Every downstream rule takes the stamp as input, so a new version or backend re-runs what it built.


rule toolchain:
    output:
        stamp=STAMP,
    log:
        "results/logs/toolchain/llama.cpp.log",
    benchmark:
        "results/benchmarks/toolchain/llama.cpp.tsv"
    threads: workflow.cores
    params:
        args=toolchain_args(),
    shell:
        "python -m workflow_scripts.toolchain {params.args} --jobs {threads} --stamp {output.stamp} --log {log}"
