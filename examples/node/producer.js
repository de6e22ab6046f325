#!/usr/bin/env node
// A Rail producer in Node.js: sends events with `produce` requests and checks every
// acknowledgement (docs/protocol.md §6.1).
//
//   node producer.js [--broker tcp://127.0.0.1:7400] [--topic events] [--count 10]
//                    [--batch 100] [--in-flight 4] [--acks 1|all]
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
const { RailClient } = require("./rail");

const MENU = {
  pizza: ["margherita", "diavola", "quattro formaggi", "capricciosa", "marinara"],
  pasta: ["carbonara", "amatriciana", "pesto", "cacio e pepe"],
  drink: ["water", "lemonade", "chinotto", "espresso", "red wine"],
};

function usage(message) {
  if (message) console.error(`producer: ${message}`);
  console.error(
    "usage: node producer.js [--broker ENDPOINT] [--topic T] [--count N] [--batch N]\n" +
      "                        [--in-flight N] [--acks 1|all]\n" +
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

async function main() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        broker: { type: "string", default: process.env.RAIL_BROKER || "tcp://127.0.0.1:7400" },
        topic: { type: "string" },
        count: { type: "string", default: "10" },
        batch: { type: "string", default: "100" },
        "in-flight": { type: "string", default: "4" },
        acks: { type: "string", default: "1" },
        orders: { type: "string" },
        expected: { type: "string", default: path.join(__dirname, "..", "pizzeria", "data", "expected.json") },
        seed: { type: "string" },
        timeout: { type: "string", default: "10000" },
        help: { type: "boolean", short: "h" },
      },
    }));
  } catch (err) {
    usage(err.message);
  }
  if (values.help) usage();
  const batchSize = intOption(values, "batch", 1);
  const inFlight = intOption(values, "in-flight", 1);
  const timeoutMs = intOption(values, "timeout", 1);
  // acks 0 is left out on purpose: without a reply to a success, a client cannot tell a
  // stored batch from a lost one, and errors still come back (§6.1, §18).
  if (!["1", "all"].includes(values.acks)) usage("--acks must be 1 or all");
  const acks = values.acks === "all" ? "all" : 1;

  const pizzeria = values.orders !== undefined;
  const count = pizzeria ? intOption(values, "orders", 0) : intOption(values, "count", 0);
  const topic = values.topic ?? (pizzeria ? "orders" : "events");
  const expected = { pizza: 0, pasta: 0, drink: 0 };
  const random = rng(values.seed !== undefined ? Number(values.seed) : Date.now() ^ (process.pid << 16));
  const records = pizzeria ? pizzeriaOrders(count, random, expected) : genericEvents(count);

  const client = new RailClient(values.broker, { timeoutMs });
  const ranges = new Map(); // partition -> [first offset, last offset]
  let sent = 0;
  try {
    // Up to --in-flight produce requests at once on one DEALER; each reply is matched to
    // its request by id (§2.1 pipelining).
    const inFlightRequests = new Set();
    const produce = async (batch) => {
      const reply = await client.request("produce", { topic, records: batch, acks });
      // offsets: one [partition, base_offset, count] per partition the batch touched
      for (const [partition, base, n] of reply.offsets) {
        const range = ranges.get(partition) ?? [base, base + n - 1];
        ranges.set(partition, [Math.min(range[0], base), Math.max(range[1], base + n - 1)]);
      }
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
    for (const record of records) {
      batch.push(record);
      if (batch.length >= batchSize) await flush();
    }
    if (batch.length) await flush();
    await Promise.all(inFlightRequests);
  } finally {
    client.close();
  }

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
}

main().catch((err) => {
  console.error(`producer: ${err.message}`);
  process.exit(1);
});
