"""Evaluate, train, align, calibrate, sweep and analyse: the jobs that run heads on episodes."""
