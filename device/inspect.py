"""What `tinyfleet inspect` shows: firmware, TinyFleet and model versions, learning state,
memory and config (secrets masked), printed as one JSON line. Fields that do not exist
(yet) on this board are null. Reads files only; never starts the device client.

    import inspect; inspect.main()
"""

import gc
import json
import os
import sys

_SECRETS = ("password", "fleet_key", "wifi_password")
# Written by the device client (optional): the same dict it publishes as its status.
STATUS_FILE = "status.json"
CONFIG_FILE = "config.json"


def _load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _model(path):
    """Shape and version from the persisted weights blob's header (no payload read)."""
    try:
        from tfshared import weights
    except ImportError:
        return None
    for p in (path, path + ".tmp"):
        try:
            with open(p, "rb") as f:
                head = f.read(64)
            info = weights.parse_header(head)
        except (OSError, ValueError):
            continue
        return {"sizes": list(info.sizes), "version": info.model_version,
                "params": info.n_params, "file": p}
    return None


def _fs_free():
    try:
        s = os.statvfs("/")
        return s[0] * s[3]
    except (AttributeError, OSError):
        return None


def report():
    """The inspect dict (JSON-ready)."""
    impl = sys.implementation
    cfg = _load(CONFIG_FILE)
    status = _load(STATUS_FILE) or {}
    masked = None
    if isinstance(cfg, dict):
        masked = {}
        for k in cfg:
            v = cfg[k]
            masked[k] = ("***" if v not in (None, "") else v) if k in _SECRETS else v
    else:
        cfg = {}
    gc.collect()
    return {
        "firmware": "MicroPython %d.%d.%d" % impl.version[:3],
        "machine": getattr(impl, "_machine", sys.platform),
        "mpy": getattr(impl, "_mpy", None),
        "tinyfleet": cfg.get("tinyfleet_version"),
        "device_id": cfg.get("id"),
        "model": _model(cfg.get("state") or "model.bin"),
        "samples": status.get("samples"),
        "loss": status.get("loss"),
        "kernel": status.get("kernel"),
        "last_round": status.get("rounds"),
        "model_version": status.get("version"),
        "state": status.get("state"),
        "mem_free": gc.mem_free(),
        "mem_alloc": gc.mem_alloc(),
        "fs_free": _fs_free(),
        "config": masked,
    }


def main():
    print(json.dumps(report()))


if __name__ == "__main__":
    main()
