"""A pure-Python MQTT 3.1.1 broker (amqtt) on a loopback port: the fallback when Mosquitto
is not installed. Run as `python -m tinyfleet.pybroker PORT [HOST]`; SIGTERM stops it.

Only anonymous access is enabled (the listener is loopback-only); the $SYS and packet
logging plugins are left out because nothing in a fleet reads them. amqtt 0.12 also sends
every connecting client, at QoS 0, the retained messages matching any filter that any
client holds; `fleet_broker` keeps retained delivery to the subscribing client's own filters.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys


def broker_config(port: int, host: str = "127.0.0.1") -> dict[str, object]:
    """The amqtt broker configuration for a loopback fleet broker."""
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


def fleet_broker(config: dict[str, object]) -> object:
    """An amqtt Broker that sends retained messages only for filters the client holds."""
    from amqtt.broker import Broker

    class FleetBroker(Broker):
        async def _publish_retained_messages_for_subscription(self, subscription, session):
            held = self._subscriptions.get(subscription[0], ())
            if any(s.client_id == session.client_id for s, _ in held):
                await super()._publish_retained_messages_for_subscription(subscription, session)

    return FleetBroker(config)


async def serve(port: int, host: str = "127.0.0.1") -> None:
    """Run the broker until SIGTERM or SIGINT, then shut it down cleanly.

    Raises:
        amqtt.errors.BrokerError: the listener cannot bind (e.g. the port is taken).
    """
    broker = fleet_broker(broker_config(port, host))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await broker.start()
    await stop.wait()
    await broker.shutdown()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not 1 <= len(args) <= 2 or not args[0].isdigit():
        print("usage: python -m tinyfleet.pybroker PORT [HOST]", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("transitions").setLevel(logging.ERROR)
    try:
        import amqtt  # noqa: F401
    except ImportError:
        print("amqtt is not installed (pip install amqtt)", file=sys.stderr)
        return 1
    try:
        asyncio.run(serve(int(args[0]), args[1] if len(args) > 1 else "127.0.0.1"))
    except Exception as exc:  # one line in the log, which EmbeddedBroker reports
        print(f"amqtt broker failed: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
