"""``cmfnet bench``: the metric, CRF, training and inference benchmarks (docs/benchmarks.md).

Not part of the pipeline. Each benchmark measures ours and what it is compared with side by side
in one run, on one machine, and writes one CSV whose every row names that machine, the library
versions and the git commit (:mod:`cmfnet.bench.common`). The libraries compared with (medpy,
MONAI, DeepMind's surface-distance, unfoldNd) come from the ``bench`` extra and are imported only
when a benchmark needs them.
"""
