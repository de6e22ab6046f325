#!/bin/sh
# Send one event to Rail from the shell, without Rail's client (docs/protocol.md §14, §6.1).
#
#   send.sh [-e ENDPOINT] [-k KEY] TOPIC VALUE          raw ingest: PUSH [topic, (key,) value]
#   send.sh -r [-e ENDPOINT] [-k KEY] TOPIC VALUE       produce request, waits for the ack
#
# Ingest needs only pyzmq and gives no acknowledgement (default endpoint
# tcp://127.0.0.1:7401, or $RAIL_INGEST). -r needs pyzmq and msgpack, sends a msgpack
# `produce` request to the API socket (tcp://127.0.0.1:7400, or $RAIL_BROKER), prints the
# reply, and exits 1 on an error reply or no reply within 10 s.
# No generic ZeroMQ command-line tool is packaged in Debian, so this is python3 -c; set
# $PYTHON to pick the interpreter.
set -eu
PYTHON=${PYTHON:-python3}
request=0 endpoint="" key=""
while getopts "re:k:h" opt; do
    case $opt in
        r) request=1 ;;
        e) endpoint=$OPTARG ;;
        k) key=$OPTARG ;;
        *) sed -n '2,12p' "$0" >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
if [ $# -ne 2 ]; then sed -n '2,12p' "$0" >&2; exit 2; fi

if [ "$request" = 0 ]; then
    endpoint=${endpoint:-${RAIL_INGEST:-tcp://127.0.0.1:7401}}
    # frames [topic, value] or [topic, key, value], raw bytes; linger lets them leave before exit
    exec "$PYTHON" -c '
import sys, zmq
endpoint, topic, key, value = sys.argv[1:]
s = zmq.Context().socket(zmq.PUSH)
s.connect(endpoint)
s.send_multipart([f.encode() for f in ([topic, key, value] if key else [topic, value])])
s.close(linger=5000)
print(f"pushed 1 event to {topic} on {endpoint} (no acknowledgement on the ingest socket)")
' "$endpoint" "$1" "$key" "$2"
else
    endpoint=${endpoint:-${RAIL_BROKER:-tcp://127.0.0.1:7400}}
    exec "$PYTHON" -c '
import os, sys, zmq, msgpack
endpoint, topic, key, value = sys.argv[1:]
s = zmq.Context().socket(zmq.DEALER)
s.connect(endpoint)
rid = os.getpid()
s.send(msgpack.packb({"op": "produce", "id": rid, "topic": topic, "records": [[value, key] if key else [value]]}))
reply = msgpack.unpackb(s.recv()) if s.poll(10000) else {"op": "error", "code": "TIMEOUT", "message": "no reply in 10 s"}
s.close(linger=0)
print(reply)
sys.exit(0 if reply["op"] == "produce" and reply["id"] == rid else 1)
' "$endpoint" "$1" "$key" "$2"
fi
