#!/usr/bin/env node
// A Rail consumer-group worker in Node.js: join a group, poll, handle, commit
// (docs/protocol.md §9.6, "a complete consumer").
//
//   node worker.js --group G --topics t1[,t2...] [--broker tcp://127.0.0.1:7400]
//                  [--count N] [--timeout-ms MS] [--session-timeout-ms 10000]
//                  [--client-id node-worker] [--start earliest|latest]
//
// In a cluster (docs/cluster.md) give any of its brokers with --brokers E1,E2,...: the
// worker then joins at the group's coordinator and fetches from the partitions' leaders
// (member.js), following both when they move.
//
// Handling an event prints it as one JSON line on stdout:
//   {"topic":…,"partition":…,"offset":…,"key":…,"value":…,"headers":…,"timestamp":…}
// After each poll the worker commits the next offset of every partition it handled and
// still owns. It stops after --count events (exit 0), after --timeout-ms without reaching
// --count (exit 3), or on SIGINT/SIGTERM (exit 0); it then commits and leaves the group.

"use strict";

const { parseArgs } = require("node:util");
const { RailClient, RailError, endpointList, recordsOf, toJSON } = require("./rail");
const { ClusterMember } = require("./member");

function usage(message) {
  if (message) console.error(`worker: ${message}`);
  console.error(
    "usage: node worker.js --group G --topics T1[,T2...] [--broker ENDPOINT | --brokers E1,E2,...]\n" +
      "                      [--count N]\n" +
      "                      [--timeout-ms MS] [--session-timeout-ms MS] [--client-id ID]\n" +
      "                      [--start earliest|latest]",
  );
  process.exit(2);
}

const log = (message) => console.error(`worker: ${message}`);

async function main() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        broker: { type: "string", default: process.env.RAIL_BROKER || "tcp://127.0.0.1:7400" },
        brokers: { type: "string" },
        group: { type: "string" },
        topics: { type: "string" },
        count: { type: "string" },
        "timeout-ms": { type: "string" },
        "session-timeout-ms": { type: "string", default: "10000" },
        "client-id": { type: "string", default: "node-worker" },
        start: { type: "string", default: "earliest" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (err) {
    usage(err.message);
  }
  if (values.help) usage();
  if (!values.group) usage("--group is required");
  if (!values.topics) usage("--topics is required");
  const topics = values.topics.split(",").filter(Boolean);
  const count = values.count === undefined ? Infinity : Number(values.count);
  const timeoutMs = values["timeout-ms"] === undefined ? Infinity : Number(values["timeout-ms"]);
  const sessionTimeoutMs = Number(values["session-timeout-ms"]);
  if (!(count >= 0) || !(timeoutMs > 0) || !Number.isInteger(sessionTimeoutMs)) {
    usage("--count, --timeout-ms and --session-timeout-ms must be numbers");
  }
  const deadline = Date.now() + timeoutMs;

  let stopping = false;
  for (const signal of ["SIGINT", "SIGTERM"]) process.on(signal, () => { stopping = true; });

  // A cluster when --brokers is given (or --broker lists several endpoints).
  const bootstrap = endpointList(values.brokers ?? values.broker);
  if (values.brokers !== undefined || bootstrap.length > 1) {
    return runInCluster({
      bootstrap, group: values.group, topics, count, deadline, sessionTimeoutMs,
      clientId: values["client-id"], start: values.start, stopping: () => stopping,
    });
  }

  const client = new RailClient(values.broker);
  const group = values.group;
  let member = null; // {member_id, generation, assignment: Set("topic/partition"), heartbeatMs}
  const owned = (topic, partition) => member.assignment.has(`${topic}/${partition}`);
  const adopt = (reply) => {
    if (reply.generation !== member.generation) {
      log(`generation ${reply.generation}: assignment ${toJSON(reply.assignment)}`);
    }
    member.generation = reply.generation;
    member.assignment = new Set(reply.assignment.map(([t, p]) => `${t}/${p}`));
  };

  const join = async () => {
    const reply = await client.request("join", {
      group,
      topics,
      member_id: member?.member_id, // re-join as the same member after NOT_MEMBER (§9.1)
      session_timeout_ms: sessionTimeoutMs,
      start: values.start,
      client_id: values["client-id"],
    });
    member = { member_id: reply.member_id, generation: reply.generation, assignment: new Set(), heartbeatMs: reply.heartbeat_interval_ms };
    adopt(reply);
    log(`joined ${group} as ${member.member_id}, generation ${reply.generation}, assignment ${toJSON(reply.assignment)}`);
  };

  // Handled but not yet committed: "topic/partition" -> next offset to consume.
  let toCommit = new Map();
  const commit = async () => {
    // Commit only partitions this member still owns (§9.4 fencing); the others were moved
    // by a rebalance and their new owner starts from the last committed offset.
    const offsets = [];
    for (const [tp, next] of toCommit) {
      const [topic, partition] = splitTp(tp);
      if (owned(topic, partition)) offsets.push([topic, partition, next]);
    }
    toCommit = new Map();
    if (!offsets.length) return;
    try {
      await client.request("commit", { group, member_id: member.member_id, offsets });
    } catch (err) {
      if (!(err instanceof RailError) || err.code !== "STALE_GENERATION") throw err;
      // A rebalance we have not seen yet: learn the assignment, commit what is still ours.
      adopt(await client.request("heartbeat", { group, member_id: member.member_id }));
      const still = offsets.filter(([t, p]) => owned(t, p));
      if (still.length) await client.request("commit", { group, member_id: member.member_id, offsets: still });
    }
  };

  let handled = 0;
  let exitCode = 0;
  try {
    await join();
    while (!stopping && handled < count) {
      const left = deadline - Date.now();
      if (left <= 0) {
        exitCode = 3;
        log(`timed out: handled ${handled} of ${count} events`);
        break;
      }
      // A parked poll is not a sign of life (§10): wait at most one heartbeat interval.
      const maxWait = Math.max(0, Math.min(member.heartbeatMs, 1000, left));
      let reply;
      try {
        reply = await client.request("poll", { group, member_id: member.member_id, max_wait_ms: maxWait },
          { timeoutMs: maxWait + 10000 });
      } catch (err) {
        if (err instanceof RailError && err.code === "NOT_MEMBER") {
          log("the broker forgot this member (NOT_MEMBER): joining again");
          toCommit = new Map();
          await join();
          continue;
        }
        throw inCluster(err);
      }
      adopt(reply);
      for (const part of reply.partitions) {
        const tp = `${part.topic}/${part.partition}`;
        for (const event of recordsOf(part.batches, part.offset)) {
          if (handled >= count) break;
          handle(part.topic, part.partition, event);
          handled += 1;
          toCommit.set(tp, event.offset + 1);
        }
      }
      await commit();
    }
    await commit();
  } finally {
    if (member) {
      try {
        await client.request("leave", { group, member_id: member.member_id });
      } catch (err) {
        log(`leave failed: ${err.message}`);
      }
    }
    client.close();
  }
  log(`handled ${handled} events, committed, left ${group}`);
  return exitCode;
}

