#!/usr/bin/env node
// A Rail producer in Node.js: sends events with `produce` requests and checks every
// acknowledgement (docs/protocol.md §6.1).
//
//   node producer.js [--broker tcp://127.0.0.1:7400] [--topic events] [--count 10]
//                    [--batch 100] [--in-flight 4] [--acks 1|all]
//
// In a cluster (docs/cluster.md), give any of its brokers; the producer learns the others
// and each partition's leader from `metadata`, and follows the leaders when they move:
//
//   node producer.js --brokers tcp://a:7400,tcp://b:7400 --topic events --acks all
//
// Event n (1-based) is the map {"n": n, "text": "event n from node", "pid": <pid>}, keyed by
// "node-<n>", with the header {"source": "node"}.
//
// The pizzeria's hall, in Node (the same orders as examples/pizzeria/hall.py):
//
//   node producer.js --orders 200 [--expected data/expected.json] [--seed 1]

"use strict";

const fs = require("node:fs");
const path = require("node:path");
const { parseArgs } = require("node:util");
const { RailClient, RailCluster, RailError, endpointList, partitionForKey, newProducerId } = require("./rail");

const MENU = {
  pizza: ["margherita", "diavola", "quattro formaggi", "capricciosa", "marinara"],
  pasta: ["carbonara", "amatriciana", "pesto", "cacio e pepe"],
  drink: ["water", "lemonade", "chinotto", "espresso", "red wine"],
};

function usage(message) {
  if (message) console.error(`producer: ${message}`);
  console.error(
    "usage: node producer.js [--broker ENDPOINT | --brokers E1,E2,...] [--topic T] [--count N]\n" +
      "                        [--batch N] [--in-flight N] [--acks 1|all] [--timeout MS]\n" +
      "                        [--delivery-timeout MS] [--rate N]\n" +
      "       node producer.js --orders N [--expected FILE] [--seed S]   (the pizzeria's hall)",
  );
  process.exit(2);
}

function intOption(values, name, min) {
  const n = Number(values[name]);
  if (!Number.isInteger(n) || n < min) usage(`--${name} must be an integer >= ${min}`);
  return n;
}

// A small seeded generator (mulberry32), so --seed gives the same orders every run.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function* genericEvents(count) {
  for (let n = 1; n <= count; n++) {
    // A record is [value, key, headers] (§4.1); the timestamp is left out: append time.
    yield [{ n, text: `event ${n} from node`, pid: process.pid }, `node-${n}`, { source: "node" }];
  }
}

function* pizzeriaOrders(count, random, expected) {
  const pick = (list) => list[Math.floor(random() * list.length)];
  const run = Math.floor(random() * 0xffffff).toString(16).padStart(6, "0");
  const kinds = Object.keys(MENU);
  for (let n = 1; n <= count; n++) {
    const orderId = `${run}-${String(n).padStart(5, "0")}`;
    const items = [];
    const howMany = 1 + Math.floor(random() * 5);
    for (let i = 0; i < howMany; i++) {
      const kind = pick(kinds);
      items.push({ kind, name: pick(MENU[kind]) });
      expected[kind] += 1;
    }
    // Keyed by the order id, like hall.py: one order's events stay on one partition.
    yield [{ order_id: orderId, table: 1 + Math.floor(random() * 20), items }, orderId];
  }
}

// At most `rate` records a second, for a steady stream (--rate): record i is not handed out
// before i / rate seconds; one late by a stall (a failover) goes at once.
async function* paced(records, rate) {
  const started = Date.now();
  let i = 0;
  for (const record of records) {
    const due = started + (i * 1000) / rate;
    if (due > Date.now()) await new Promise((resolve) => setTimeout(resolve, due - Date.now()));
    i += 1;
    yield record;
  }
}

