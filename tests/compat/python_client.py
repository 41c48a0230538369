"""An existing Liftbridge client, python-liftbridge (generated from Liftbridge's own api.proto),
against a liftbridge-rs server. Usage: python_client.py HOST:PORT. Exits non-zero on any
mismatch."""

import sys

from python_liftbridge import Lift, Message, Stream, ErrStreamExists


def main(addr):
    client = Lift(ip_address=addr, timeout=5)
    client.create_stream(Stream(subject="py.subject", name="py-stream"))
    try:
        client.create_stream(Stream(subject="py.subject", name="py-stream"))
        raise SystemExit("a second CreateStream must fail")
    except ErrStreamExists:
        pass
    for i in range(3):
        client.publish(Message(value="hello %d" % i, stream="py-stream"))
    got = []
    stream = Stream(subject="py.subject", name="py-stream").start_at_earliest_received()
    first = True
    for message in client.subscribe(stream):
        # Liftbridge (and so this server) sends an empty frame first to confirm the
        # subscription; this client predates it and passes it on.
        if first and not message.value:
            first = False
            continue
        first = False
        got.append((message.offset, message.value))
        if len(got) == 3:
            break
    want = [(i, ("hello %d" % i).encode()) for i in range(3)]
    if got != want:
        raise SystemExit("subscribed %r, expected %r" % (got, want))
    metadata = client.fetch_metadata()
    # This client's api.proto is older: field 2 (streamMetadata today) was named "metadata".
    names = sorted(s.name for s in metadata.metadata)
    if "py-stream" not in names:
        raise SystemExit("metadata lacks the stream: %r" % names)
    if not metadata.brokers or metadata.brokers[0].port <= 0:
        raise SystemExit("metadata lacks the broker: %r" % metadata.brokers)
    print("python-liftbridge: ok")


if __name__ == "__main__":
    main(sys.argv[1])
