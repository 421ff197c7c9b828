"""A deterministic synthetic generator of impression, click and prediction streams.

`generate` writes them into a landing zone exactly as Kinesis Data Firehose would, with the
messiness of real pipes (duplicates, broken lines, late and future records), and records each
impression's true click probability in a side file that `read_truth` reads back.
"""

from clicklake.platform.simulate.generator import GenerateSummary, default_impressions, generate
from clicklake.platform.simulate.messy import KINDS as MESSY_KINDS
from clicklake.platform.simulate.truth import read_truth, truth_key

__all__ = [
    "MESSY_KINDS",
    "GenerateSummary",
    "default_impressions",
    "generate",
    "read_truth",
    "truth_key",
]
