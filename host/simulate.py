"""A whole fleet on one machine: Mosquitto, the coordinator and N MicroPython devices.

Every device is a real MicroPython unix process (the 32-bit build by default, with a
board's heap) running the board code on its own sine task; the coordinator runs in this
process. After the run, each round's global model is scored on held-out tasks
(tinyfleet.metaeval.evaluate_init: 10 shots, k adaptation steps, the devices' integer
arithmetic; the protocol of `tinyfleet evaluate`). Meanwhile tinyfleet.metaeval simulates
the other methods with the same settings (boards, rounds, k, lr, drift, seed) in two
low-priority processes, and the report compares the real fleet's final global model with
them on the same held-out tasks and shots: report.json, report.md and loss.png.
"""

from __future__ import annotations

import json
import secrets
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from . import reference
from .broker import EmbeddedBroker, parse_broker
from .errors import TinyFleetError
from .fleet import Fleet, Watcher

TASKS: dict[str, tuple[int, ...]] = {"sine": (1, 40, 40, 1)}


@dataclass
class SimConfig:
    """Parameters of one simulation (the CLI's options)."""

    devices: int = 8
    rounds: int = 200
    task: str = "sine"
    out: Path | None = None
    broker: str | None = None
    strategy: str = "reptile"
    seed: int = 0
    k: int = 32
    lr_shift: int = 6
    epsilon: float = 1.0
    build: str = "32"
    heapsize: str | None = None
    drift: int = 150          # samples between a device's task changes (0: never)
    rate: int = 50            # device samples per second between rounds
    deadline: float = 20.0
    fleet_key: str | None = None  # None: a random key per run ("" : unsigned)
    eval_tasks: int = 100
    eval_steps: int = 32
    eval_points: int = 20     # global models scored: rounds 0, R/20, 2R/20, ..., R
    startup: float = 60.0     # seconds to wait for every device to come online
    registry: bool = False    # semantic registry in out/registry.sqlite (a card per round)
    evaluation: bool = True   # metaeval's methods with the same settings, beside the fleet
    eval_float: bool = True   # ... with the float64 reference as well as fixed point
    recovery_tasks: int = 100  # drift-recovery tasks (0: none)

    def check(self) -> None:
        """Raises: TinyFleetError on an unusable option."""
        if self.task not in TASKS:
            raise TinyFleetError(f"unknown task {self.task!r} (choose {', '.join(TASKS)})")
        if not 1 <= self.devices <= 64:
            raise TinyFleetError("--devices must be 1..64")
        if self.rounds < 1 or self.k < 1:
            raise TinyFleetError("--rounds and --k must be >= 1")
        if not 1 <= self.lr_shift <= 30:
            raise TinyFleetError("--lr-shift must be 1..30")
        if self.build not in ("32", "64"):
            raise TinyFleetError("--build must be 32 or 64")
        if self.eval_tasks < 1:
            raise TinyFleetError("--eval-tasks must be >= 1")


@dataclass
class RoundRow:
    """One line of the report."""

    round: int
    status: str
    epsilon: float
    selected: list[str]
    replied: list[str]
    device_loss: float          # mean over replies of the loss during the k local steps
    duration: float
    heldout_before: float = float("nan")  # held-out MSE of θ_r without adaptation
    heldout_after: float = float("nan")   # ... after eval_steps steps on 10 shots


@dataclass
class SimResult:
    config: dict[str, Any]
    out: str
    rounds: list[RoundRow]
    initial: RoundRow
    devices: dict[str, dict[str, Any]]
    elapsed: float
    coordinator_ignored: int
    notes: list[str] = field(default_factory=list)
    # Held-out MSE by adaptation steps ({steps: MSE}) of the final global model
    # ("fleet") and of the random initial weights ("random"), on the same tasks.
    comparison: dict[str, dict[int, float]] = field(default_factory=dict)
    # metaeval's methods with the run's settings beside this fleet (Evaluation.to_json)
    evaluation: dict[str, Any] = field(default_factory=dict)


FLEET_LABEL = "this fleet (MicroPython, over MQTT)"
ARITH_TEXT = {"fixed": "fixed: the boards' integer arithmetic, exactly",
              "float": "float: the float64 reference"}
# The metaeval method that simulates each strategy ("local" never moves the global model).
SAME_METHOD = {"reptile": "reptile", "tinyreptile": "tinyreptile", "fedavg": "fedavg",
               "local": "random"}


