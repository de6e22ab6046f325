// A minimal Rail client for Node.js, written from docs/protocol.md alone.
//
// One DEALER socket (protocol §2.1): each request is one frame holding one msgpack map with
// an `op` and an `id`; each reply is one frame whose map carries the same `id`. Replies may
// arrive out of order (a long poll is answered after a later ping), so one reader task files
// every reply under its id, and every request waits with a timeout (§2.1, §18).

"use strict";

const fs = require("fs");
const zmq = require("zeromq");
const { encode, decode } = require("@msgpack/msgpack");

// Record values are whatever their producers encoded (§4.1), and a fetch or poll reply
// holds them inline, so the whole reply must decode. @msgpack/msgpack refuses map keys that
// are not str or int (a Python producer may send bin or array keys inside a value): turn
// those into strings rather than lose the whole reply.
const utf8 = new TextDecoder("utf-8", { fatal: true });
const DECODE_OPTIONS = {
  mapKeyConverter: (key) => {
    if (typeof key === "string" || typeof key === "number") return key;
    if (key instanceof Uint8Array) {
      try {
        return utf8.decode(key);
      } catch {
        return Buffer.from(key).toString("base64");
      }
    }
    return JSON.stringify(key, (_k, v) => (typeof v === "bigint" ? v.toString() : v));
  },
};

class RailError extends Error {
  constructor(code, message) {
    super(`${code}: ${message}`);
    this.code = code;
  }
}

// CURVE (docs/security.md): with RAIL_CURVE_SERVER_KEY (the broker's public key, as its
// 40 Z85 characters or its NAME.key file) and RAIL_CURVE_KEY_FILE (this client's
// NAME.key_secret, written by `rail keys new NAME`), the socket encrypts and authenticates;
// with neither it is plaintext; one without the other is an error, never plaintext.
function readKeyFile(path) {
  const text = fs.readFileSync(path, "utf8");
  const pick = (name) => {
    const m = text.match(new RegExp(`^\\s*${name}\\s*=\\s*"([^"]{40})"`, "m"));
    return m ? m[1] : null;
  };
  return { publicKey: pick("public-key"), secretKey: pick("secret-key") };
}

function curveOptions(env = process.env) {
  const server = env.RAIL_CURVE_SERVER_KEY || "";
  const keyFile = env.RAIL_CURVE_KEY_FILE || "";
  if (!server && !keyFile) return {};
  if (!server || !keyFile) {
    throw new Error("RAIL_CURVE_SERVER_KEY and RAIL_CURVE_KEY_FILE go together (docs/security.md)");
  }
  const serverKey = server.length === 40 && !fs.existsSync(server)
    ? server : readKeyFile(server).publicKey;
  const own = readKeyFile(keyFile);
  if (!serverKey) throw new Error(`no public-key in ${server}`);
  if (!own.secretKey) throw new Error(`no secret-key in ${keyFile}: give NAME.key_secret`);
  return { curveServerKey: serverKey, curvePublicKey: own.publicKey, curveSecretKey: own.secretKey };
}

class RailClient {
  constructor(endpoint, { timeoutMs = 10000 } = {}) {
    this.endpoint = endpoint;
    this.timeoutMs = timeoutMs;
    // linger 0: requests still unsent at close are dropped; every request we care about
    // has been answered by then.
    this.socket = new zmq.Dealer({ linger: 0, ...curveOptions() });
    this.socket.connect(endpoint);
    // ZeroMQ reconnects in silence, and a request written to a connection that dropped
    // gets no reply (§2.1): fail its waiters at once (DISCONNECTED, as for a timeout)
    // rather than let each wait its timeout out for a broker that was stopped or killed.
    this.socket.events.on("disconnect", () => {
      this.failAll(new RailError("DISCONNECTED",
        `the connection to ${this.endpoint} was lost before it answered`));
    });
    this.nextId = 1;
    this.pending = new Map(); // id -> {resolve, reject, timer}
    this.sending = Promise.resolve(); // zeromq.js allows one send in progress at a time
    this.closed = false;
    this.reader = this.readReplies();
  }

