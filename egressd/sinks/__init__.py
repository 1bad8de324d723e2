"""The edges where egressd speaks: Prometheus metrics and HTTP API, Alertmanager, alert log.

Sinks read the engine and its counters; the engine never knows they exist.
"""
