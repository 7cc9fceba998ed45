"""Schedules as data: per-rank action lists (the IR), their grid, CSV/JSON, validation and
abstract execution. See :mod:`.actions` for the action kinds."""

from .actions import (ALLREDUCE, BARRIER, CLOSE, DRAIN, GET, KINDS, LOAD, OPEN, PUT, RECV, SEND, STUDENT, TEACHER,
                      UPDATE, Action, Schedule, is_fill, parse_window_note, window_note)
from .build import ScheduleBuilder, ScheduleSpec
from .execute import Deadlock, Timeline, execute
from .grid import format_grid
from .io import from_csv_text, from_json, read_csv, to_csv_text, to_json, write_csv
from .validate import ScheduleError, problems, validate_schedule

__all__ = ["Action", "Schedule", "ScheduleBuilder", "ScheduleSpec", "Deadlock", "Timeline", "execute", "format_grid",
           "from_csv_text", "from_json", "read_csv", "to_csv_text", "to_json", "write_csv", "ScheduleError",
           "problems", "validate_schedule", "KINDS", "LOAD", "TEACHER", "SEND", "RECV", "STUDENT", "ALLREDUCE",
           "UPDATE", "BARRIER", "DRAIN", "OPEN", "CLOSE", "PUT", "GET", "is_fill", "parse_window_note", "window_note"]
