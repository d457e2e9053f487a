#!/usr/bin/env python3
"""Scripted MongoDB wire-protocol mock (mockupdb) for Lucky's wire-level tests
(tests/tests/mongodb_wire.rs): logs every command the driver sends and answers it from a
script, so a test checks the exact commands and how Lucky reads each kind of reply.

Usage: mock.py [--script FILE|-] [--log FILE] [--host 127.0.0.1] [--port 0]
               [--set-name rs0 | --set-name ''] [--max-wire 21]

* Prints the bound port as the first stdout line (then flushes).
* Autoresponds to hello/isMaster/ismaster/ping/buildInfo/endSessions on the
  connection threads, as a replica-set primary (or standalone if --set-name '').
* Every other command is handed to the main thread, logged (relaxed extended
  JSON, one command document per line, OP_MSG document sequences merged in as
  arrays) and answered with the next line of the script.
* Script line (extended JSON): either a bare reply document, e.g.
    {"ok": 1, "value": {"_id": "k", "owner": "a"}, "lastErrorObject": {"n": 1}}
  or a directive object with any of:
    {"expect": "findAndModify", "reply": {...}, "delay_ms": 50}
    {"hangup": true}            # close the socket instead of replying
  Blank lines and lines starting with '#' are skipped. A command takes the first unused
  line whose "expect" names it (or that has no "expect"), so commands that race (a change
  stream beside the lock's own) each find theirs. When none is left the mock replies
  ok:0 code 8000. In a reply, the string "$OWNER" stands for the last owner (the first
  binary value of the last write that carried one) and "$ID" for the command's _id.
"""
import argparse
import datetime
import signal
import sys
import threading
import time

from bson import json_util, ObjectId, Timestamp, Binary
from bson.json_util import JSONOptions, JSONMode
from mockupdb import MockupDB

HANDSHAKE = {"hello", "ismaster", "ping", "buildinfo", "endsessions"}
RELAXED = JSONOptions(json_mode=JSONMode.RELAXED)  # json_util.RELAXED_JSON_OPTIONS


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--script", default="-", help="JSON-lines reply script, '-' = stdin")
    p.add_argument("--log", default=None, help="command log file (default: stderr)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--set-name", default="rs0", help="'' => standalone")
    p.add_argument("--max-wire", type=int, default=21)
    p.add_argument("--no-cluster-time", action="store_true")
    p.add_argument("--log-handshake", action="store_true")
    p.add_argument("--verbose", action="store_true", help="mockupdb trace on stderr")
    return p.parse_args()