def eval_settings(cfg: SimConfig) -> Any:
    """metaeval.Settings for the methods beside a simulated fleet: its boards, rounds, k,
    lr, drift (in samples), first ε, seed (one seed) and held-out tasks. TinyReptile runs
    rounds x boards serial rounds there, so for a tinyreptile fleet the batched methods
    get rounds / boards (rounded up) and TinyReptile about the fleet's own rounds."""
    from .metaeval import Settings

    rounds = cfg.rounds
    if cfg.strategy == "tinyreptile":
        rounds = -(-cfg.rounds // cfg.devices)
    return Settings(sizes=TASKS[cfg.task], boards=cfg.devices, rounds=rounds, k=cfg.k,
                    lr_shift=cfg.lr_shift, seeds=1, first_seed=cfg.seed,
                    tasks=cfg.eval_tasks, steps=tuple(sorted({8, cfg.eval_steps})),
                    heldout_seed=cfg.seed, drift_samples=cfg.drift, epsilon=cfg.epsilon,
                    recovery_tasks=max(cfg.recovery_tasks, 1))


def _eval_worker_init() -> None:
    import os
    os.nice(10)  # the fleet's processes come first


def _eval_arith(settings: Any, arith: str, recovery: tuple[str, ...]) -> dict[str, Any]:
    from .metaeval import run_arith
    return run_arith(settings, arith, recovery=bool(recovery), recovery_methods=recovery)


def _eval_child(conn: Any, settings: Any, arith: str, recovery: tuple[str, ...]) -> None:
    """A spawned evaluation process: send ("ok", result) or ("error", text), then exit."""
    _eval_worker_init()
    try:
        conn.send(("ok", _eval_arith(settings, arith, recovery)))
    except BaseException as exc:  # noqa: BLE001  (reported to the parent, not lost)
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()


class EvalFailed(RuntimeError):
    """The evaluation beside the fleet did not produce a result (died, failed, too slow)."""


class EvalJob:
    """metaeval's methods for a fleet's settings, one spawned low-priority process per
    arithmetic, running while the fleet does.

    Each process sends its result over its own pipe, so a process that dies or hangs is
    seen (a pool would lose its task and wait forever) and the fleet's report still gets
    written, with the evaluation's failure noted.
    """

    def __init__(self, cfg: SimConfig) -> None:
        import multiprocessing

        self.settings = eval_settings(cfg)
        self.ariths = ("fixed", "float") if cfg.eval_float else ("fixed",)
        meta = "tinyreptile" if cfg.strategy == "tinyreptile" else "reptile"
        self.recovery = (meta,) if cfg.drift and cfg.recovery_tasks else ()
        # A generous bound: metaeval takes ~0.35 s per round on this 2-core machine.
        self.timeout = 300.0 + 3.0 * self.settings.rounds
        self.t0 = time.monotonic()
        ctx = multiprocessing.get_context("spawn")  # no fork of a threaded process
        self.procs: list[tuple[str, Any, Any]] = []
        for arith in self.ariths:
            parent, child = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_eval_child, daemon=True,
                               args=(child, self.settings, arith, self.recovery))
            proc.start()
            child.close()
            self.procs.append((arith, proc, parent))

    def report(self) -> Any:
        """Wait for the results: a metaeval.Report (timing["total"]: since the start).

        Raises:
            EvalFailed: a process died, raised, or ran past self.timeout (all stopped).
        """
        from .metaeval import make_report

        results = []
        try:
            for arith, proc, conn in self.procs:
                while not conn.poll(0.5):
                    if not proc.is_alive() and not conn.poll(0):
                        raise EvalFailed(f"the {arith}-point evaluation process died "
                                         f"(exit code {proc.exitcode})")
                    if time.monotonic() - self.t0 > self.timeout:
                        raise EvalFailed(f"the {arith}-point evaluation took over "
                                         f"{self.timeout:.0f} s")
                try:
                    status, value = conn.recv()
                except EOFError:  # it exited (or was killed) without sending a result
                    proc.join(5)
                    raise EvalFailed(f"the {arith}-point evaluation process died "
                                     f"(exit code {proc.exitcode})") from None
                if status != "ok":
                    raise EvalFailed(f"the {arith}-point evaluation failed: {value}")
                results.append(value)
        except BaseException:
            self.terminate()
            raise
        self.terminate()  # all have sent their result: they are exiting anyway
        rep = make_report(self.settings, self.ariths, results)
        rep.timing["total"] = time.monotonic() - self.t0
        return rep

    def terminate(self) -> None:
        for _, proc, conn in self.procs:
            if proc.is_alive():
                proc.terminate()
            proc.join(5)
            conn.close()


