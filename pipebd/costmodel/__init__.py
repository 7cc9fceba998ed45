"""The cost model: the cost table, stage costs, the replay of a schedule, and estimates."""

from .choose import auto_priced, choose_modes, describe_modes, mode_score
from .estimate import ESTIMATE_SPECS, EstimateSpec, epoch_steps, estimate_cost_table, random_cost_table
from .replay import Prediction, action_seconds, predict_ideal, replay, replay_epoch
from .stages import PipelineResult, StageCost, simulate_pipeline, stage_cost, stage_memory
from .table import CSV_COLUMNS, CostTable, candidate_batches, write_csv

__all__ = ["CostTable", "CSV_COLUMNS", "candidate_batches", "write_csv", "StageCost", "stage_cost", "stage_memory",
           "PipelineResult", "simulate_pipeline", "Prediction", "action_seconds", "replay", "replay_epoch",
           "predict_ideal", "EstimateSpec", "ESTIMATE_SPECS", "estimate_cost_table", "random_cost_table",
           "epoch_steps", "choose_modes", "mode_score", "auto_priced", "describe_modes"]
