/* Send events to Rail's raw ingest socket with libzmq alone (docs/protocol.md §14).
 *
 *   ./producer_ingest [-e tcp://127.0.0.1:7401] [-k KEY] TOPIC VALUE [VALUE...]
 *
 * Each VALUE becomes one multipart message on a PUSH socket: [TOPIC, VALUE], or
 * [TOPIC, KEY, VALUE] with -k. Frames are raw bytes, no msgpack; the broker stores them as
 * the record [VALUE] or [VALUE, KEY] (both as msgpack bin). There is no reply: the ingest
 * socket is fire-and-forget. Use producer_request when you need to know a record is stored.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

static int usage(const char *argv0) {
    fprintf(stderr, "usage: %s [-e ENDPOINT] [-k KEY] [-l LINGER_MS] TOPIC VALUE [VALUE...]\n", argv0);
    return 2;
}

static int send_frame(void *sock, const char *data, int more) {
    if (zmq_send(sock, data, strlen(data), more ? ZMQ_SNDMORE : 0) < 0) {
        fprintf(stderr, "producer_ingest: zmq_send: %s\n", zmq_strerror(errno));
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    const char *endpoint = getenv("RAIL_INGEST") ? getenv("RAIL_INGEST") : "tcp://127.0.0.1:7401";
    const char *key = NULL;
    int linger_ms = 5000;
    int opt;
    while ((opt = getopt(argc, argv, "e:k:l:h")) != -1) {
        switch (opt) {
        case 'e': endpoint = optarg; break;
        case 'k': key = optarg; break;
        case 'l': linger_ms = atoi(optarg); break;
        default: return usage(argv[0]);
        }
    }
    if (argc - optind < 2) return usage(argv[0]);
    const char *topic = argv[optind];

    void *ctx = zmq_ctx_new();
    void *sock = zmq_socket(ctx, ZMQ_PUSH);
    /* PUSH queues messages until the connection is up. The linger is how long closing
     * waits for queued messages to leave: 0 would drop them, and the default (-1) would
     * hang forever when no broker is listening. */
    zmq_setsockopt(sock, ZMQ_LINGER, &linger_ms, sizeof linger_ms);
    if (zmq_connect(sock, endpoint) != 0) {
        fprintf(stderr, "producer_ingest: cannot connect to %s: %s\n", endpoint, zmq_strerror(errno));
        zmq_close(sock);
        zmq_ctx_term(ctx);
        return 1;
    }
    int sent = 0, status = 0;
    for (int i = optind + 1; i < argc && status == 0; i++) {
        if (send_frame(sock, topic, 1) || (key && send_frame(sock, key, 1)) || send_frame(sock, argv[i], 0))
            status = 1;
        else
            sent++;
    }
    zmq_close(sock);
    zmq_ctx_term(ctx); /* returns once the queue is flushed, or after the linger */
    printf("producer_ingest: pushed %d event(s) to %s on %s (no acknowledgement on this socket)\n",
           sent, topic, endpoint);
    return status;
}
