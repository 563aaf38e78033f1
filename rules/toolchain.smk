# The pinned llama.cpp: built once per (version, backend, flags) in a cache outside the checkout.
# Every downstream rule takes the stamp as input, so a new version or backend re-runs what it built.
# With a CUDA toolchain, the stages that can run on the GPU get offload_option's -ngl (or
# gpu_layers_option for a script that runs the tool); a CPU toolchain's command lines are unchanged.
from workflow_scripts.gpu import gpu_layers_option, offload_option


rule toolchain:
    output:
        stamp=STAMP,
    log:
        "results/logs/toolchain/llama.cpp.log",
    benchmark:
        "results/benchmarks/toolchain/llama.cpp.tsv"
    params:
        args=toolchain_args(),
    threads: workflow.cores
    shell:
        "python -m workflow_scripts.toolchain {params.args} --jobs {threads}"
        " --stamp {output.stamp} --log {log}"
