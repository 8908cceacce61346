"""A kafka-python group member for crates/ferry/tests/groups_more.rs.

    python groups_consume.py BOOTSTRAP TOPIC GROUP SECONDS

Subscribes TOPIC in GROUP with auto commit. Prints "assigned <p,p,...>" after
every rebalance (the member's whole assignment; eager protocol) and
"got <partition> <offset> <value>" for every record. Exits after SECONDS.
"""

import logging
import os
import sys
import time

from kafka import ConsumerRebalanceListener, KafkaConsumer


class Listener(ConsumerRebalanceListener):
    def on_partitions_revoked(self, revoked):
        pass

    def on_partitions_assigned(self, assigned):
        parts = ",".join(str(tp.partition) for tp in sorted(assigned, key=lambda tp: tp.partition))
        print("assigned", parts, flush=True)


def main():
    # FERRY_PY_LOG=FILE: kafka-python's own debug log goes to FILE, which the
    # test prints if it fails (to see what a member that went silent waited for).
    log_file = os.environ.get("FERRY_PY_LOG")
    if log_file:
        logging.basicConfig(
            filename=log_file, level=logging.DEBUG, format="%(asctime)s %(threadName)s %(name)s %(message)s"
        )
    bootstrap, topic, group, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id="ferry-e2e-python-group",
        enable_auto_commit=True,
        auto_commit_interval_ms=200,
        auto_offset_reset="earliest",
        session_timeout_ms=6000,
        heartbeat_interval_ms=300,
        fetch_max_wait_ms=100,
    )
    consumer.subscribe([topic], listener=Listener())
    end = time.time() + seconds
    while time.time() < end:
        for records in consumer.poll(timeout_ms=100).values():
            for r in records:
                print("got", r.partition, r.offset, r.value.decode(), flush=True)
    consumer.close()


if __name__ == "__main__":
    main()
