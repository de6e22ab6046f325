/* Send events with a msgpack `produce` request and read the acknowledgement
 * (docs/protocol.md §2.1, §3, §4.1, §6.1), with libzmq and msgpack-c.
 *
 *   ./producer_request [-e tcp://127.0.0.1:7400] [-k KEY] [-a 1|all] [-t TIMEOUT_MS]
 *                      TOPIC VALUE [VALUE...]
 *
 * All VALUEs go in one request, as the records [VALUE] or [VALUE, KEY] (msgpack str). The
 * reply's `offsets` say where they were stored: one [partition, base_offset, count] per
 * partition. Exit 0 when acknowledged, 1 on an error reply, 3 on no reply: none in time,
 * or the connection dropped while the request was out (the broker stopped or died: its
 * reply cannot come, so this says so at once rather than waiting the timeout out, §2.1).
 */
#include <errno.h>
#include <inttypes.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <zmq.h>

static int usage(const char *argv0) {
    fprintf(stderr, "usage: %s [-e ENDPOINT] [-k KEY] [-a 1|all] [-t TIMEOUT_MS] TOPIC VALUE [VALUE...]\n", argv0);
    return 2;
}

static void pack_str(msgpack_packer *pk, const char *s) {
    size_t n = strlen(s);
    msgpack_pack_str(pk, n);
    msgpack_pack_str_body(pk, s, n);
}

/* The value of `name` in a msgpack map, or NULL. */
static const msgpack_object *map_get(const msgpack_object *map, const char *name) {
    if (map->type != MSGPACK_OBJECT_MAP) return NULL;
    size_t n = strlen(name);
    for (uint32_t i = 0; i < map->via.map.size; i++) {
        const msgpack_object *k = &map->via.map.ptr[i].key;
        if (k->type == MSGPACK_OBJECT_STR && k->via.str.size == n && memcmp(k->via.str.ptr, name, n) == 0)
            return &map->via.map.ptr[i].val;
    }
    return NULL;
}

static int is_str(const msgpack_object *o, const char *s) {
    return o && o->type == MSGPACK_OBJECT_STR && o->via.str.size == strlen(s) &&
           memcmp(o->via.str.ptr, s, o->via.str.size) == 0;
}

/* msgpack integers decode as POSITIVE_INTEGER (uint64) or NEGATIVE_INTEGER (int64). */
static int get_int(const msgpack_object *o, int64_t *out) {
    if (!o) return 0;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) { *out = (int64_t)o->via.u64; return 1; }
    if (o->type == MSGPACK_OBJECT_NEGATIVE_INTEGER) { *out = o->via.i64; return 1; }
    return 0;
}

static void print_str(FILE *f, const msgpack_object *o) {
    if (o && o->type == MSGPACK_OBJECT_STR) fprintf(f, "%.*s", (int)o->via.str.size, o->via.str.ptr);
    else fprintf(f, "?");
}

