"""Experiment statistics and rollout decisions.

The pure core, re-exported here (intervals, sequential tests, SRM, decide, the bandit), takes
counts and returns values, with no I/O. Around it: counters.py aggregates counts in memory and
hands them to a backend; stores/ holds plans, controller state and the leader lock (memory,
file, Redis); controller.py and service.py are the async edges that run a rollout.
"""

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
