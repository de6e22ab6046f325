// A consumer-group member in a cluster (docs/cluster.md, "Consumer groups"), for worker.js.
//
// In a cluster the group's coordinator (the leader of the group's partition of the internal
// offsets topic, named by `find_coordinator`) takes `join`, `heartbeat`, `describe_group`,
// `commit` and `leave`; `poll` is BAD_REQUEST there, because the data does not go through
// the coordinator: the member keeps its positions itself, starting at the committed offsets
// (`describe_group`), and `fetch`es each partition it owns from that partition's leader.
//
// When the coordinator moves (NOT_COORDINATOR, COORDINATOR_LOADING, no answer) or forgets
// the member (NOT_MEMBER: membership is not replicated), the member finds the coordinator
// again and rejoins; it then forgets what it handled and did not commit, and reads again
// from the committed offsets: at least once, and no commit from before the rejoin is sent
// after it. A fetch refused by a broker that no longer leads, or unanswered, waits for
// metadata that names the new leader.

"use strict";

const { RailCluster, RailError, recordsOf } = require("./rail");

const CALL_TIMEOUT_MS = 3000; // one attempt at the coordinator or a leader
const FETCH_WAIT_MS = 500; // how long a fetch stays parked at a leader with nothing new
const RETRY_MS = 200;
// The coordinator is elsewhere, or not ready yet, or the member must join again
// (STORAGE_ERROR: the coordinator's disk refused the commit and it has withdrawn).
const REJOIN = new Set(["NOT_COORDINATOR", "COORDINATOR_LOADING", "NOT_MEMBER", "TIMEOUT",
  "DISCONNECTED", "CLOSED", "STORAGE_ERROR"]);
// A fetch refused for these waits for metadata that names the partition's leader.
const LEADER_GONE = new Set(["NOT_LEADER", "FENCED_LEADER_EPOCH", "UNKNOWN_LEADER_EPOCH",
  "UNKNOWN_TOPIC", "UNKNOWN_PARTITION", "TIMEOUT", "DISCONNECTED", "CLOSED"]);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const tpOf = (topic, partition) => `${topic}/${partition}`;

class ClusterMember {
  constructor(bootstrap, { group, topics, sessionTimeoutMs, clientId, start, log }) {
    this.cluster = new RailCluster(bootstrap, { timeoutMs: CALL_TIMEOUT_MS });
    Object.assign(this, { group, topics, sessionTimeoutMs, clientId, start, log });
    this.coordinator = null; // the coordinator's API endpoint, once found
    this.memberId = undefined;
    this.generation = -1;
    this.assignment = []; // [[topic, partition], ...]
    this.heartbeatMs = 1000;
    this.heartbeatAt = 0;
    this.positions = new Map(); // "topic/partition" -> next offset to fetch
    this.toCommit = new Map(); // "topic/partition" -> next offset, handled and not committed
  }

  owns(topic, partition) {
    return this.assignment.some(([t, p]) => t === topic && p === partition);
  }

  // One request to the coordinator; a refusal in REJOIN forgets it (found again at the join).
  async atCoordinator(op, fields) {
    if (!this.coordinator) this.coordinator = await this.cluster.findCoordinator(this.group);
    const coordinator = this.coordinator;
    try {
      return await this.cluster.client(coordinator).request(op, { group: this.group, ...fields },
        { timeoutMs: CALL_TIMEOUT_MS });
    } catch (err) {
      if (err instanceof RailError && REJOIN.has(err.code) && err.code !== "NOT_MEMBER") {
        if (err.code === "TIMEOUT" || err.code === "DISCONNECTED") this.cluster.silent(coordinator);
        this.coordinator = null;
      }
      throw err;
    }
  }

  // Join (again) at the coordinator, finding it first, until `deadline`.
  async join(deadline) {
    this.positions.clear();
    this.toCommit.clear();
    for (;;) {
      try {
        const reply = await this.atCoordinator("join", {
          topics: this.topics, member_id: this.memberId, session_timeout_ms: this.sessionTimeoutMs,
          start: this.start, client_id: this.clientId,
        });
        this.memberId = reply.member_id;
        this.heartbeatMs = reply.heartbeat_interval_ms;
        this.heartbeatAt = Date.now() + this.heartbeatMs;
        this.adopt(reply, true);
        this.log(`joined ${this.group} at ${this.coordinator} as ${this.memberId}, ` +
          `generation ${reply.generation}, assignment ${JSON.stringify(reply.assignment)}`);
        return;
      } catch (err) {
        if (!(err instanceof RailError) || !REJOIN.has(err.code) || Date.now() > deadline) throw err;
        await sleep(RETRY_MS);
      }
    }
  }

  adopt(reply, joined = false) {
    if (!joined && reply.generation !== this.generation) {
      this.log(`generation ${reply.generation}: assignment ${JSON.stringify(reply.assignment)}`);
    }
    this.generation = reply.generation;
    this.assignment = reply.assignment;
    for (const tp of [...this.positions.keys()]) {
      const slash = tp.lastIndexOf("/");
      if (!this.owns(tp.slice(0, slash), Number(tp.slice(slash + 1)))) this.positions.delete(tp);
    }
  }