class Progress:
    """One status line: rewritten with \\r on a terminal, periodic plain lines otherwise."""

    def __init__(self, total: int, stream: TextIO | None = None, every: float = 5.0) -> None:
        self.total = total
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self.every = every
        self.last_text = ""
        self.last_t = 0.0
        self.t0 = time.monotonic()

    def update(self, done: int, text: str, force: bool = False) -> None:
        width = 24
        fill = round(width * done / max(self.total, 1))
        line = (f"round {done:>3}/{self.total} [{'#' * fill}{'.' * (width - fill)}] "
                f"{text}  {time.monotonic() - self.t0:5.1f}s")
        now = time.monotonic()
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self.last_text)))
            self.stream.flush()
        elif force or now - self.last_t >= self.every:
            self.stream.write(line + "\n")
            self.stream.flush()
            self.last_t = now
        self.last_text = line

    def close(self) -> None:
        if self.tty and self.last_text:
            self.stream.write("\n")
            self.stream.flush()


def device_configs(cfg: SimConfig, fleet: str, host: str, port: int,
                   key: str | None) -> list[dict[str, Any]]:
    """config.json of each device: its own seed, hence its own sine task (and drifts)."""
    sizes = list(TASKS[cfg.task])
    out = []
    for i in range(cfg.devices):
        out.append({"id": f"dev{i:02d}", "fleet": fleet, "model": cfg.task, "broker": host,
                    "port": port, "fleet_key": key, "keepalive": 10, "sizes": sizes,
                    "lr_shift": cfg.lr_shift, "seed": 1000 * cfg.seed + i + 1,
                    "drift": cfg.drift, "rate": cfg.rate, "status_every": 500})
    return out