def main():
    args = parse_args()
    log = open(args.log, "a", buffering=1) if args.log else sys.stderr
    log_lock = threading.Lock()
    script = sys.stdin if args.script == "-" else open(args.script)

    def log_cmd(doc):
        with log_lock:
            log.write(json_util.dumps(doc, json_options=RELAXED) + "\n")
            log.flush()

    server = MockupDB(port=None, verbose=False, request_timeout=3600)
    # MockupDB hard-codes 'localhost'; bind the literal host instead.
    server._address = (args.host, args.port or None)
    if args.verbose:
        server._verbose = True
        server._log = lambda msg: print(msg, file=sys.stderr, flush=True)
    port = server.run()
    me = "%s:%d" % (args.host, port)
    conn_ids = {}  # client port -> connectionId (stable per connection)
    ct_lock = threading.Lock()
    ts_counter = [0]

    def cluster_time():
        with ct_lock:
            ts_counter[0] += 1
            ts = Timestamp(int(time.time()), ts_counter[0])
        return ts, {"clusterTime": ts,
                    "signature": {"hash": Binary(b"\x00" * 20), "keyId": 0}}

    def hello_reply(req):
        legacy = req.command_name.lower() == "ismaster"
        doc = {
            ("ismaster" if legacy else "isWritablePrimary"): True,
            "helloOk": True,
            "maxBsonObjectSize": 16 * 1024 * 1024,   # REQUIRED by Rust driver
            "maxMessageSizeBytes": 48000000,         # REQUIRED (i32) by Rust driver
            "maxWriteBatchSize": 100000,
            "localTime": datetime.datetime.now(datetime.timezone.utc),
            "logicalSessionTimeoutMinutes": 30,
            "connectionId": conn_ids.setdefault(req.client_port, len(conn_ids) + 1),
            "minWireVersion": 0,
            "maxWireVersion": args.max_wire,
            "readOnly": False,
        }
        # Deliberately NO topologyVersion: with it, drivers switch the monitor
        # to the streaming (exhaustAllowed/moreToCome) protocol mockupdb can't do.
        if args.set_name:
            doc.update({
                "hosts": [me], "setName": args.set_name, "setVersion": 1,
                "secondary": False, "primary": me, "me": me,
                "electionId": ObjectId("7fffffff0000000000000001"),
            })
        return doc

    def handshake(req):
        name = (req.command_name or "").lower()
        if name not in HANDSHAKE:
            return False  # not handled -> queued for the main thread
        if args.log_handshake:
            log_cmd(req.doc)
        if name in ("hello", "ismaster"):
            reply = hello_reply(req)
        elif name == "buildinfo":
            reply = {"version": "7.0.0", "versionArray": [7, 0, 0, 0],
                     "maxBsonObjectSize": 16 * 1024 * 1024}
        else:
            reply = {}
        reply["ok"] = 1
        if args.set_name and not args.no_cluster_time:
            reply["operationTime"], reply["$clusterTime"] = cluster_time()
        req.reply(reply)
        return True

    server.autoresponds(handshake)

    lines = []
    for line in script:
        line = line.strip()
        if line and not line.startswith("#"):
            lines.append(json_util.loads(line))
    last = {"owner": None}

    def first_binary(v):
        if isinstance(v, (bytes, Binary)):
            return Binary(bytes(v))
        if isinstance(v, dict):
            v = list(v.values())
        if isinstance(v, list):
            for x in v:
                b = first_binary(x)
                if b is not None:
                    return b
        return None

    def the_id(doc):
        for k in ("query", "filter"):
            if isinstance(doc.get(k), dict) and "_id" in doc[k]:
                return doc[k]["_id"]
        for u in doc.get("updates", []) or []:
            if isinstance(u.get("q"), dict) and "_id" in u["q"]:
                return u["q"]["_id"]
        return None

    def fill(v, doc):
        if v == "$OWNER":
            return last["owner"]
        if v == "$ID":
            return the_id(doc)
        if isinstance(v, dict):
            return {k: fill(x, doc) for k, x in v.items()}
        if isinstance(v, list):
            return [fill(x, doc) for x in v]
        return v

    def next_line(name):
        for i, entry in enumerate(lines):
            exp = entry.get("expect") if isinstance(entry, dict) else None
            if exp is None or exp.lower() == name.lower():
                return lines.pop(i)
        return None

    def mock_error(msg):
        return {"ok": 0, "errmsg": "mock: " + msg, "code": 8000,
                "codeName": "MockError"}

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    print(port, flush=True)

    try:
        while not stop.is_set():
            try:
                req = server.receives(timeout=0.5)
            except AssertionError:  # timeout, nothing received
                continue
            if req is None:
                break
            log_cmd(req.doc)
            if getattr(req, "flags", 0) and req.flags & 2:  # moreToCome: no reply
                continue
            name = req.command_name or ""
            owner = first_binary(req.doc.get("update", req.doc.get("updates")))
            if owner is not None:
                last["owner"] = owner
            entry = next_line(name)
            if entry is None:
                reply = mock_error("script exhausted at %r" % req.command_name)
            elif "reply" in entry or "hangup" in entry or "expect" in entry:
                if entry.get("delay_ms"):
                    time.sleep(entry["delay_ms"] / 1000.0)
                if entry.get("hangup"):
                    req.hangup()
                    continue
                reply = dict(fill(entry.get("reply", {}), req.doc))
            else:
                reply = dict(fill(entry, req.doc))
            reply.setdefault("ok", 1)
            if args.set_name and not args.no_cluster_time:
                op_time, ct = cluster_time()
                reply.setdefault("operationTime", op_time)
                reply.setdefault("$clusterTime", ct)
            try:
                req.reply(reply)
            except OSError:
                pass  # client went away
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
        if log is not sys.stderr:
            log.close()


if __name__ == "__main__":
    main()