  async heartbeatIfDue() {
    if (Date.now() < this.heartbeatAt) return;
    this.heartbeatAt = Date.now() + this.heartbeatMs;
    this.adopt(await this.atCoordinator("heartbeat", { member_id: this.memberId }));
  }

  // Where each owned partition without a position starts: its committed offset, else its
  // start or end (`start`), asked of its leader.
  async findPositions() {
    const missing = this.assignment.filter(([t, p]) => !this.positions.has(tpOf(t, p)));
    if (!missing.length) return;
    const described = await this.atCoordinator("describe_group", {});
    const committed = new Map(described.partitions.map((gp) => [tpOf(gp.topic, gp.partition), gp.committed]));
    for (const [topic, partition] of missing) {
      const offset = committed.get(tpOf(topic, partition));
      if (offset !== null && offset !== undefined) {
        this.positions.set(tpOf(topic, partition), offset);
        continue;
      }
      const reply = await this.atLeader(topic, partition, "list_offsets",
        { timestamp: this.start === "latest" ? -1 : -2 });
      if (reply) this.positions.set(tpOf(topic, partition), reply.offset);
    }
  }

  // One request to a partition's leader; null when the leader is unknown or moved (the
  // next round asks metadata again).
  async atLeader(topic, partition, op, fields, timeoutMs = CALL_TIMEOUT_MS) {
    const tp = tpOf(topic, partition);
    const leader = this.cluster.leaderOf(tp);
    if (!leader) {
      await this.cluster.refresh(this.topics).catch(() => {});
      if (!this.cluster.leaderOf(tp)) await sleep(RETRY_MS);
      return null;
    }
    try {
      return await this.cluster.client(leader).request(op, { topic, partition, ...fields }, { timeoutMs });
    } catch (err) {
      if (!(err instanceof RailError) || !LEADER_GONE.has(err.code)) throw err;
      if (err.code === "TIMEOUT" || err.code === "DISCONNECTED") this.cluster.silent(leader);
      if (this.cluster.leaders.get(tp) === leader) this.cluster.leaders.delete(tp);
      await sleep(RETRY_MS);
      return null;
    }
  }

  // The next events of the owned partitions: one fetch per partition, at its leader, at
  // once. Each event is {topic, partition, offset, value, key, headers, timestamp}.
  async fetch() {
    const owned = this.assignment.filter(([t, p]) => this.positions.has(tpOf(t, p)));
    if (!owned.length) {
      await sleep(RETRY_MS);
      return [];
    }
    const replies = await Promise.all(owned.map(([topic, partition]) => this.atLeader(
      topic, partition, "fetch", { offset: this.positions.get(tpOf(topic, partition)), max_wait_ms: FETCH_WAIT_MS },
      FETCH_WAIT_MS + CALL_TIMEOUT_MS).catch((err) => {
      if (err instanceof RailError && err.code === "OFFSET_OUT_OF_RANGE") {
        // Records deleted under us (retention, delete_records): start within the log again.
        this.positions.delete(tpOf(topic, partition));
        return null;
      }
      throw err;
    })));
    const events = [];
    replies.forEach((reply, i) => {
      const [topic, partition] = owned[i];
      if (!reply || this.positions.get(tpOf(topic, partition)) !== reply.offset) return;
      for (const event of recordsOf(reply.batches, reply.offset)) {
        events.push({ topic, partition, ...event });
        this.positions.set(tpOf(topic, partition), event.offset + 1);
      }
    });
    return events;
  }

  handled(event) {
    this.toCommit.set(tpOf(event.topic, event.partition), event.offset + 1);
  }

  // Commit the next offsets of what was handled, for the partitions still owned (§9.4).
  async commit() {
    const offsets = [];
    for (const [tp, next] of this.toCommit) {
      const slash = tp.lastIndexOf("/");
      const [topic, partition] = [tp.slice(0, slash), Number(tp.slice(slash + 1))];
      if (this.owns(topic, partition)) offsets.push([topic, partition, next]);
    }
    this.toCommit.clear();
    if (!offsets.length) return;
    try {
      await this.atCoordinator("commit", { member_id: this.memberId, offsets });
    } catch (err) {
      if (!(err instanceof RailError) || err.code !== "STALE_GENERATION") throw err;
      // A rebalance not seen yet: learn the assignment, commit what is still ours.
      this.adopt(await this.atCoordinator("heartbeat", { member_id: this.memberId }));
      const still = offsets.filter(([t, p]) => this.owns(t, p));
      if (still.length) await this.atCoordinator("commit", { member_id: this.memberId, offsets: still });
    }
  }

  // Run `step` (a round of work at the coordinator and the leaders); a refusal that means
  // "join again" rejoins (until `deadline`) and returns false.
  async guard(step, deadline) {
    try {
      await step();
      return true;
    } catch (err) {
      if (!(err instanceof RailError) || !REJOIN.has(err.code)) throw err;
      this.log(`${err.code}: finding the coordinator and joining again ` +
        "(what was handled and not committed comes again)");
      await this.join(deadline);
      return false;
    }
  }

  async leave() {
    if (this.memberId === undefined) return;
    await this.atCoordinator("leave", { member_id: this.memberId });
  }

  close() {
    this.cluster.close();
  }
}

module.exports = { ClusterMember };
