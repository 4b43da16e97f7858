"""The run report: one self-contained HTML page for a whole run directory.

Data statistics, per-stage mask AP beside the paper's rows, training curves, the best and worst
val images, the export's parity table, latency and the environment, with every picture embedded,
so the page can be mailed or archived as one file. Entry point: :func:`build_report`.
"""

from sskd_deploy.report.build import build_report

__all__ = ["build_report"]
