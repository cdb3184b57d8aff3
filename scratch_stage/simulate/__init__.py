"""Trace-driven policy simulator: replays jobs through the production planner and baselines."""
