# The full-precision reference (F16/BF16) every quant of a model is made from, then the check
# that its tokenizer gives the same ids as the source's before anything is built on it, and the
# check that it carries the source's chat template and llama.cpp renders chats as transformers does.


rule convert:
    input:
        stamp=STAMP,
        manifest="results/{model}/source/source.json",
    output:
        gguf="results/{model}/reference/{model}-{reftype}.gguf",
        sha="results/{model}/reference/{model}-{reftype}.gguf.sha256",
        record="results/{model}/reference/{model}-{reftype}.convert.json",
    log:
        "results/logs/convert/{model}-{reftype}.log",
    benchmark:
        "results/benchmarks/convert/{model}-{reftype}.tsv"
    resources:
        mem_mb=4000,
        runtime=120,
    shell:
        "python -m workflow_scripts.convert --stamp {input.stamp} --source-manifest {input.manifest}"
        " --outtype {wildcards.reftype} --out {output.gguf} --record {output.record} --log {log}"


rule tokenizer_parity:
    input:
        gguf=REFERENCE_GGUF,
        sha=f"{REFERENCE_GGUF}.sha256",
        stamp=STAMP,
        manifest="results/{model}/source/source.json",
        text="results/{model}/imatrix/calibration.txt",
    output:
        report="results/{model}/checks/tokenizer_parity.json",
    log:
        "results/logs/tokenizer_parity/{model}.log",
    benchmark:
        "results/benchmarks/tokenizer_parity/{model}.tsv"
    params:
        reference=parity_reference,
        verify=verify_options("gguf"),
    shell:
        "python -m workflow_scripts.tokenizer_parity --gguf {input.gguf} {params.reference} {params.verify}"
        " --text {input.text} --stamp {input.stamp} --out {output.report} > {log} 2>&1"


# Quants copy the reference's metadata, template included: the reference is checked once per model.
rule chat_template:
    input:
        gguf=REFERENCE_GGUF,
        sha=f"{REFERENCE_GGUF}.sha256",
        stamp=STAMP,
        manifest="results/{model}/source/source.json",
    output:
        report="results/{model}/checks/chat_template.json",
    log:
        main="results/logs/chat_template/{model}.log",
        server="results/logs/chat_template/{model}.server.log",
    benchmark:
        "results/benchmarks/chat_template/{model}.tsv"
    threads: 2
    params:
        reference=parity_reference,
        sanity=CHAT_SANITY,
        verify=verify_options("gguf"),
        gpu_layers=GPU_LAYERS,
    shell:
        "python -m workflow_scripts.chat_template --gguf {input.gguf} {params.reference} {params.verify}"
        " {params.sanity} --stamp {input.stamp} --threads {threads} {params.gpu_layers} --server-log {log.server}"
        " --out {output.report} > {log.main} 2>&1"
