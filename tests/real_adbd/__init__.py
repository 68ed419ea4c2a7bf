"""Debian's AOSP ``adbd`` as the device peer, in private namespaces with an Android-like userland.

``RealAdbd`` starts the daemon fetched by ``scripts/fetch_adbd.sh`` (``$EDGEPRUNE_ADBD_ROOT``, default
``<repo>/.cache/adbd``) through trixie's own loader, inside

* a private network namespace with only loopback up, so nothing outside this machine can reach it; clients join it
  with ``in_netns()`` (this thread, for in-process harness calls) or ``ns_command()`` (a subprocess via nsenter);
* a private mount and PID namespace whose root is a tmpfs carrying bind mounts of the host's top-level folders, plus
  ``/data/local/tmp`` (a folder, or a tiny tmpfs to fill up), an ARM ``/proc/cpuinfo`` and the fake cpufreq,
  thermal and battery trees of ``adb_loopback.Sandbox`` bind-mounted over ``/sys/...``; ``getprop``, ``dumpsys``
  and ``taskset`` from the sandbox come first on adbd's PATH, so its shells find them as on a phone.

Everything in the namespaces dies with the namespace holder (PID 1 of the PID namespace) at ``stop()``.
"""

from .daemon import RealAdbd, adbd_root, missing_reason

__all__ = ["RealAdbd", "adbd_root", "missing_reason"]
