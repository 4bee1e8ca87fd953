# CmFNet benchmark: scribbles -> train (method x fold) -> predict -> evaluate -> tables.
#   snakemake --cores all                               # default preset (embedded synthetic data)
#   snakemake --cores 2 --configfile config/smoke.yaml  # seconds of training, for tests and CI
# Targets go before --configfile/--config. The workflow profile profiles/default/ (next to this
# file) is applied to every run; the rules live in workflow/rules/.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"


rule all:
    default_target: True
    input:
        final_outputs(),
