"""MRML-level logic of the INFANiTETraining module (no Qt): the cohort table, the hyper-parameter form and the
controller of the background ``python -m infanite train`` run (progress → parameter node, loss table and plot)."""
from .cohort_table import COLUMNS, CohortRow, CohortSummary, cohort_table_node, fill_cohort_table, read_cohort
from .config_form import FIELDS, TrainingParameters, TrainingParametersError, advanced_overrides, parse_int_list
from .controller import (CANCELLED, CANCELLING, FAILED, FINISHED, IDLE, LOSS_COLUMNS, RUNNING, STATES, LossPlot,
                         TrainingController, can_resume, checkpoint_progress, device_detection_command,
                         devices_from_event)
from .display import format_duration, progress_text

__all__ = ["COLUMNS", "CohortRow", "CohortSummary", "cohort_table_node", "fill_cohort_table", "read_cohort",
           "FIELDS", "TrainingParameters", "TrainingParametersError", "advanced_overrides", "parse_int_list",
           "TrainingController", "LossPlot", "device_detection_command", "devices_from_event", "can_resume",
           "checkpoint_progress", "STATES", "IDLE", "RUNNING", "CANCELLING", "FINISHED", "FAILED", "CANCELLED",
           "LOSS_COLUMNS",
           "format_duration", "progress_text"]
