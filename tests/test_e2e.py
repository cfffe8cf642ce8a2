"""End to end: a real Mosquitto, the coordinator and 4 MicroPython device processes
(32-bit build, 128 KB heap each) run federated Reptile rounds on their own sine tasks;
the global model gets better at being adapted to held-out tasks."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from tinyfleet.broker import EmbeddedBroker
from tinyfleet.metaeval import LABELS
from tinyfleet.simulate import SimConfig, run


def test_fleet_meta_learns(tmp_path: Path, mosquitto: EmbeddedBroker):  # noqa: F811
    # Prepare
    cfg = SimConfig(devices=4, rounds=30, out=tmp_path / "run", broker=mosquitto.address,
                    seed=1, eval_tasks=60, eval_points=2, deadline=20, recovery_tasks=20)
    log = io.StringIO()
    # Execute
    res = run(cfg, stream=log)
    # Assert: every round done by every device, every global pushed was adopted
    assert len(res.rounds) == 30, log.getvalue()
    assert all(r.status == "done" and len(r.replied) == 4 for r in res.rounds), res.rounds
    assert res.coordinator_ignored == 0
    assert sorted(res.devices) == ["dev00", "dev01", "dev02", "dev03"], res.devices
    for dev, st in res.devices.items():
        assert st["rejected"] == 0 and st["rounds"] == 30, (dev, st)
        assert st["kernel"] == "viper", st
    # ...and held-out MSE after 32 adaptation steps is lower than from the initial weights
    first, last = res.initial, res.rounds[-1]
    assert last.heldout_after < 0.9 * first.heldout_after, (first, last)
    # Report files
    out = tmp_path / "run"
    report = json.loads((out / "report.json").read_text())
    assert len(report["rounds"]) == 30 and report["initial"]["heldout_after"] > 0
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "report.md").read_text()
    assert "Held-out MSE" in md
    # ...the final global model against the random init, on the same tasks
    cmp = report["comparison"]
    assert cmp["random"]["32"] == report["initial"]["heldout_after"]
    assert cmp["fleet"]["32"] == report["rounds"][-1]["heldout_after"] < cmp["random"]["32"]
    assert "| fleet global (round 30) |" in md and "| random init (round 0) |" in md
    # ...and beside every method metaeval simulates with the same settings (1 seed, seed 1,
    # 4 boards x 30 rounds), scored on the same held-out tasks and shots
    ev = report["evaluation"]
    methods = ev["methods"]
    assert methods["settings"]["boards"] == 4 and methods["settings"]["rounds"] == 30
    assert methods["settings"]["first_seed"] == 1 and methods["settings"]["tasks"] == 60
    assert set(methods["mse"]) == {"fixed", "float"}
    for arith in ("fixed", "float"):
        assert set(methods["mse"][arith]) == {"tinyreptile", "reptile", "fedavg", "joint",
                                              "local", "random"}
        for per in [*methods["mse"][arith].values(), ev["fleet"]["mse"][arith]]:
            assert set(per) == {"0", "8", "32"} and all(_finite(v) for v in per.values()), per
        assert _finite(ev["ratio"][arith]), ev["ratio"]
    # same tasks, shots and initial weights: metaeval's random row is the fleet's round 0
    assert methods["mse"]["fixed"]["random"] == cmp["random"]
    assert ev["fleet"]["mse"]["fixed"] == cmp["fleet"]
    assert ev["ratio"]["fixed"] == cmp["fleet"]["32"] / methods["mse"]["fixed"]["reptile"]["32"]
    assert ev["same_method"] == "reptile" and ev["fleet"]["round"] == 30
    rec = ev["fleet"]["recovery"]["fixed"]
    assert rec["tasks"] == 20 and set(methods["recovery"]["fixed"]) == {"reptile"}
    assert all(_finite(rec[s]["mean_samples_capped"]) for s in ("from_init", "from_previous"))
    assert all(_finite(t["ratio"]) for t in ev["fleet_targets"] + methods["targets"])
    table = md[md.index("## Evaluation"):]
    for label in ["**this fleet (MicroPython, over MQTT)**, round 30", *LABELS.values()]:
        assert f"| {label} |" in table, (label, table)
    assert "x** metaeval's simulation of the same strategy" in table
    assert "| fixed: joint / this fleet |" in table and "| fixed: random / reptile |" in table
    assert "| fixed | this fleet | 0.5 |" in table and "| fixed | reptile | 0.5 |" in table


def test_fresh_checkpoint_after_a_fleet_ran_is_accepted_by_real_devices(
        tmp_path: Path, mosquitto: EmbeddedBroker):
    # Prepare: 2 MicroPython devices; a coordinator runs 2 rounds on checkpoint a.db
    # (globals v1..v3), then a second one starts on a brand-new b.db.
    import threading

    from tinyfleet.checkpoint import Checkpoint
    from tinyfleet.coordinator import Config, Coordinator
    from tinyfleet.fleet import Fleet, Watcher
    from tinyfleet.simulate import device_configs

    host, port = mosquitto.host, mosquitto.port
    sim = SimConfig(devices=2, seed=3)
    watch = Watcher(host, port, ["tf/ep/dev/+/status"], client_id="tf-test-epoch")
    with Fleet(tmp_path / "boards") as fleet:
        for dc in device_configs(sim, "ep", host, port, "k3y"):
            fleet.add(dc)
        fleet.start()

        def run_coord(db: Path) -> tuple[Coordinator, list]:
            with Checkpoint(db) as ck:
                cfg = Config(fleet="ep", model="sine", sizes=(1, 40, 40, 1), rounds=2,
                             deadline=20, min_replies=2, online_wait=60, key=b"k3y")
                coord = Coordinator(cfg, host, port, ck, client_id=f"c-{db.stem}")
                coord.run(threading.Event())
                return coord, ck.history()

        # Execute
        first, _ = run_coord(tmp_path / "a.db")
        second, hist = run_coord(tmp_path / "b.db")
        # Assert: the second coordinator continued above v3 (the first's last global),
        # both its rounds had both devices' updates, and no device refused anything.
        assert first.version == 3 and second.base == 3 and second.version == 6
        assert [(h.round, h.status, len(h.replied)) for h in hist] == [
            (0, "init", 0), (1, "done", 2), (2, "done", 2)], hist

        def holds_v6(topic: str, payload: bytes) -> bool:
            return json.loads(payload).get("version") == 6

        for dev in ("dev00", "dev01"):
            got = watch.wait_for(lambda t, p, dev=dev: dev in t and holds_v6(t, p), 20)
            assert got is not None, fleet.devices[0].log_tail()
            st = json.loads(got[1])
            assert st["rejected"] == 0 and st["rounds"] == 4, st
    watch.close()


def test_simulated_fleet_fills_the_semantic_registry(tmp_path: Path, mosquitto: EmbeddedBroker,
                                                     capsys) -> None:
    # Prepare: 2 MicroPython devices, 3 rounds, with the registry on
    from tinyfleet import cli

    cfg = SimConfig(devices=2, rounds=3, out=tmp_path / "run", broker=mosquitto.address,
                    seed=2, eval_tasks=20, eval_points=1, registry=True, evaluation=False)
    # Execute
    res = run(cfg, stream=io.StringIO())
    db = str(tmp_path / "run" / "registry.sqlite")
    capsys.readouterr()
    codes = [cli.main(["devices", "--db", db, "--json"]),
             cli.main(["models", "--db", db, "--all", "--json"]),
             cli.main(["match", "--model", "sine", "--db", db, "--json"])]
    devices, models, match = [json.loads(part) for part in _json_documents(
        capsys.readouterr().out)]
    # Assert: both boards described themselves, a card per global, both can run it
    assert codes == [0, 0, 0] and len(res.rounds) == 3
    md = (tmp_path / "run" / "report.md").read_text()  # --no-evaluation: a pointer instead
    assert res.evaluation == {} and "## Evaluation" not in md and "`tinyfleet evaluate`" in md
    assert sorted(d["id"] for d in devices) == ["dev00", "dev01"], devices
    assert all(d["kernel"] == "viper" and d["runtime"].startswith("MicroPython") for d in devices)
    assert len(models) == 4, models  # the initial global and one per round
    assert all(m["parameters"] == 1761 for m in models), models
    assert sorted((v["device"], v["ok"]) for v in match["boards"]) == [
        ("dev00", True), ("dev01", True)], match


def _finite(v: object) -> bool:
    return isinstance(v, float) and math.isfinite(v)


def _json_documents(text: str) -> list[str]:
    """Split concatenated JSON documents (one per command) printed to stdout."""
    dec, pos, docs = json.JSONDecoder(), 0, []
    while pos < len(text):
        if text[pos].isspace():
            pos += 1
            continue
        obj, end = dec.raw_decode(text, pos)
        docs.append(text[pos:end])
        pos = end
    return docs
