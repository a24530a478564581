"""Plots and an HTML report from run directories."""

from posttrain.report.html import write_report
from posttrain.report.runs import RunData, read_run

__all__ = ["RunData", "read_run", "write_report"]