def run(cfg: SimConfig, stream: TextIO | None = None,
        on_round: Callable[[RoundRow], None] | None = None) -> SimResult:
    """Run a simulation; write the report under cfg.out; return what it found.

    Raises:
        TinyFleetError: the broker, MicroPython or a device cannot start, or every
            device died.
        KeyboardInterrupt: after a clean shutdown of every process, when interrupted.
    """
    from .checkpoint import Checkpoint
    from .coordinator import Config, Coordinator
    from .fleet import umqtt_source
    from .metaeval import HeldOutSet, evaluate_init

    cfg.check()
    umqtt_source(install=False)  # before anything starts: one line naming the fix
    stream = stream or sys.stdout
    job = EvalJob(cfg) if cfg.evaluation else None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    out = Path(cfg.out) if cfg.out else Path("runs") / stamp
    out.mkdir(parents=True, exist_ok=True)
    sizes = TASKS[cfg.task]
    key = secrets.token_hex(16) if cfg.fleet_key is None else (cfg.fleet_key or None)
    fleet_name = f"sim{stamp.replace('-', '')}"  # runs sharing a broker do not mix
    t0 = time.monotonic()
    notes: list[str] = []
    broker: EmbeddedBroker | None = None
    fleet: Fleet | None = None
    watcher: Watcher | None = None
    stop = threading.Event()
    rows: list[RoundRow] = []
    thetas: list[np.ndarray] = [reference.init_weights(sizes, cfg.seed)]
    progress = Progress(cfg.rounds, stream)
    try:
        if cfg.broker:
            host, port = parse_broker(cfg.broker)
        else:
            (out / "broker").mkdir(exist_ok=True)  # its config and log stay in the report
            broker = EmbeddedBroker(workdir=(out / "broker").resolve()).start()
            host, port = broker.host, broker.port
        stream.write(f"broker {host}:{port}, {cfg.devices} MicroPython {cfg.build}-bit "
                     f"devices, {cfg.rounds} rounds of {cfg.strategy}, out {out}\n")
        stream.flush()
        watcher = Watcher(host, port, [f"tf/{fleet_name}/dev/+/status"],
                          client_id=f"tf-sim-watch-{fleet_name}")
        fleet = Fleet(out / "boards", build=cfg.build, heapsize=cfg.heapsize)
        for dc in device_configs(cfg, fleet_name, host, port, key):
            fleet.add(dc)
        fleet.start()
        _wait_online(cfg, fleet, watcher, fleet_name, progress)

        ck = Checkpoint(out / "coordinator.sqlite")
        ccfg = Config(fleet=fleet_name, model=cfg.task, sizes=sizes, strategy=cfg.strategy,
                      rounds=cfg.rounds, per_round=1 if cfg.strategy == "tinyreptile" else 0,
                      k=cfg.k, lr_shift=cfg.lr_shift, epsilon=cfg.epsilon,
                      deadline=cfg.deadline, min_replies=1, seed=cfg.seed,
                      key=key.encode() if key else None,
                      registry=str(out / "registry.sqlite") if cfg.registry else None)
        coord = Coordinator(ccfg, host, port, ck, client_id=f"tf-coord-{fleet_name}")

        def round_done(res: Any) -> None:
            losses = [r.loss for r in res.replies if r.loss == r.loss]
            row = RoundRow(res.round, res.status, float(res.epsilon), list(res.selected),
                           [r.device for r in res.replies],
                           float(np.mean(losses)) if losses else float("nan"),
                           float(res.duration))
            rows.append(row)
            thetas.append(np.asarray(coord.theta, dtype=np.int64).copy())
            if on_round:
                on_round(row)

        coord.on_round = round_done
        errors: list[BaseException] = []

        def work() -> None:
            try:
                coord.run(stop)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                errors.append(exc)

        worker = threading.Thread(target=work, name="coordinator", daemon=True)
        worker.start()
        try:
            while worker.is_alive():
                worker.join(0.2)
                dead = fleet.dead()
                if len(dead) == len(fleet.devices):
                    stop.set()
                    worker.join(10)
                    raise TinyFleetError("every device died; last log lines:\n"
                                         + dead[0].log_tail(8))
                cur = coord.open
                where = (f"replies {len(cur.replies)}/{len(cur.selected)}" if cur
                         else "aggregating")
                last = rows[-1] if rows else None
                loss = f"loss {last.device_loss:.3f}" if last else "loss -"
                progress.update(len(rows), f"{len(coord.online)}/{cfg.devices} online, "
                                           f"{where}, {loss}", force=bool(rows) and
                                len(rows) == cfg.rounds)
        finally:
            stop.set()
            worker.join(15)
            ck.close()
            progress.close()
        if errors:
            raise errors[0]
        ignored = coord.ignored
        statuses = _final_statuses(watcher, fleet_name)
        dead = fleet.dead()
        if dead:
            notes.append("devices that exited during the run: "
                         + ", ".join(d.id for d in dead))
    except BaseException:
        if job is not None:
            job.terminate()
        raise
    finally:
        stop.set()
        if fleet is not None:
            fleet.stop()
        if watcher is not None:
            watcher.close()
        if broker is not None:
            broker.stop()

    initial = RoundRow(0, "init", float("nan"), [], [], float("nan"), 0.0)
    every = [initial] + rows
    n = len(every) - 1
    evaluation: dict[str, Any] = {}
    try:  # metaeval is still running: stop it if this fails or is interrupted
        picks = sorted({round(i * n / cfg.eval_points) for i in range(cfg.eval_points + 1)})
        stream.write(f"scoring {len(picks)} global models on {cfg.eval_tasks} held-out tasks "
                     f"(10 shots, {cfg.eval_steps} steps)...\n")
        stream.flush()
        held = HeldOutSet.make(cfg.eval_tasks, seed=cfg.seed)
        steps = sorted({0, 8, cfg.eval_steps})
        scores = {}
        for i in picks:
            scores[i] = evaluate_init(thetas[i], sizes, steps=steps, lr_shift=cfg.lr_shift,
                                      held=held)
            every[i].heldout_before = scores[i][0]
            every[i].heldout_after = scores[i][cfg.eval_steps]
        comparison = {"fleet": scores[n], "random": scores[0]}
        if job is not None:
            try:
                evaluation = _evaluation(cfg, job, thetas[n], n, scores[n], held, statuses,
                                         stream)
            except EvalFailed as exc:
                notes.append(f"evaluation beside the fleet failed: {exc}")
                stream.write(f"evaluation failed: {exc}\n")
    except BaseException:
        if job is not None:
            job.terminate()
        raise
    result = SimResult(config={k: (str(v) if isinstance(v, Path) else v)
                               for k, v in asdict(cfg).items() if k != "fleet_key"},
                       out=str(out), rounds=rows, initial=initial, devices=statuses,
                       elapsed=time.monotonic() - t0, coordinator_ignored=ignored,
                       notes=notes, comparison=comparison, evaluation=evaluation)
    write_report(result, out)
    return result


