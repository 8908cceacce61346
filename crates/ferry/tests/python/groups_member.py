"""A kafka-python group member for crates/ferry/tests/groups.rs.

    python groups_member.py BOOTSTRAP TOPIC GROUP SECONDS

Subscribes TOPIC in GROUP, and for each record prints "consumed <value>",
commits synchronously and only then prints "committed <value>", so the test
knows which records were surely committed before it kills this process (and
which ones may have been: consumed, commit maybe done). Exits after SECONDS.
"""

import logging
import os
import sys
import time

from kafka import KafkaConsumer


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
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        client_id="ferry-e2e-python-member",
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        session_timeout_ms=3000,
        heartbeat_interval_ms=300,
        max_poll_records=1,
        fetch_max_wait_ms=100,
    )
    end = time.time() + seconds
    while time.time() < end:
        for records in consumer.poll(timeout_ms=100).values():
            for record in records:
                print("consumed", record.value.decode(), flush=True)
                consumer.commit()
                print("committed", record.value.decode(), flush=True)
                # Slow enough that the test kills it with records left over.
                time.sleep(0.02)
    consumer.close()


if __name__ == "__main__":
    main()
