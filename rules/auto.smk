# Auto builds (variants with `auto:`): every tensor's type chosen from measured sensitivity.
# Per model: the reference's logits on the calibration text, one sensitivity record per menu type
# (every tensor quantized to it, its imatrix-weighted error), one probe run (real KL divergence
# with one tensor group lowered at a time, on the calibration text); per auto build the chosen
# types as a --tensor-type-file, which the quantize rule then uses. The evaluation text judges
# the result like any build: the search never sees it.


rule calibration_logits:
    input:
        gguf=REFERENCE_GGUF,
        sha=f"{REFERENCE_GGUF}.sha256",
        stamp=STAMP,
        text="results/{model}/imatrix/calibration.txt",
    output:
        logits=temp("results/{model}/auto/calibration.logits"),
        sha=temp("results/{model}/auto/calibration.logits.sha256"),
        reference="results/{model}/auto/calibration.json",
    log:
        "results/logs/calibration_logits/{model}.log",
    benchmark:
        "results/benchmarks/calibration_logits/{model}.tsv"
    threads: 8
    resources:
        mem_mb=mem_mb(1.5, 2000),
        runtime=240,
    params:
        ctx=lambda wildcards: probe_window(wildcards.model)[0],
        chunks=lambda wildcards: probe_window(wildcards.model)[1],
        verify=verify_options("gguf"),
        gpu_layers=GPU_LAYERS,
    shell:
        "python -m workflow_scripts.validate reference --stamp {input.stamp} --gguf {input.gguf} --text {input.text}"
        " --ctx {params.ctx} --chunks {params.chunks} --threads {threads} {params.gpu_layers} {params.verify}"
        " --logits {output.logits} --log {log} --out {output.reference}"


rule sensitivity:
    input:
        gguf=REFERENCE_GGUF,
        sha=f"{REFERENCE_GGUF}.sha256",
        stamp=STAMP,
        imatrix="results/{model}/imatrix/{model}.imatrix.gguf",
    output:
        "results/{model}/auto/sensitivity/{menu_type}.json",
    log:
        "results/logs/sensitivity/{model}-{menu_type}.log",
    benchmark:
        "results/benchmarks/sensitivity/{model}-{menu_type}.tsv"
    threads: 8
    resources:
        mem_mb=mem_mb(1.0, 1500),
        runtime=240,
    params:
        verify=verify_options("gguf", "imatrix"),
        menu=lambda wildcards: " ".join(MODELS[wildcards.model].auto_menu),
    shell:
        "python -m workflow_scripts.sensitivity measure --stamp {input.stamp} --reference {input.gguf}"
        " --imatrix {input.imatrix} --type {wildcards.menu_type} --menu {params.menu} --threads {threads}"
        " {params.verify}"
        " --log {log} --out {output}"


rule sensitivity_probes:
    input:
        gguf=REFERENCE_GGUF,
        sha=f"{REFERENCE_GGUF}.sha256",
        stamp=STAMP,
        imatrix="results/{model}/imatrix/{model}.imatrix.gguf",
        records=sensitivity_records,
        logits="results/{model}/auto/calibration.logits",
        logits_sha="results/{model}/auto/calibration.logits.sha256",
    output:
        "results/{model}/auto/probes.json",
    log:
        "results/logs/sensitivity/{model}-probes.log",
    benchmark:
        "results/benchmarks/sensitivity/{model}-probes.tsv"
    threads: 8
    resources:
        mem_mb=mem_mb(1.5, 2000),
        runtime=480,
    params:
        records=lambda wildcards, input: " ".join(
            f"--sensitivity {r}" for r in input.records
        ),
        verify=verify_options("gguf", "imatrix", "logits"),
        gpu_layers=GPU_LAYERS,
    shell:
        "python -m workflow_scripts.sensitivity probe --stamp {input.stamp} --reference {input.gguf}"
        " --imatrix {input.imatrix} {params.records} --logits {input.logits} --threads {threads}"
        " {params.gpu_layers} {params.verify} --log {log} --out {output}"


rule auto_recipe:
    input:
        unpack(auto_recipe_inputs),
        gguf=REFERENCE_GGUF,
        probes="results/{model}/auto/probes.json",
    output:
        recipe="results/{model}/auto/{build}.recipe.json",
        types="results/{model}/auto/{build}.tensor-types.txt",
    log:
        "results/logs/auto_recipe/{model}-{build}.log",
    benchmark:
        "results/benchmarks/auto_recipe/{model}-{build}.tsv"
    params:
        objective=auto_objective,
    shell:
        "python -m workflow_scripts.auto_recipe --sensitivity {input.records} --probes {input.probes}"
        " --reference {input.gguf} {params.objective} --build {wildcards.build}"
        " --out {output.recipe} --tensor-types {output.types} > {log} 2>&1"
