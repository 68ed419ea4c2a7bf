"""Typed errors of the ADB harness: each carries one actionable line for the user.

Every error raised by ``run_benchmark`` may carry ``partial_path``: the JSON file where everything measured before
the failure was saved, so a failed run never loses finished measurements.
"""

from __future__ import annotations

import pathlib


class AndroidBenchError(Exception):
    """Base class: the message is one line telling the user what happened and what to do."""

    def __init__(self, message: str, *, partial_path: pathlib.Path | None = None):
        super().__init__(message)
        self.partial_path = partial_path

    def __str__(self) -> str:
        text = super().__str__()
        if self.partial_path is not None:
            text += f" (results measured so far saved to {self.partial_path})"
        return text


class DeviceNotFoundError(AndroidBenchError):
    """No device answers at the given serial (not plugged in, wrong IP:PORT, adbd not listening)."""


class DeviceUnauthorizedError(AndroidBenchError):
    """The device did not accept our key (the "Allow USB debugging?" prompt was not confirmed in time)."""


class UsbSupportMissingError(AndroidBenchError):
    """USB was requested but adb-shell's usb extra (libusb1) is not installed."""


class DeviceDisconnectedError(AndroidBenchError):
    """The connection broke during a command and reconnecting or retrying did not help."""


class NoSpaceError(AndroidBenchError):
    """The device has no space left for a pushed file."""


class AbiMismatchError(AndroidBenchError):
    """The runner's binaries need an ABI the device does not support (e.g. arm64 runner, 32-bit phone)."""


class RunnerCrashError(AndroidBenchError):
    """The runner process exited with a non-zero code; the message ends with the tail of its output."""


class RunnerOutputError(AndroidBenchError):
    """The runner exited cleanly but its output could not be parsed into per-inference times."""


class BenchTimeoutError(AndroidBenchError):
    """A command or a benchmark run took longer than its time limit."""


class UnknownRunnerError(AndroidBenchError):
    """The runner name matches no registered runner."""


class DeviceCommandError(AndroidBenchError):
    """A shell command needed by the harness failed on the device."""


class RunnerTimeoutError(BenchTimeoutError):
    """The runner itself ran too long or stopped making progress (not a link timeout: never retried)."""


class RunnerNotStartedError(DeviceCommandError):
    """The launch command returned but the runner's pid file never appeared: the device's shell could not start it."""


class DeviceGoneError(DeviceDisconnectedError):
    """The connection broke and the device did not come back within the reconnect wait (unplugged, adbd dead)."""
