"""Experiment statistics and rollout decisions: pure functions of counts, no I/O."""

from rollout.bandit import thompson_allocation
from rollout.decision import decide
from rollout.intervals import Interval, mean_interval, newcombe, welch_interval, wilson
from rollout.model import (
    Decision,
    ExperimentInput,
    ExperimentReport,
    Guardrail,
    Phase,
    Policy,
    VariantCounts,
)
from rollout.sequential import Evidence, combine, msprt, share_evidence
from rollout.srm import combine_srm, srm_test

__all__ = [
    "Decision",
    "Evidence",
    "ExperimentInput",
    "ExperimentReport",
    "Guardrail",
    "Interval",
    "Phase",
    "Policy",
    "VariantCounts",
    "combine",
    "combine_srm",
    "decide",
    "mean_interval",
    "msprt",
    "newcombe",
    "share_evidence",
    "srm_test",
    "thompson_allocation",
    "welch_interval",
    "wilson",
]