int main(int argc, char **argv) {
    const char *endpoint = getenv("RAIL_BROKER") ? getenv("RAIL_BROKER") : "tcp://127.0.0.1:7400";
    const char *key = NULL;
    const char *acks = "1";
    int timeout_ms = 10000;
    int opt;
    while ((opt = getopt(argc, argv, "e:k:a:t:h")) != -1) {
        switch (opt) {
        case 'e': endpoint = optarg; break;
        case 'k': key = optarg; break;
        case 'a': acks = optarg; break;
        case 't': timeout_ms = atoi(optarg); break;
        default: return usage(argv[0]);
        }
    }
    if (argc - optind < 2 || (strcmp(acks, "1") != 0 && strcmp(acks, "all") != 0)) return usage(argv[0]);
    const char *topic = argv[optind];
    int nvalues = argc - optind - 1;

    /* A distinct, non-zero id, echoed in the reply (§3.2). */
    uint64_t id = ((uint64_t)time(NULL) << 20) ^ (uint64_t)getpid();
    if (id == 0) id = 1;

    /* {"op": "produce", "id": id, "topic": topic, "records": [[value, key?], ...], "acks": …} */
    msgpack_sbuffer body;
    msgpack_sbuffer_init(&body);
    msgpack_packer pk;
    msgpack_packer_init(&pk, &body, msgpack_sbuffer_write);
    msgpack_pack_map(&pk, 5);
    pack_str(&pk, "op");      pack_str(&pk, "produce");
    pack_str(&pk, "id");      msgpack_pack_uint64(&pk, id);
    pack_str(&pk, "topic");   pack_str(&pk, topic);
    pack_str(&pk, "acks");
    if (strcmp(acks, "all") == 0) pack_str(&pk, "all"); else msgpack_pack_int(&pk, 1);
    pack_str(&pk, "records");
    msgpack_pack_array(&pk, (size_t)nvalues);
    for (int i = optind + 1; i < argc; i++) {
        msgpack_pack_array(&pk, key ? 2 : 1); /* a record: [value] or [value, key] (§4.1) */
        pack_str(&pk, argv[i]);
        if (key) pack_str(&pk, key);
    }

    void *ctx = zmq_ctx_new();
    void *sock = zmq_socket(ctx, ZMQ_DEALER);
    int linger = 0;
    zmq_setsockopt(sock, ZMQ_LINGER, &linger, sizeof linger);
    int status = 0;
    void *events = NULL; /* connection events, once watched */
    if (zmq_connect(sock, endpoint) != 0) {
        fprintf(stderr, "producer_request: cannot connect to %s: %s\n", endpoint, zmq_strerror(errno));
        status = 1;
        goto done;
    }
    /* Connection events on a PAIR socket: a drop ends the wait (§2.1, "Connections"). */
    char monitor[64];
    snprintf(monitor, sizeof monitor, "inproc://producer-request-%d", (int)getpid());
    if (zmq_socket_monitor(sock, monitor, ZMQ_EVENT_DISCONNECTED) == 0) {
        events = zmq_socket(ctx, ZMQ_PAIR);
        zmq_setsockopt(events, ZMQ_LINGER, &linger, sizeof linger);
        if (zmq_connect(events, monitor) != 0) {
            zmq_close(events);
            events = NULL;
        }
    }
    /* A DEALER sends the body as a single frame and gets the reply as a single frame. */
    if (zmq_send(sock, body.data, body.size, 0) < 0) {
        fprintf(stderr, "producer_request: zmq_send: %s\n", zmq_strerror(errno));
        status = 1;
        goto done;
    }

    /* Wait for the reply with our id; always with a timeout (§2.1, §18). */
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long elapsed = (now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000;
        zmq_pollitem_t items[2] = {{sock, 0, ZMQ_POLLIN, 0}, {events, 0, ZMQ_POLLIN, 0}};
        if (elapsed >= timeout_ms || zmq_poll(items, events ? 2 : 1, timeout_ms - elapsed) <= 0) {
            fprintf(stderr, "producer_request: no reply from %s in %d ms\n", endpoint, timeout_ms);
            status = 3;
            goto done;
        }
        if (events && (items[1].revents & ZMQ_POLLIN) && !(items[0].revents & ZMQ_POLLIN)) {
            /* The only event asked for: a connection that was up dropped. (A monitor event
             * is two frames, the event and the endpoint; no need to read them.) */
            fprintf(stderr, "producer_request: the connection to %s dropped before the reply: "
                            "the events may or may not be stored\n", endpoint);
            status = 3;
            goto done;
        }
        if (!(items[0].revents & ZMQ_POLLIN)) continue;
        zmq_msg_t msg;
        zmq_msg_init(&msg);
        if (zmq_msg_recv(&msg, sock, 0) < 0) {
            zmq_msg_close(&msg);
            continue;
        }
        msgpack_unpacked reply;
        msgpack_unpacked_init(&reply);
        size_t off = 0;
        int ok = msgpack_unpack_next(&reply, zmq_msg_data(&msg), zmq_msg_size(&msg), &off) == MSGPACK_UNPACK_SUCCESS;
        const msgpack_object *root = ok ? &reply.data : NULL;
        int64_t reply_id = 0;
        if (!root || !get_int(map_get(root, "id"), &reply_id) || (uint64_t)reply_id != id) {
            /* not ours (or not readable): keep waiting for our reply */
            msgpack_unpacked_destroy(&reply);
            zmq_msg_close(&msg);
            continue;
        }
        const msgpack_object *op = map_get(root, "op");
        if (is_str(op, "error")) {
            fprintf(stderr, "producer_request: error ");
            print_str(stderr, map_get(root, "code"));
            fprintf(stderr, ": ");
            print_str(stderr, map_get(root, "message"));
            fprintf(stderr, "\n");
            status = 1;
        } else if (is_str(op, "produce")) {
            const msgpack_object *offsets = map_get(root, "offsets");
            printf("producer_request: %d event(s) stored in %s:", nvalues, topic);
            for (uint32_t i = 0; offsets && offsets->type == MSGPACK_OBJECT_ARRAY && i < offsets->via.array.size; i++) {
                const msgpack_object *entry = &offsets->via.array.ptr[i];
                int64_t partition, base, count;
                if (entry->type == MSGPACK_OBJECT_ARRAY && entry->via.array.size == 3 &&
                    get_int(&entry->via.array.ptr[0], &partition) &&
                    get_int(&entry->via.array.ptr[1], &base) && get_int(&entry->via.array.ptr[2], &count))
                    printf(" partition %" PRId64 " offsets %" PRId64 "-%" PRId64 ";", partition, base, base + count - 1);
            }
            printf("\n");
        } else {
            fprintf(stderr, "producer_request: unexpected reply op ");
            print_str(stderr, op);
            fprintf(stderr, "\n");
            status = 1;
        }
        msgpack_unpacked_destroy(&reply);
        zmq_msg_close(&msg);
        break;
    }
done:
    if (events) zmq_close(events);
    zmq_close(sock);
    zmq_ctx_term(ctx);
    msgpack_sbuffer_destroy(&body);
    return status;
}
