"""Replay reports: what each group sent where over time and per day, with the alerts.

:mod:`.collect` gathers the data from the engine's closed intervals (no I/O); :mod:`.text`
and :mod:`.html` render it for people, :meth:`.collect.ReportData.to_json` for machines.
"""