  async readReplies() {
    try {
      for await (const frames of this.socket) {
        // A DEALER that sends [body] gets [body] back (§2.1).
        let reply;
        try {
          reply = decode(frames[frames.length - 1], DECODE_OPTIONS);
        } catch (err) {
          // Undecodable: its waiter cannot be found and will time out; keep reading.
          console.error(`rail: dropped an undecodable reply: ${err.message}`);
          continue;
        }
        const waiter = this.pending.get(reply.id);
        if (!waiter) continue; // a reply we stopped waiting for (timed out): drop it
        this.pending.delete(reply.id);
        clearTimeout(waiter.timer);
        if (reply.op === "error") waiter.reject(new RailError(reply.code, reply.message));
        else waiter.resolve(reply);
      }
    } catch (err) {
      if (!this.closed) this.failAll(err);
    }
  }

  failAll(err) {
    for (const [id, waiter] of this.pending) {
      clearTimeout(waiter.timer);
      waiter.reject(err);
      this.pending.delete(id);
    }
  }

  // Send one request and wait for its reply; an error reply rejects with a RailError.
  // Fields set to `undefined` are left out (the protocol's way to ask for a default, §3.1):
  // @msgpack/msgpack would otherwise encode them as nil, which most fields refuse.
  request(op, fields = {}, { timeoutMs } = {}) {
    const id = this.nextId++;
    const wait = timeoutMs ?? this.timeoutMs;
    const body = encode({ ...fields, op, id }, { ignoreUndefined: true });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RailError("TIMEOUT", `no reply to ${op} (id ${id}) from ${this.endpoint} in ${wait} ms`));
      }, wait);
      this.pending.set(id, { resolve, reject, timer });
      this.sending = this.sending
        .then(() => this.socket.send(body))
        .catch((err) => {
          const waiter = this.pending.get(id);
          if (waiter) {
            this.pending.delete(id);
            clearTimeout(waiter.timer);
            waiter.reject(err);
          }
        });
    });
  }

  close() {
    this.closed = true;
    this.failAll(new RailError("CLOSED", "the client was closed"));
    this.socket.close();
  }
}

// The events of a fetch or poll partition, in offset order (§4.3): record i of a batch has
// offset base_offset + i; the first batch may start before `fromOffset`; a record is
// [value, key, headers, timestamp] with trailing elements optional (nil timestamp = the
// batch's append time); extra elements are ignored.
function* recordsOf(batches, fromOffset) {
  for (const [baseOffset, appendTimestamp, records] of batches) {
    for (let i = 0; i < records.length; i++) {
      const offset = baseOffset + i;
      if (offset < fromOffset) continue;
      const [value = null, key = null, headers = null, timestamp = null] = records[i];
      yield { offset, value, key, headers, timestamp: timestamp ?? appendTimestamp };
    }
  }
}

// JSON for printing events: bin (Uint8Array) as UTF-8 text when it is valid UTF-8, else
// {"base64": ...}.
function toJSON(value) {
  return JSON.stringify(value, function (key, v) {
    // bin arrives as a Buffer (a Uint8Array over the received frame); look at the raw value,
    // since JSON.stringify has already applied Buffer.prototype.toJSON to `v`.
    const raw = this[key];
    if (raw instanceof Uint8Array) {
      try {
        return utf8.decode(raw);
      } catch {
        return { base64: Buffer.from(raw).toString("base64") };
      }
    }
    if (typeof v === "bigint") return v.toString();
    return v;
  });
}

// --- A cluster (docs/cluster.md) ----------------------------------------------------------
//
// `metadata` from any broker names the live brokers ({id, api}) and each partition's
// `leader` (a broker id, -1 while it has none) and `leader_epoch` (§6.11, protocol version 3).
// Only a partition's leader takes its produces; another broker answers NOT_LEADER.

// Refusals that mean "the leader is elsewhere, or will be in a moment": ask metadata again
// and resend the same batch, with the same producer_id and sequence, to the leader it names.
// NOT_ENOUGH_REPLICAS: the ISR is below min_insync_replicas (a replica died and has not been
// replaced yet); the batch may be stored, and a resend is recognised as its duplicate (§8).
// STORAGE_ERROR: the leader's disk refused the write, and it has withdrawn (cluster.md).
const LEADER_MOVED = new Set(["NOT_LEADER", "FENCED_LEADER_EPOCH", "UNKNOWN_LEADER_EPOCH",
  "NOT_ENOUGH_REPLICAS", "STORAGE_ERROR", "TIMEOUT", "DISCONNECTED"]);
