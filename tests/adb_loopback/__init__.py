"""Loopback ADB device for tests: the real ADB wire protocol on 127.0.0.1, a sandbox folder as the phone."""

from .sandbox import Sandbox
from .server import Faults, LoopbackAdbDevice, start_device

__all__ = ["Faults", "LoopbackAdbDevice", "Sandbox", "start_device"]
