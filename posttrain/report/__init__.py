"""The HTML report of one run, or the comparison of several, from run directories."""

from posttrain.report.html import default_report_path, write_report
from posttrain.report.runs import RunData, read_run

__all__ = ["RunData", "default_report_path", "read_run", "write_report"]
