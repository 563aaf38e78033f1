# gguf-forge: models × quant types → checked, checksummed GGUF files.
# Wiring only: the config is checked in rules/common.smk, each stage has its own rules/*.smk,
# and every piece of logic lives in workflow_scripts/.
import os

from snakemake.utils import min_version

min_version("9.0")


# The default config lives beside this file, so the workflow also runs with --directory elsewhere;
# --configfile adds to it and overrides it key by key.
configfile: os.path.join(workflow.basedir, "config", "config.yaml")


# `snakemake --report report.html`: the summary tables and plots, with these captions.
report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/resources.smk"
include: "rules/toolchain.smk"
include: "rules/source.smk"
include: "rules/convert.smk"
include: "rules/imatrix.smk"
include: "rules/auto.smk"
include: "rules/quantize.smk"
include: "rules/validate.smk"
include: "rules/speed.smk"
include: "rules/package.smk"
include: "rules/publish.smk"


rule all:
    default_target: True
    input:
        get_final_output(),
