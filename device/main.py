"""TinyFleet device entry point: config.json -> WiFi (on boards) -> the agent, forever.

Kept small on purpose: a board compiles main.py from source at boot, everything else is
deployed precompiled (.mpy), which keeps the heap in large pieces. See agent.py.
"""

import gc
import sys
import time

import config


def join_wifi(cfg):
    """Join WiFi where the port has a `network` module (boards); skipped on the unix port.
    Never fatal: without WiFi the board keeps learning and the link retries (backoff)."""
    if not cfg.get("ssid"):
        return
    try:
        import network
    except ImportError:
        return
    try:
        sta = network.WLAN(network.STA_IF)
        sta.active(True)
        if not sta.isconnected():
            sta.connect(cfg["ssid"], cfg.get("wifi_password") or "")
            t0 = time.ticks_ms()
            while not sta.isconnected() and time.ticks_diff(time.ticks_ms(), t0) < 20000:
                time.sleep_ms(100)
        print("wifi:", sta.isconnected())
    except OSError as e:  # no radio, bad state: the agent learns offline and retries MQTT
        print("wifi: failed (%r)" % e)


def main(path="config.json"):
    cfg = config.load(path)
    join_wifi(cfg)
    gc.collect()
    # The two weight-sized arrays (the model's and the last global's) first, while the
    # heap is in one piece: the modules imported next leave no contiguous block that big
    # on a small board (the emulated Cortex-M3 failed to boot with a MemoryError).
    from mlp import n_params, zeros

    n = n_params(cfg["sizes"])
    buffers = (zeros(n), zeros(n))
    import agent

    dev = agent.Device(cfg, buffers)
    gc.collect()
    print("device %s: model %r kernel %s, %d params, v%d, mem_free %d" % (
        cfg["id"], dev.sizes, dev.net.kernel, dev.n, dev.gver, gc.mem_free()))
    dev.run()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "config.json")