def _evaluation(cfg: SimConfig, job: EvalJob, theta: np.ndarray, last: int,
                fleet_fixed: dict[int, float], held: Any, statuses: dict[str, dict[str, Any]],
                stream: TextIO) -> dict[str, Any]:
    """The fleet's final global beside metaeval's methods, on the same held-out tasks."""
    from .metaeval import drift_recovery, evaluate_init, to_master

    st = job.settings
    sizes = TASKS[cfg.task]
    steps = [0, *st.steps]
    stream.write(f"evaluation: {' and '.join(job.ariths)} arithmetic, 1 seed, {st.tasks} held-out "
                 f"tasks, {st.boards} boards x {st.rounds} rounds x k = {st.k}; waiting for "
                 "metaeval's methods...\n")
    stream.flush()
    fleet = {"fixed": fleet_fixed}
    if "float" in job.ariths:
        fleet["float"] = evaluate_init(theta, sizes, steps=steps, lr_shift=cfg.lr_shift,
                                       arith="float", held=held)
    recovery = {}
    if job.recovery:  # from the fleet's global, as a board running it would
        recovery["fixed"] = drift_recovery(to_master(np.asarray(theta, dtype=np.float64)),
                                           st, "fixed")
    rep = job.report()
    same, at = SAME_METHOD[cfg.strategy], max(st.steps)
    ratio = {a: fleet[a][at] / rep.mse[a][same][at] for a in job.ariths}
    targets = []
    for a in job.ariths:
        for base, goal in (("joint", 1.5), ("random", 4.0)):
            r = rep.mse[a][base][at] / fleet[a][at]
            targets.append({"target": f"{a}: {base} / this fleet", "ratio": r, "goal": goal,
                            "sense": ">=", "met": bool(r >= goal * (1 - 1e-9))})
    per_round = [d["samples"] / d["rounds"] for d in statuses.values()
                 if d.get("rounds") and d.get("samples")]
    notes = [
        f"Methods: tinyfleet.metaeval with this run's settings ({st.boards} boards, "
        f"{st.rounds} batched rounds, {st.rounds * st.boards} TinyReptile rounds, k = {st.k}, "
        f"lr 2^-{st.lr_shift}, drift every {st.drift} samples, ε {st.epsilon:g} → 0, seed "
        f"{st.first_seed}, int16 Q12 on the wire), 1 seed (`tinyfleet evaluate` averages 3); "
        f"drift recovery on {st.recovery_tasks} tasks, for "
        f"{', '.join(job.recovery) or 'no method (no drift)'} and this fleet, fixed point.",
        f"Same held-out tasks, shots and query points for every row ({st.tasks} tasks, "
        f"{st.shots} shots): the random-init row is round 0's score.",
        "The simulation gives each board exactly k fresh samples per round; the real "
        f"devices also learn online between rounds (--rate {cfg.rate}/s: "
        + (f"{np.mean(per_round):.1f} samples per round on average here" if per_round
           else "samples per round unknown")
        + "), so their tasks drift at other rounds and each round sees other draws of the "
        "same task distribution: the fleet and the simulation are the same procedure, not "
        "the same samples, and one seed of each. Two runs of the same fleet already differ "
        "(timing decides which samples a round sees), so a ratio near 1 means agreement "
        "within that spread, not an exact match."]
    if cfg.strategy == "local":
        notes.append("local: the global model never moves, so the fleet is compared with "
                     "the random init.")
    out = {"label": FLEET_LABEL, "strategy": cfg.strategy, "same_method": same, "steps": at,
           "fleet": {"round": last, "mse": {a: {str(k): v for k, v in m.items()}
                                            for a, m in fleet.items()},
                     "recovery": recovery},
           "ratio": ratio, "fleet_targets": targets, "methods": rep.to_json(),
           "notes": notes, "seconds": rep.timing["total"]}
    return out