// One broker of a cluster answers a group's ops only as its coordinator, and never `poll`:
// say what to do instead.
function inCluster(err) {
  if (err instanceof RailError && (err.code === "NOT_COORDINATOR" ||
      (err.code === "BAD_REQUEST" && err.message.includes("cluster")))) {
    return new RailError(err.code, `${err.message} (this broker is one of a cluster: ` +
      "give --brokers, and the worker follows the coordinator and the leaders)");
  }
  return err;
}

// The same loop in a cluster: membership and commits at the coordinator, data from the
// leaders (member.js). At least once: after a rejoin the events handled and not committed
// come again, and count towards --count again.
async function runInCluster({ bootstrap, group, topics, count, deadline, sessionTimeoutMs, clientId, start, stopping }) {
  const member = new ClusterMember(bootstrap, { group, topics, sessionTimeoutMs, clientId, start, log });
  // A coordinator or leader that moved is found again within this long.
  const within = () => Math.min(deadline, Date.now() + 60000);
  let handled = 0;
  let exitCode = 0;
  try {
    await member.cluster.refresh(topics); // UNKNOWN_TOPIC: a cluster never auto-creates
    await member.join(within());
    while (!stopping() && handled < count) {
      if (Date.now() >= deadline) {
        exitCode = 3;
        log(`timed out: handled ${handled} of ${count} events`);
        break;
      }
      await member.guard(async () => {
        await member.heartbeatIfDue();
        await member.findPositions();
        for (const event of await member.fetch()) {
          if (handled >= count) break;
          const { topic, partition, ...rest } = event;
          handle(topic, partition, rest);
          handled += 1;
          member.handled(event);
        }
        await member.commit();
      }, within());
    }
    if (!await member.guard(() => member.commit(), within())) {
      log("the last commit did not reach the coordinator: its events come again to the group");
      exitCode = 1;
    }
  } finally {
    try {
      await member.leave();
    } catch (err) {
      log(`leave failed: ${err.message}`);
    }
    member.close();
  }
  log(`handled ${handled} events${exitCode === 1 ? "" : ", committed"}, left ${group}`);
  return exitCode;
}

function splitTp(tp) {
  const slash = tp.lastIndexOf("/");
  return [tp.slice(0, slash), Number(tp.slice(slash + 1))];
}

// The handler: print the event. Replace with real work.
function handle(topic, partition, event) {
  process.stdout.write(toJSON({ topic, partition, ...event }) + "\n");
}

main()
  .then((code) => { process.exitCode = code; })
  .catch((err) => {
    console.error(`worker: ${inCluster(err).message}`);
    process.exitCode = 1;
  });
