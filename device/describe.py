"""A board's compact self-description, published retained on tf/<fleet>/dev/<id>/td.

The board sends a few hundred bytes of JSON, not a full W3C WoT Thing Description: the
host (host/td.py) expands it into the TD. Built once per connect and per model change,
never in the learning loop. Keys (null or missing: unknown on this board):

    id          device id (config "id")                          "dev1"
    fleet       fleet name                                       "demo"
    board       board name: sys.implementation._machine before " with ", else
                sys.platform                                     "Generic ESP32 module"
    mcu         MCU: _machine after " with ", else os.uname() machine or _machine
                                                                 "ESP32", "Cortex-M3"
    port        MicroPython port, sys.platform                   "esp32", "rp2", "qemu"
    clock       CPU clock in Hz, machine.freq() (first value if a tuple); null where the
                port has none                                    240000000
    ram         heap size in bytes, gc.mem_free() + gc.mem_alloc() after a collect
    ram_free    heap free in bytes at that moment
    flash       filesystem size in bytes, os.statvfs("/") frsize * blocks
    flash_free  filesystem free in bytes, frsize * free blocks
    sensors     config "sensors" (e.g. ["temperature"]); by default the sine simulation's
                virtual sensor [{"name": "sine", "observes": "sine", "virtual": true}]
    runtime     "MicroPython 1.25.0" (sys.implementation.version)
    mpy         sys.implementation._mpy (.mpy format and native arch), null if none
    kernels     learning kernels this port can run, tried by importing each:
                ["viper", "ulab", "bytecode"] or a subset
    kernel      the kernel in use
    tinyfleet   TinyFleet version (config "tinyfleet_version", written by deploy)
    model       {"name": model name, "sizes": layer sizes, "params": parameter count,
                 "version": global model version it starts rounds from (0: none yet)}
    security    "basic" (MQTT user/password) or "nosec"
    broker      "host:port" of the MQTT broker (the TD's forms point there)
"""

import gc
import os
import sys

# The sine data source is a simulation: it declares a virtual sensor.
SINE_SENSOR = {"name": "sine", "observes": "sine", "virtual": True}


def _board():
    m = getattr(sys.implementation, "_machine", "") or ""
    i = m.find(" with ")
    if i >= 0:
        return m[:i], m[i + 6:]
    try:
        return sys.platform, os.uname()[4]
    except (AttributeError, OSError):
        return sys.platform, m or None


def _clock():
    try:
        import machine

        f = machine.freq()
    except (ImportError, AttributeError, OSError, ValueError):
        return None
    return f[0] if isinstance(f, tuple) else f


def _flash():
    try:
        s = os.statvfs("/")
    except (AttributeError, OSError):
        return None, None
    return s[1] * s[2], s[1] * s[3]


def kernels(in_use):
    """Names of the kernels this port can run (device/mlp.py KERNELS order). Kernels not
    in use are imported once to find out, then dropped again to give their RAM back."""
    import mlp

    out = []
    for name in mlp.KERNELS:
        if name == in_use:
            out.append(name)
            continue
        mod = "kernel_" + name
        had = mod in sys.modules
        try:
            mlp._load_kernel(name)
            out.append(name)
        except Exception:  # noqa: BLE001 - missing ulab, no native emitter, ...
            pass
        if not had and mod in sys.modules:
            del sys.modules[mod]
    gc.collect()
    return out


def build(cfg, sizes, params, version, kernel, kernel_list):
    """The self-description dict (keys above) of this board running `kernel`."""
    board, mcu = _board()
    flash, flash_free = _flash()
    gc.collect()
    free = gc.mem_free()
    v = sys.implementation.version
    sensors = cfg.get("sensors")
    return {
        "id": cfg["id"], "fleet": cfg["fleet"], "board": board, "mcu": mcu,
        "port": sys.platform, "clock": _clock(),
        "ram": free + gc.mem_alloc(), "ram_free": free,
        "flash": flash, "flash_free": flash_free,
        "sensors": [SINE_SENSOR] if sensors is None else sensors,
        "runtime": "MicroPython %d.%d.%d" % (v[0], v[1], v[2]),
        "mpy": getattr(sys.implementation, "_mpy", None),
        "kernels": kernel_list, "kernel": kernel,
        "tinyfleet": cfg.get("tinyfleet_version"),
        "model": {"name": cfg["model"], "sizes": list(sizes), "params": params,
                  "version": version},
        "security": "basic" if cfg.get("user") else "nosec",
        "broker": "%s:%d" % (cfg["broker"], cfg["port"]),
    }
