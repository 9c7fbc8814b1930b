"""``make bench``: batchgrid measured against the naive approach and single-box engines.

Run ``python -m bench`` (``--quick`` for a small variant while developing). Inputs are
generated under ``bench/data/``, results written to ``bench/results/`` and the final
Markdown table copied to ``bench/RESULTS.md``.
"""