def _wait_online(cfg: SimConfig, fleet: Fleet, watcher: Watcher, fleet_name: str,
                 progress: Progress) -> None:
    deadline = time.monotonic() + cfg.startup
    online: set[str] = set()
    prefix = f"tf/{fleet_name}/dev/"
    while len(online) < cfg.devices:
        for topic, payload, _ in list(watcher.messages):
            try:
                if json.loads(payload).get("state") == "online":
                    online.add(topic[len(prefix):].split("/")[0])
            except (ValueError, AttributeError):
                pass
        progress.update(0, f"{len(online)}/{cfg.devices} devices online")
        dead = fleet.dead()
        if dead:
            raise TinyFleetError(f"device {dead[0].id} exited at start-up:\n"
                                 + dead[0].log_tail(8))
        if time.monotonic() > deadline:
            raise TinyFleetError(f"only {len(online)} of {cfg.devices} devices came online "
                                 f"within {cfg.startup:.0f} s")
        time.sleep(0.1)


def _final_statuses(watcher: Watcher, fleet_name: str) -> dict[str, dict[str, Any]]:
    prefix = f"tf/{fleet_name}/dev/"
    last: dict[str, dict[str, Any]] = {}
    for topic, payload, _ in list(watcher.messages):
        try:
            st = json.loads(payload)
        except ValueError:
            continue
        if isinstance(st, dict) and st.get("state") != "offline":
            last[topic[len(prefix):].split("/")[0]] = st
    return dict(sorted(last.items()))


def _f(v: float, digits: int = 3) -> str:
    return "-" if v != v else f"{v:.{digits}f}"


def evaluation_markdown(ev: dict[str, Any]) -> list[str]:
    """report.md's evaluation section: `tinyfleet evaluate`'s table with the fleet's row,
    the targets, drift recovery and how the fleet compares with its simulation."""
    from . import metaeval

    m = ev["methods"]
    rep = metaeval.Report(settings=m["settings"], recovery=m["recovery"], targets=m["targets"],
                          mse={a: {k: {int(n): v for n, v in per.items()}
                                   for k, per in by.items()} for a, by in m["mse"].items()})
    head, rows = metaeval.table_rows(rep)
    ariths = list(rep.mse)
    steps = [0, *[int(s) for s in rep.settings["steps"]]]
    fl = ev["fleet"]["mse"]
    row = [f"**{ev['label']}**, round {ev['fleet']['round']}"] + [
        metaeval._f(fl[a][str(n)]) for n in steps for a in ariths]
    if len(ariths) == 2:
        at = str(max(steps))
        row.append(metaeval._f(fl["fixed"][at] / fl["float"][at], 2))
    same, at = ev["same_method"], ev["steps"]
    md = ["## Evaluation: this fleet beside every method, same settings", "",
          f"Held-out MSE after N adaptation steps (0: before adaptation) on "
          f"{rep.settings['tasks']} sine tasks, {rep.settings['shots']} shots, the same "
          f"for every row; lower is better. Methods simulated by tinyfleet.metaeval "
          f"({'; '.join(ARITH_TEXT[a] for a in ariths)}). This fleet trained in fixed "
          "point; its float columns adapt its global model with the float reference.", "",
          "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
          "| " + " | ".join(row) + " |"]
    md += ["| " + " | ".join(r) + " |" for r in rows]
    md += [""]
    for a, r in ev["ratio"].items():
        md.append(f"- {a}: this fleet's MSE after {at} steps is **{r:.2f}x** metaeval's "
                  f"simulation of the same strategy ({metaeval.LABELS[same]}): "
                  f"{fl[a][str(at)]:.3f} vs {rep.mse[a][same][at]:.3f}.")
    md += ["", "| target | ratio | goal | met |", "|---|---|---|---|"]
    md += [f"| {t['target']} | {t['ratio']:.2f} | {t['sense']} {t['goal']:.2f} | "
           f"{'yes' if t['met'] else 'no'} |" for t in [*ev["fleet_targets"], *rep.targets]]
    recs = [(a, meta, r) for a, rec in rep.recovery.items() for meta, r in rec.items()]
    recs += [(a, "this fleet", r) for a, r in ev["fleet"]["recovery"].items()]
    if recs:
        md += ["", "Drift recovery: samples a board needs after its task drifts to reach the "
               "target MSE on the new task (median and mean over tasks; a task that never "
               "gets there counts as the maximum).", "",
               "| arithmetic | init | target | from meta init | from previous weights |",
               "|---|---|---|---|---|"]
        md += [f"| {a} | {meta} | {r['target']} | {metaeval._samples_text(r['from_init'])} | "
               f"{metaeval._samples_text(r['from_previous'])} |" for a, meta, r in recs]
    md += [""] + [f"- {n}" for n in ev["notes"]]
    md += [f"- metaeval ran beside the fleet in low-priority processes; "
           f"{ev['seconds']:.0f} s from start to its last result.", ""]
    return md


