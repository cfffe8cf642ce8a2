"""What `tinyfleet inspect` shows: firmware, TinyFleet and model versions, learning state,
memory and config (secrets masked), printed as one JSON line. Fields that do not exist
(yet) on this board are null. Reads files only; never starts the device client.

    import tfinspect; tfinspect.main()
"""

import gc
import json
import os
import sys

_SECRETS = ("password", "fleet_key", "wifi_password")
# Written by the agent (device/agent.py save_status: atomically, 1 s after start, then at
# most every status_save seconds, once per round and on exit): its status dict.
STATUS_FILE = "status.json"
CONFIG_FILE = "config.json"


def _load(path, twin=False):
    """The JSON in `path` (or, with `twin`, in path.tmp when a FAT rename was cut short)."""
    for p in (path, path + ".tmp") if twin else (path,):
        try:
            with open(p) as f:
                return json.load(f)
        except (OSError, ValueError):
            pass
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
    masked = None
    if isinstance(cfg, dict):
        masked = {}
        for k in cfg:
            v = cfg[k]
            masked[k] = ("***" if v not in (None, "") else v) if k in _SECRETS else v
    else:
        cfg = {}
    status = _load(cfg.get("status_file") or STATUS_FILE, twin=True)
    if not isinstance(status, dict):
        status = {}
    model = _model(cfg.get("state") or "model.bin")
    if model is None and status.get("sizes"):  # no global model persisted yet
        model = {"sizes": status["sizes"], "version": status.get("version"),
                 "params": status.get("params"), "file": None}
    gc.collect()
    live = gc.mem_free()
    return {
        "firmware": "MicroPython %d.%d.%d" % impl.version[:3],
        "machine": getattr(impl, "_machine", sys.platform),
        "mpy": getattr(impl, "_mpy", None),
        "tinyfleet": cfg.get("tinyfleet_version"),
        "device_id": cfg.get("id"),
        "model": model,
        "samples": status.get("samples"),
        "loss": status.get("loss"),
        "kernel": status.get("kernel"),
        "last_round": status.get("last_round"),
        "rounds": status.get("rounds"),
        "model_version": status.get("version"),
        "state": status.get("state"),
        "net": status.get("net"),
        "reason": status.get("reason"),
        # What the running agent had free (its status), else what is free right now.
        "mem_free": status.get("mem_free", live),
        "mem_free_now": live,
        "mem_alloc": gc.mem_alloc(),
        "fs_free": _fs_free(),
        "config": masked,
    }


def main():
    print(json.dumps(report()))


if __name__ == "__main__":
    main()