async function main() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        broker: { type: "string", default: process.env.RAIL_BROKER || "tcp://127.0.0.1:7400" },
        brokers: { type: "string" },
        topic: { type: "string" },
        count: { type: "string", default: "10" },
        batch: { type: "string", default: "100" },
        "in-flight": { type: "string", default: "4" },
        rate: { type: "string", default: "0" },
        acks: { type: "string", default: "1" },
        orders: { type: "string" },
        expected: { type: "string", default: path.join(__dirname, "..", "pizzeria", "data", "expected.json") },
        seed: { type: "string" },
        timeout: { type: "string", default: "10000" },
        "delivery-timeout": { type: "string", default: "60000" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (err) {
    usage(err.message);
  }
  if (values.help) usage();
  const batchSize = intOption(values, "batch", 1);
  const inFlight = intOption(values, "in-flight", 1);
  const rate = intOption(values, "rate", 0);
  const timeoutMs = intOption(values, "timeout", 1);
  const deliveryTimeoutMs = intOption(values, "delivery-timeout", 1);
  // acks 0 is left out on purpose: without a reply to a success, a client cannot tell a
  // stored batch from a lost one, and errors still come back (§6.1, §18).
  if (!["1", "all"].includes(values.acks)) usage("--acks must be 1 or all");
  const acks = values.acks === "all" ? "all" : 1;

  const pizzeria = values.orders !== undefined;
  const count = pizzeria ? intOption(values, "orders", 0) : intOption(values, "count", 0);
  const topic = values.topic ?? (pizzeria ? "orders" : "events");
  const expected = { pizza: 0, pasta: 0, drink: 0 };
  const random = rng(values.seed !== undefined ? Number(values.seed) : Date.now() ^ (process.pid << 16));
  const generated = pizzeria ? pizzeriaOrders(count, random, expected) : genericEvents(count);
  const records = rate ? paced(generated, rate) : generated;

  // A cluster when --brokers is given (or --broker lists several endpoints).
  const bootstrap = endpointList(values.brokers ?? values.broker);
  const clustered = values.brokers !== undefined || bootstrap.length > 1;
  const ranges = new Map(); // partition -> [first offset, last offset]
  const note = (partition, base, n) => {
    const range = ranges.get(partition) ?? [base, base + n - 1];
    ranges.set(partition, [Math.min(range[0], base), Math.max(range[1], base + n - 1)]);
  };
  const send = clustered ? sendToCluster : sendToBroker;
  const { sent, retried } = await send({
    endpoints: clustered ? bootstrap : values.broker, topic, records, batchSize, inFlight, acks,
    timeoutMs, deliveryTimeoutMs, note,
  });

  const detail = [...ranges.entries()]
    .sort((a, b) => a[0] - b[0])
    .map(([p, [first, last]]) => `partition ${p}: offsets ${first}-${last}`)
    .join(", ");
  if (pizzeria) {
    const total = expected.pizza + expected.pasta + expected.drink;
    fs.mkdirSync(path.dirname(values.expected), { recursive: true });
    fs.writeFileSync(values.expected, JSON.stringify({ orders: count, items: expected, total }, null, 2));
    const items = Object.entries(expected).map(([kind, n]) => `${n} ${kind}`).join(", ");
    console.log(`hall (node): sent ${count} orders (${total} items: ${items}) to ${topic}; ${detail}`);
  } else {
    console.log(`producer: sent ${sent} events to ${topic}, every one acknowledged; ${detail || "nothing sent"}`);
  }
  if (retried) {
    const how = [...retried.entries()].map(([code, n]) => `${code} ${n}`).join(", ");
    if (how) console.error(`producer: batches resent (same producer id and sequence): ${how}`);
  }
}

// One broker: plain produce requests without a partition (the broker picks it by key, §5),
// up to --in-flight at once on one DEALER, each reply matched to its request by id (§2.1).
// Not idempotent: a batch without a reply is an error, never resent.
async function sendToBroker({ endpoints, topic, records, batchSize, inFlight, acks, timeoutMs, note }) {
  const client = new RailClient(endpoints, { timeoutMs });
  let sent = 0;
  try {
    const inFlightRequests = new Set();
    const produce = async (batch) => {
      let reply;
      try {
        reply = await client.request("produce", { topic, records: batch, acks });
      } catch (err) {
        if (err instanceof RailError && err.code === "NOT_LEADER") {
          throw new RailError(err.code, `${err.message} (this broker is one of a cluster: ` +
            "give --brokers, and the producer follows the leaders)");
        }
        throw err;
      }
      // offsets: one [partition, base_offset, count] per partition the batch touched
      for (const [partition, base, n] of reply.offsets) note(partition, base, n);
      sent += batch.length;
    };
    let batch = [];
    const flush = async () => {
      const request = produce(batch);
      batch = [];
      inFlightRequests.add(request);
      request.finally(() => inFlightRequests.delete(request)).catch(() => {});
      if (inFlightRequests.size >= inFlight) await Promise.race(inFlightRequests);
    };
    for await (const record of records) {
      batch.push(record);
      if (batch.length >= batchSize) await flush();
    }
    if (batch.length) await flush();
    await Promise.all(inFlightRequests);
  } finally {
    client.close();
  }
  return { sent, retried: null };
}