def write_report(res: SimResult, out: Path) -> None:
    """report.json, report.md and loss.png under `out`."""
    from .lineplot import line_chart

    rows = [res.initial] + res.rounds
    (out / "report.json").write_text(json.dumps(asdict(res), indent=1, default=str))
    c = res.config
    names = ["blue", "red", "green"]  # PALETTE order
    line_chart([[(r.round, r.heldout_after) for r in rows],
                [(r.round, r.heldout_before) for r in rows],
                [(r.round, r.device_loss) for r in res.rounds]], out / "loss.png",
               labels=[f"held-out mse after {c['eval_steps']} adaptation steps",
                       "held-out mse before adaptation",
                       "devices' mean loss in their k local steps"],
               title=f"{c['task']} fleet, {c['strategy']}: {c['devices']} micropython devices",
               xlabel="round", ylabel="mse")
    first, last = res.initial, rows[-1]
    md = [f"# TinyFleet simulation ({c['task']}, {c['strategy']})", "",
          f"{c['devices']} MicroPython {c['build']}-bit devices, {len(res.rounds)} of "
          f"{c['rounds']} rounds, k = {c['k']} local steps, lr 2^-{c['lr_shift']}, "
          f"{res.elapsed:.1f} s.", "",
          f"Held-out MSE after {c['eval_steps']} adaptation steps on 10 shots "
          f"({c['eval_tasks']} tasks): **{_f(first.heldout_after)} → "
          f"{_f(last.heldout_after)}** (round 0 → {last.round}).", "",
          f"![loss](loss.png) — {names[0]}: held-out MSE after adaptation; {names[1]}: "
          f"before adaptation; {names[2]}: devices' mean loss during their k steps.", ""]
    if res.comparison:
        fleet, rand = res.comparison["fleet"], res.comparison["random"]
        cols = sorted(fleet)
        md += [f"Final global model vs random init: held-out MSE on the same {c['eval_tasks']} "
               "tasks (10 shots; lower is better):", "",
               "| init | " + " | ".join("before adaptation" if k == 0 else f"{k} steps"
                                       for k in cols) + " |",
               "|---|" + "---:|" * len(cols),
               f"| fleet global (round {last.round}) | "
               + " | ".join(_f(fleet[k]) for k in cols) + " |",
               "| random init (round 0) | " + " | ".join(_f(rand[k]) for k in cols) + " |",
               ""]
        if not res.evaluation:
            md += ["For the full method comparison (TinyReptile, Reptile, FedAvg, jointly "
                   "trained, local only, random; fixed point and float) run `tinyfleet "
                   "evaluate`, or simulate without --no-evaluation.", ""]
    if res.evaluation:
        md += evaluation_markdown(res.evaluation)
    shown = [r for r in rows if r.heldout_after == r.heldout_after] or rows
    if len(shown) < len(rows):
        md += [f"Rounds with a held-out score (all {len(rows) - 1} rounds are in report.json):",
               ""]
    md += ["| round | status | ε | replies | device loss | held-out MSE | adapted MSE | s |",
           "|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in shown:
        md.append(f"| {r.round} | {r.status} | {_f(r.epsilon, 2)} | {len(r.replied)} | "
                  f"{_f(r.device_loss)} | {_f(r.heldout_before)} | {_f(r.heldout_after)} | "
                  f"{r.duration:.2f} |")
    md += ["", "| device | samples | rounds | online loss | accepted | rejected | kernel | "
               "mem free |", "|---|---:|---:|---:|---:|---:|---|---:|"]
    for dev, st in res.devices.items():
        md.append(f"| {dev} | {st.get('samples', '-')} | {st.get('rounds', '-')} | "
                  f"{_f(float(st.get('loss', float('nan'))))} | {st.get('accepted', '-')} | "
                  f"{st.get('rejected', '-')} | {st.get('kernel', '-')} | "
                  f"{st.get('mem_free', '-')} |")
    if res.notes:
        md += [""] + [f"- {n}" for n in res.notes]
    (out / "report.md").write_text("\n".join(md) + "\n")
