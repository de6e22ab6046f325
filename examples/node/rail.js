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

module.exports = { RailClient, RailError, recordsOf, toJSON };
