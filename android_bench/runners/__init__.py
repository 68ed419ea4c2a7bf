"""Runners: how a model is timed on the device (interface and registry in ``base``)."""

from android_bench.runners.base import RunSpec, Runner, get_runner, known_runners, register_runner

__all__ = ["RunSpec", "Runner", "get_runner", "known_runners", "register_runner"]
