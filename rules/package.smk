# One publishable directory per model: the builds that passed (hard links), the imatrix,
# SHA256SUMS, manifest.json with provenance, and a Hugging Face model card; then checked as a
# downloader would check it.


rule package:
    input:
        unpack(package_texts),
        report="results/{model}/validation_report.json",
        speed="results/{model}/speed_report.json",
        quants=model_quants,
        stamp=STAMP,
        source="results/{model}/source/source.json",
        convert=f"results/{{model}}/reference/{{model}}-{REFERENCE}.convert.json",
        reference_sha=f"results/{{model}}/reference/{{model}}-{REFERENCE}.gguf.sha256",
        imatrix=model_imatrix,
        auto=model_auto_recipes,
    output:
        # The GGUF hard links beside these are not declared: a directory() output would get
        # Snakemake's hidden timestamp file, which has no place in a package.
        sums="results/package/{model}/SHA256SUMS",
        manifest="results/package/{model}/manifest.json",
        card="results/package/{model}/README.md",
    log:
        "results/logs/package/{model}.log",
    benchmark:
        "results/benchmarks/package/{model}.tsv"
    params:
        settings=package_settings,
        calibration=input_option("calibration"),
    shell:
        "python -m workflow_scripts.package --settings-json {params.settings:q} --report {input.report}"
        " --speed {input.speed} --stamp {input.stamp} --quant-dir results/{wildcards.model}/quant"
        " --source-json {input.source} --convert-json {input.convert} {params.calibration}"
        " --evaluation {input.evaluation} --out results/package/{wildcards.model} > {log} 2>&1"


# Predicted (at plan time) vs used disk per file, once the model's package is made.
rule disk_report:
    input:
        sums="results/package/{model}/SHA256SUMS",
    output:
        "results/{model}/disk.json",
    log:
        "results/logs/disk_report/{model}.log",
    params:
        predicted=disk_prediction,
    shell:
        "python -m workflow_scripts.disk_plan --predicted {params.predicted:q} --out {output} > {log} 2>&1"


rule summary:
    input:
        validation=expand(
            "results/{model}/validation_report.json", model=sorted(MODELS)
        ),
        speed=expand("results/{model}/speed_report.json", model=sorted(MODELS)),
        disk=expand("results/{model}/disk.json", model=sorted(MODELS)),
        published=published_records,
    output:
        csv=report(
            "results/summary/summary.csv",
            caption="../report/summary.rst",
            category="Summary",
        ),
        table=report(
            "results/summary/summary.md",
            caption="../report/summary.rst",
            category="Summary",
        ),
        recommendations=report(
            "results/summary/recommendations.md",
            caption="../report/recommendations.rst",
            category="Summary",
        ),
        frontiers=report(
            expand(
                "results/summary/plots/{model}-size-vs-kld.svg", model=sorted(MODELS)
            ),
            caption="../report/frontier.rst",
            category="Plots",
        ),
        speeds=report(
            expand(
                "results/summary/plots/tokens-per-s-{tier}.svg", tier=list(PLAN.tiers)
            ),
            caption="../report/speed.rst",
            category="Plots",
        ),
    log:
        "results/logs/summary/summary.log",
    params:
        tiers=" ".join(PLAN.tiers),
    shell:
        "python -m workflow_scripts.summary --validation {input.validation} --speed {input.speed}"
        " --tiers {params.tiers} --disk {input.disk} --published {input.published} --out-dir results/summary"
        " > {log} 2>&1"