const RETRY_MS = 200; // pause between attempts while leadership moves
const METADATA_TIMEOUT_MS = 2000; // one broker's turn at answering metadata
const SILENT_MS = 5000; // a broker that did not answer is asked last for this long

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// "tcp://a:7400,tcp://b:7400" -> ["tcp://a:7400", "tcp://b:7400"]
function endpointList(text) {
  return [...new Set(String(text).split(",").map((e) => e.trim()).filter(Boolean))];
}

// CRC-32/IEEE as zlib computes it (§5); Node 18 has no zlib.crc32.
const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});
function crc32(bytes) {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// The partition of a keyed record (§5): crc32(key_bytes(key)) % partitions, where
// key_bytes is a str's UTF-8 bytes, a bin's bytes, and any other key's msgpack encoding
// (as this client sends it). A producer that names the partition must pick it as the
// broker would, or a key's records would not stay together with other clients' records.
function partitionForKey(key, partitions) {
  let bytes;
  if (typeof key === "string") bytes = Buffer.from(key, "utf8");
  else if (key instanceof Uint8Array) bytes = key;
  else bytes = encode(key, { ignoreUndefined: true });
  return crc32(bytes) % partitions;
}

// A random producer id from 1 to 2^53-1: idempotent produce (§8) without bigints (§3.1).
function newProducerId() {
  const bytes = require("crypto").randomBytes(7);
  let n = 0;
  for (const b of bytes) n = n * 256 + b;
  return (n % (2 ** 53 - 1)) + 1;
}

class RailCluster {
  // `bootstrap`: one or more API endpoints of the cluster's brokers; any one that answers
  // is enough to learn the others. A single broker (its metadata names no brokers) works
  // too: it leads every partition.
  constructor(bootstrap, { timeoutMs = 10000 } = {}) {
    this.bootstrap = endpointList(bootstrap);
    if (!this.bootstrap.length) throw new Error("no broker endpoint given");
    this.timeoutMs = timeoutMs;
    this.clients = new Map(); // endpoint -> RailClient: one DEALER per broker
    this.brokers = new Map(); // broker id -> api endpoint
    this.leaders = new Map(); // "topic/partition" -> api endpoint of its leader
    this.partitionCounts = new Map(); // topic -> partition count
    this.refreshing = null; // the metadata request in progress, shared by every waiter
    this.silentUntil = new Map(); // endpoint -> time before which it is asked last
    this.retries = new Map(); // error code -> how many times a batch was resent for it
  }

  client(endpoint) {
    let client = this.clients.get(endpoint);
    if (!client) {
      client = new RailClient(endpoint, { timeoutMs: this.timeoutMs });
      this.clients.set(endpoint, client);
    }
    return client;
  }

  // A broker that did not answer in time: close its socket, so that a reply still on
  // its way (or the broker coming back on the same port) never meets a later request.
  drop(endpoint) {
    const client = this.clients.get(endpoint);
    if (client) {
      this.clients.delete(endpoint);
      client.close();
    }
  }

  // Fresh metadata for `topics`, from the known brokers first, then the bootstrap list.
  // Concurrent callers share one request.
  refresh(topics) {
    if (!this.refreshing) {
      this.refreshing = this.askMetadata(topics).finally(() => { this.refreshing = null; });
    }
    return this.refreshing;
  }

  // Every broker known, from metadata and the bootstrap list. Those that did not answer
  // lately go last: a killed broker stays in metadata until its ZooKeeper session
  // expires, and each try at it costs a timeout.
  candidates() {
    const now = Date.now();
    const known = [...new Set([...this.brokers.values(), ...this.bootstrap])];
    return [...known.filter((e) => !(this.silentUntil.get(e) > now)),
      ...known.filter((e) => this.silentUntil.get(e) > now)];
  }

  // No answer from `endpoint` in time: close its socket and ask it last for a while.
  silent(endpoint) {
    this.drop(endpoint);
    this.silentUntil.set(endpoint, Date.now() + SILENT_MS);
  }

  // The leader of `tp` as last learned, unless it did not answer lately: metadata names a
  // killed leader until its ZooKeeper session expires, and a request to it costs a timeout.
  leaderOf(tp) {
    const leader = this.leaders.get(tp);
    return leader && !(this.silentUntil.get(leader) > Date.now()) ? leader : undefined;
  }

  async askMetadata(topics) {
    const candidates = this.candidates();
    let lastError = null;
    for (const endpoint of candidates) {
      let reply;
      try {
        reply = await this.client(endpoint).request("metadata", { topics }, { timeoutMs: METADATA_TIMEOUT_MS });
      } catch (err) {
        if (err instanceof RailError && !["TIMEOUT", "DISCONNECTED", "CLOSED"].includes(err.code)) throw err;
        this.silent(endpoint);
        lastError = err;
        continue;
      }
      this.learn(reply, endpoint);
      return reply;
    }
    throw new RailError("UNAVAILABLE",
      `no broker answered metadata (${candidates.join(", ")}): ${lastError?.message ?? "none tried"}`);
  }

  learn(reply, answeredBy) {
    if (reply.brokers.length) {
      this.brokers = new Map(reply.brokers.map((b) => [b.id, b.api]));
    }
    for (const topic of reply.topics) {
      this.partitionCounts.set(topic.name, topic.partitions.length);
      for (const part of topic.partitions) {
        const tp = `${topic.name}/${part.partition}`;
        // A single broker (no brokers listed) leads everything; in a cluster leader -1,
        // or a broker not registered (any more), means "no leader now".
        const api = reply.brokers.length ? this.brokers.get(part.leader) : answeredBy;
        if (api) this.leaders.set(tp, api);
        else this.leaders.delete(tp);
      }
    }
  }

  async partitionCount(topic) {
    if (!this.partitionCounts.has(topic)) await this.refresh([topic]);
    return this.partitionCounts.get(topic);
  }

  // Append `records` to one partition, at its leader, idempotently: the same batch goes
  // again, with the same producer_id and sequence, after a refusal in LEADER_MOVED or no
  // reply, to wherever fresh metadata says the leader is, until `deadlineMs` has passed.
  // The leader that took it before the failover replicated its producer state with the
  // batch, so a resend of a stored batch is answered `duplicate: true` with its original
  // offsets (§8) instead of being stored twice. Resolves with the produce reply.
  async produce(topic, partition, records, { acks = "all", producerId, sequence, deadlineMs = 60000 }) {
    const tp = `${topic}/${partition}`;
    const deadline = Date.now() + deadlineMs;
    let last = null;
    while (Date.now() < deadline) {
      const leader = this.leaderOf(tp);
      if (!leader) {
        try {
          await this.refresh([topic]);
        } catch (err) {
          if (!(err instanceof RailError) || err.code !== "UNAVAILABLE") throw err;
          last = err;
        }
        if (!this.leaderOf(tp)) await sleep(RETRY_MS);
        continue;
      }
      try {
        return await this.client(leader).request("produce", {
          topic, partition, records, acks, producer_id: producerId, sequence,
        }, { timeoutMs: Math.max(1, Math.min(this.timeoutMs, deadline - Date.now())) });
      } catch (err) {
        if (!(err instanceof RailError) || !(LEADER_MOVED.has(err.code) || err.code === "CLOSED")) throw err;
        last = err;
        this.retries.set(err.code, (this.retries.get(err.code) ?? 0) + 1);
        if (err.code === "TIMEOUT" || err.code === "DISCONNECTED") this.silent(leader);
        if (this.leaders.get(tp) === leader) this.leaders.delete(tp);
        await sleep(RETRY_MS);
      }
    }
    throw new RailError("TIMEOUT", `${tp}: no leader acknowledged the batch (sequence ${sequence}) ` +
      `within ${deadlineMs} ms; last: ${last?.message ?? "none"}`);
  }

  // The API endpoint of `group`'s coordinator (§6.20), from the first broker that names
  // one; NOT_COORDINATOR when none does now (its offsets partition has no leader yet).
  async findCoordinator(group) {
    let lastError = null;
    for (const endpoint of this.candidates()) {
      try {
        const reply = await this.client(endpoint).request("find_coordinator", { group },
          { timeoutMs: METADATA_TIMEOUT_MS });
        return reply.api;
      } catch (err) {
        if (!(err instanceof RailError)) throw err;
        if (err.code === "TIMEOUT" || err.code === "DISCONNECTED") this.silent(endpoint);
        else if (err.code === "DISCONNECTED") this.silent(endpoint);
        else if (err.code !== "NOT_COORDINATOR" && err.code !== "CLOSED") throw err;
        lastError = err;
      }
    }
    throw new RailError("NOT_COORDINATOR", `no broker named the coordinator of ${group}: ` +
      `${lastError?.message ?? "none asked"}`);
  }

  close() {
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
  }
}

module.exports = {
  RailClient, RailCluster, RailError, recordsOf, toJSON, endpointList, partitionForKey, newProducerId,
};
