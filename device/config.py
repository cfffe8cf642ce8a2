"""Device configuration: one JSON file on the board (config.json), merged over defaults.

Keys (all optional except `id`):
  id, fleet, model            names used in MQTT topics
  broker, port, user, password, keepalive (s), fleet_key (hex or text; HMAC when set)
  ssid, wifi_password         WiFi, joined only where a `network` module exists
  sizes, lr_shift             the MLP (e.g. [1, 40, 40, 1], learning rate 2**-lr_shift)
  amp, phase, seed, drift     the sine task (amp in [0.1, 5], phase in [0, pi]; None: drawn
                              from seed); drift = samples between task changes (0: never)
  rate                        samples per second between rounds (0: as fast as it can)
  max_msg                     largest MQTT message accepted (bytes; 0: one global-model
                              frame); bigger ones are drained and refused unread
  status_every                samples between status publications (0: only on events)
  max_samples                 stop after this many samples (0: run forever; for tests)
  state                       file that persists the accepted global model
  status_file                 where the agent writes its status for `tinyfleet inspect`
                              (written atomically; None: not written)
  status_save                 seconds between status_file writes (1 s after start, then
                              doubling up to this; also once per round and on exit;
                              0: rounds and exit only). Never per step: flash wear
  sensors                     sensors the board declares in its self-description, e.g.
                              ["temperature"] (None: the data source's virtual sensor)
  tinyfleet_version           written by `tinyfleet deploy`
"""

import json

DEFAULTS = {
    "fleet": "demo",
    "model": "sine",
    "broker": "127.0.0.1",
    "port": 1883,
    "user": None,
    "password": None,
    "keepalive": 30,
    "fleet_key": None,
    "ssid": None,
    "wifi_password": None,
    "sizes": [1, 40, 40, 1],
    "lr_shift": 6,
    "amp": None,
    "phase": None,
    "seed": 1,
    "drift": 0,
    "max_msg": 0,
    "status_every": 0,
    "max_samples": 0,
    "rate": 50,
    "state": "model.bin",
    "status_file": "status.json",
    "status_save": 60,
    "sensors": None,
    "tinyfleet_version": None,
}


def load(path="config.json"):
    """Return the config dict; raise ValueError naming the problem if it is unusable."""
    with open(path) as f:
        try:
            user = json.load(f)
        except ValueError:
            raise ValueError("config: %s is not valid JSON" % path)
    if not isinstance(user, dict) or not user.get("id"):
        raise ValueError("config: %s needs an object with a non-empty \"id\"" % path)
    cfg = dict(DEFAULTS)
    cfg.update(user)
    for key in ("id", "fleet", "model"):
        name = cfg[key]
        # A '/', '+' or '#' in a name would change which topics the device touches.
        if not isinstance(name, str) or not name or "/" in name or "+" in name or "#" in name:
            raise ValueError("config: %r is not a valid %s" % (name, key))
    return cfg