// A cluster: the producer picks each record's partition itself (the key hash of §5, from
// the partition count in `metadata`) and sends each partition's batches to its leader,
// idempotently (§8): one producer_id, and per partition sequences from 0. A partition has
// one batch in flight at a time, so a batch is resent (RailCluster.produce: same
// producer_id and sequence, to the new leader) before any later one of its partition goes:
// the broker never sees a gap, and a batch the old leader stored is answered as a
// duplicate. Up to --in-flight batches of different partitions are in flight at once.
async function sendToCluster({ endpoints, topic, records, batchSize, inFlight, acks, timeoutMs,
  deliveryTimeoutMs, note }) {
  const cluster = new RailCluster(endpoints, { timeoutMs });
  const producerId = newProducerId();
  let sent = 0;
  try {
    let partitions;
    try {
      partitions = await cluster.partitionCount(topic);
    } catch (err) {
      if (err instanceof RailError && err.code === "UNKNOWN_TOPIC") {
        throw new RailError(err.code, `${err.message} (a cluster never creates a topic on ` +
          "first use: create it first, e.g. rail topics create)");
      }
      throw err;
    }
    const open = new Map(); // partition -> records not yet in a batch
    const sequences = new Map(); // partition -> sequence of its next batch
    const chains = new Map(); // partition -> promise of its last batch's acknowledgement
    const waiting = new Set(); // batches formed and not yet acknowledged
    let failure = null;
    let turn = 0; // keyless records rotate over the partitions, a batch at a time
    const ship = async (partition, batch) => {
      const sequence = sequences.get(partition) ?? 0;
      sequences.set(partition, sequence + batch.length);
      const after = chains.get(partition) ?? Promise.resolve();
      const done = after.then(async () => {
        if (failure) return; // a batch before it failed: sending this one would leave a gap
        const reply = await cluster.produce(topic, partition, batch, {
          acks, producerId, sequence, deadlineMs: deliveryTimeoutMs,
        });
        // duplicate with offsets []: stored long ago, too old to name (§8); acknowledged.
        for (const [p, base, n] of reply.offsets) note(p, base, n);
        sent += batch.length;
      }).catch((err) => {
        if (err instanceof RailError && err.code === "OUT_OF_ORDER_SEQUENCE") {
          // The new leader lacks batches the old one acknowledged: only acks=1 allows that.
          err = new RailError(err.code, `${err.message} (acknowledged batches were lost in a ` +
            "failover: with --acks all they cannot be)");
        }
        failure ??= err;
      });
      chains.set(partition, done);
      waiting.add(done);
      done.finally(() => waiting.delete(done));
      while (waiting.size >= inFlight && !failure) await Promise.race(waiting);
    };
    for await (const record of records) {
      if (failure) break;
      const key = record[1];
      const partition = key === null || key === undefined ? turn % partitions : partitionForKey(key, partitions);
      const batch = open.get(partition) ?? [];
      batch.push(record);
      open.set(partition, batch);
      if (batch.length >= batchSize) {
        open.delete(partition);
        turn += 1;
        await ship(partition, batch);
      }
    }
    for (const [partition, batch] of open) if (!failure) await ship(partition, batch);
    await Promise.all(waiting);
    if (failure) throw failure;
  } finally {
    cluster.close();
  }
  return { sent, retried: cluster.retries };
}

main().catch((err) => {
  console.error(`producer: ${err.message}`);
  process.exit(1);
});
