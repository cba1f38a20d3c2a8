// Ground-truth SSE server driven entirely by io_uring: the fixture for capturing servers that
// never make a read/write/send/recv syscall on their sockets (the agent's syscall tracepoints see
// only io_uring_enter). Speaks the protocol of tests/servers/README.md and writes the same truth
// JSONL (server "uring"), mirroring testbed/src/proto.rs byte for byte.
//
// One thread, one ring. Accepting, receiving, sending, sleeping (IORING_OP_TIMEOUT, relative,
// CLOCK_MONOTONIC hrtimers, so a sleep is never shorter than asked), shutdown and close are all
// io_uring operations; each connection has exactly one operation in flight, so several
// connections stream at once. Every logical write is one IORING_OP_SEND, submitted on its own
// (one io_uring_enter) right after its CLOCK_MONOTONIC stamp. Accepted sockets get TCP_NODELAY,
// like the Rust server. A short send (never seen on loopback) is completed with another send,
// counted in /stats and warned about on stderr.
//
// The only plain syscalls that move bytes are the `LISTENING <port>` line on stdout and one
// write() per truth record on the truth file. SIGTERM/SIGINT exit 0.
//
// build: cc -O2 -o uring_sse uring_sse.c -luring      (Debian: liburing-dev)
// usage: uring_sse [--port P] [--truth FILE]
#define _GNU_SOURCE  // memmem
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SERVER_NAME "uring"
#define STREAM_PREFIX "/v1/chat/completions"
#define MAX_HEAD 65536
#define MAX_BODY (16L * 1024 * 1024)
#define MAX_TOKENS 1000000L
#define PROMPT_TOKENS 5
#define SPLIT_GAP_NS 1000000ULL
#define RING_ENTRIES 1024
#define ROLE_JSON "{\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}"
#define COMMENT_TEXT ": keep-alive"

static struct io_uring ring;
static int truth_fd = -1;
// Send operations ever made on client sockets, for GET /stats (which does not count itself).
static unsigned long long writes_total;

static uint64_t monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

// ------------------------------------------------------------------ growable byte buffer

struct buf {
    char *p;
    size_t len, cap;
};

static void buf_put(struct buf *b, const void *data, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n) cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p) abort();
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void buf_str(struct buf *b, const char *s) { buf_put(b, s, strlen(s)); }

__attribute__((format(printf, 2, 3))) static void buf_fmt(struct buf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (n < 0) abort();
    if ((size_t)n < sizeof tmp) {
        buf_put(b, tmp, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    buf_put(b, big, (size_t)n);
    free(big);
}

// JSON string literal (quotes included).
static void buf_json_str(struct buf *b, const char *s, size_t n) {
    buf_str(b, "\"");
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            buf_put(b, e, 2);
        } else if (c < 0x20) {
            buf_fmt(b, "\\u%04x", c);
        } else {
            buf_put(b, &s[i], 1);
        }
    }
    buf_str(b, "\"");
}

// ------------------------------------------------------------------ protocol (mirrors proto.rs)

enum framing { CHUNKED, CLOSE, JSON };

struct params {
    long tokens, batch;
    double interval_ms, prefill_ms;
    enum framing framing;
    const char *eol;
    int split, coalesce, comments, usage, done;
};

// One write of the response: sleep delay_ns, then these exact bytes in one send.
struct step {
    uint64_t delay_ns;
    char *bytes;
    size_t len;
    unsigned content_events;
};

struct plan {
    struct step *steps;
    size_t n, cap;
};

static void plan_push(struct plan *pl, uint64_t delay_ns, struct buf *bytes, unsigned content_events) {
    if (pl->n == pl->cap) {
        pl->cap = pl->cap ? pl->cap * 2 : 16;
        pl->steps = realloc(pl->steps, pl->cap * sizeof *pl->steps);
        if (!pl->steps) abort();
    }
    pl->steps[pl->n++] = (struct step){delay_ns, bytes->p, bytes->len, content_events};
    *bytes = (struct buf){0};
}

static void plan_free(struct plan *pl) {
    for (size_t i = 0; i < pl->n; i++) free(pl->steps[i].bytes);
    free(pl->steps);
    *pl = (struct plan){0};
}

static uint64_t ms_to_ns(double ms) { return (uint64_t)(ms * 1e6); }

// Error text for a 400, in the Rust server's words (`bad tokens "x"`).
static char bad_param[256];

static int bad(const char *key, const char *v, size_t vn) {
    snprintf(bad_param, sizeof bad_param, "bad %s \"%.*s\"", key, (int)(vn > 100 ? 100 : vn), v);
    return -1;
}

static int parse_count(const char *key, const char *v, size_t n, long min, long *out) {
    if (n == 0 || n > 10) return bad(key, v, n);
    long x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return bad(key, v, n);
        x = x * 10 + (v[i] - '0');
    }
    if (x < min || x > MAX_TOKENS) return bad(key, v, n);
    *out = x;
    return 0;
}

static int parse_ms(const char *key, const char *v, size_t n, double *out) {
    char tmp[64];
    if (n == 0 || n >= sizeof tmp) return bad(key, v, n);
    memcpy(tmp, v, n);
    tmp[n] = 0;
    char *end;
    double x = strtod(tmp, &end);
    if (*end || !isfinite(x) || x < 0) return bad(key, v, n);
    *out = x;
    return 0;
}

static int parse_bool(const char *key, const char *v, size_t n, int *out) {
    if ((n == 1 && *v == '1') || (n == 4 && !memcmp(v, "true", 4))) *out = 1;
    else if ((n == 1 && *v == '0') || (n == 5 && !memcmp(v, "false", 5))) *out = 0;
    else return bad(key, v, n);
    return 0;
}

static int eq(const char *s, size_t n, const char *lit) { return strlen(lit) == n && !memcmp(s, lit, n); }

// Parses `a=1&b=2`; unknown keys are ignored, malformed values fail (the caller answers 400).
static int parse_params(const char *q, size_t qn, struct params *p) {
    *p = (struct params){.tokens = 16, .batch = 1, .interval_ms = 5.0, .prefill_ms = 20.0, .framing = CHUNKED,
                         .eol = "\n", .usage = 1, .done = 1};
    const char *end = q + qn;
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t)(end - q));
        const char *pe = amp ? amp : end;
        const char *eqs = memchr(q, '=', (size_t)(pe - q));
        const char *k = q, *v = eqs ? eqs + 1 : pe;
        size_t kn = (size_t)((eqs ? eqs : pe) - q), vn = (size_t)(pe - v);
        int r = 0;
        if (kn == 0) r = 0;
        else if (eq(k, kn, "tokens")) r = parse_count("tokens", v, vn, 0, &p->tokens);
        else if (eq(k, kn, "batch")) r = parse_count("batch", v, vn, 1, &p->batch);
        else if (eq(k, kn, "interval_ms")) r = parse_ms("interval_ms", v, vn, &p->interval_ms);
        else if (eq(k, kn, "prefill_ms")) r = parse_ms("prefill_ms", v, vn, &p->prefill_ms);
        else if (eq(k, kn, "framing")) {
            if (eq(v, vn, "chunked")) p->framing = CHUNKED;
            else if (eq(v, vn, "close")) p->framing = CLOSE;
            else if (eq(v, vn, "json")) p->framing = JSON;
            else r = bad("framing", v, vn);
        } else if (eq(k, kn, "eol")) {
            if (eq(v, vn, "lf")) p->eol = "\n";
            else if (eq(v, vn, "crlf")) p->eol = "\r\n";
            else if (eq(v, vn, "cr")) p->eol = "\r";
            else r = bad("eol", v, vn);
        } else if (eq(k, kn, "split")) r = parse_bool("split", v, vn, &p->split);
        else if (eq(k, kn, "coalesce")) r = parse_bool("coalesce", v, vn, &p->coalesce);
        else if (eq(k, kn, "comments")) r = parse_bool("comments", v, vn, &p->comments);
        else if (eq(k, kn, "usage")) r = parse_bool("usage", v, vn, &p->usage);
        else if (eq(k, kn, "done")) r = parse_bool("done", v, vn, &p->done);
        if (r) return r;
        q = pe + 1;
    }
    return 0;
}

static void sse_frame(struct buf *b, const char *data, size_t n, const char *eol) {
    buf_str(b, "data: ");
    buf_put(b, data, n);
    buf_str(b, eol);
    buf_str(b, eol);
}

static void usage_json(struct buf *b, long tokens) {
    buf_fmt(b, "{\"prompt_tokens\":%d,\"completion_tokens\":%ld,\"total_tokens\":%ld}", PROMPT_TOKENS, tokens,
            tokens + PROMPT_TOKENS);
}

// Wraps one write's payload in an HTTP chunk (chunked framing), so each send is one chunk.
static void wrap(struct buf *out, enum framing f, const char *payload, size_t n) {
    if (f == CHUNKED) buf_fmt(out, "%zx\r\n", n);
    buf_put(out, payload, n);
    if (f == CHUNKED) buf_str(out, "\r\n");
}

static void build_plan(const struct params *p, int client_close, struct plan *pl) {
    struct buf b = {0}, t = {0};
    const char *conn_hdr = client_close ? "close" : "keep-alive";
    if (p->framing == JSON) {
        buf_str(&t, "{\"id\":\"x\",\"object\":\"chat.completion\",\"choices\":[{\"index\":0,\"message\":{\"role\":"
                    "\"assistant\",\"content\":\"");
        for (long i = 0; i < p->tokens; i++) buf_fmt(&t, "tok%ld ", i);
        buf_str(&t, "\"},\"finish_reason\":\"stop\"}]");
        if (p->usage) {
            buf_str(&t, ",\"usage\":");
            usage_json(&t, p->tokens);
        }
        buf_str(&t, "}");
        buf_fmt(&b, "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %zu\r\nConnection: %s\r\n\r\n",
                t.len, conn_hdr);
        buf_put(&b, t.p, t.len);
        free(t.p);
        plan_push(pl, ms_to_ns(p->prefill_ms + (double)p->tokens * p->interval_ms), &b, 0);
        return;
    }
    enum framing f = p->framing;
    struct buf head = {0};
    if (f == CHUNKED)
        buf_fmt(&head, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                       "Transfer-Encoding: chunked\r\nConnection: %s\r\n\r\n", conn_hdr);
    else
        buf_str(&head, "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                       "Connection: close\r\n\r\n");
    struct buf role = {0};
    sse_frame(&role, ROLE_JSON, strlen(ROLE_JSON), p->eol);
    if (p->coalesce) {
        wrap(&head, f, role.p, role.len);
        plan_push(pl, 0, &head, 0);
    } else {
        plan_push(pl, 0, &head, 0);
        wrap(&b, f, role.p, role.len);
        plan_push(pl, 0, &b, 0);
    }
    free(role.p);

    size_t *frame_ends = malloc((size_t)p->batch * sizeof *frame_ends);
    for (long first = 0; first < p->tokens;) {
        long last = first + p->batch < p->tokens ? first + p->batch : p->tokens;
        struct buf payload = {0}, js = {0};
        size_t nf = 0;
        for (long i = first; i < last; i++) {
            js.len = 0;
            buf_fmt(&js, "{\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":"
                         "{\"content\":\"tok%ld \"}}]}", i);
            sse_frame(&payload, js.p, js.len, p->eol);
            frame_ends[nf++] = payload.len;
        }
        free(js.p);
#define EVENTS_IN(from, to)                                                          \
    ({                                                                               \
        unsigned c_ = 0;                                                             \
        for (size_t k_ = 0; k_ < nf; k_++) c_ += frame_ends[k_] > (from) && frame_ends[k_] <= (to); \
        c_;                                                                          \
    })
        uint64_t wait = ms_to_ns(first == 0 ? p->prefill_ms : p->interval_ms);
        if (p->comments) {
            // Halfway through the wait, so an agent counting it as a token is off by wait/2.
            uint64_t half = wait / 2;
            struct buf c = {0};
            buf_str(&c, COMMENT_TEXT);
            buf_str(&c, p->eol);
            buf_str(&c, p->eol);
            wrap(&b, f, c.p, c.len);
            free(c.p);
            plan_push(pl, half, &b, 0);
            wait -= half;
        }
        if (p->split) {
            size_t cut = payload.len / 2;
            wrap(&b, f, payload.p, cut);
            plan_push(pl, wait, &b, EVENTS_IN(0, cut));
            wrap(&b, f, payload.p + cut, payload.len - cut);
            plan_push(pl, SPLIT_GAP_NS, &b, EVENTS_IN(cut, payload.len));
        } else {
            wrap(&b, f, payload.p, payload.len);
            plan_push(pl, wait, &b, EVENTS_IN(0, payload.len));
        }
#undef EVENTS_IN
        free(payload.p);
        first = last;
    }
    free(frame_ends);

    // With no tokens at all the finish frame stands in for the first token's timing.
    uint64_t finish_delay = p->tokens == 0 ? ms_to_ns(p->prefill_ms) : 0;
    buf_str(&t, "{\"id\":\"x\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,\"delta\":{},"
                "\"finish_reason\":\"stop\"}]");
    if (p->usage) {
        buf_str(&t, ",\"usage\":");
        usage_json(&t, p->tokens);
    }
    buf_str(&t, "}");
    struct buf frame = {0};
    sse_frame(&frame, t.p, t.len, p->eol);
    wrap(&b, f, frame.p, frame.len);
    plan_push(pl, finish_delay, &b, 0);
    if (p->done) {
        frame.len = 0;
        sse_frame(&frame, "[DONE]", 6, p->eol);
        wrap(&b, f, frame.p, frame.len);
        plan_push(pl, 0, &b, 0);
    }
    free(frame.p);
    free(t.p);
    if (f == CHUNKED) {
        buf_str(&b, "0\r\n\r\n");
        plan_push(pl, 0, &b, 0);
    }
}

// ------------------------------------------------------------------ connections

enum op { OP_NONE, OP_RECV, OP_SEND, OP_TIMEOUT, OP_SHUTDOWN, OP_CLOSE };

struct truth_write {
    uint64_t ts_ns;
    size_t bytes;
    unsigned content_events;
};

struct conn {
    int fd;
    enum op op;
    char buf[MAX_HEAD];
    size_t have;      // bytes in buf
    long body_left;   // request body bytes still to discard (reading the body when > 0)
    // The request being answered.
    char method[16], target[1024], path[1024], id[1024];
    size_t target_len;
    int client_close, keep_alive;
    int record;        // write a truth record when the response is out
    int count_writes;  // count its sends for /stats
    long tokens;       // the record's "tokens" (usage=1), -1 for null
    uint64_t request_ns;
    struct plan plan;
    size_t step;      // next step of the plan
    size_t sent;      // bytes of the current step already sent (short sends)
    int waited;       // the current step's delay has elapsed
    struct truth_write *writes;
    struct __kernel_timespec ts;  // a timeout's duration, read by the kernel at submission
};

// user_data of the accept operation and of the accept back-off timeout.
static char accept_tag, accept_backoff_tag;
static int listen_fd;
static struct __kernel_timespec backoff_ts = {0, 10000000};

static struct io_uring_sqe *sqe_get(void) {
    struct io_uring_sqe *sqe;
    while (!(sqe = io_uring_get_sqe(&ring))) io_uring_submit(&ring);
    return sqe;
}

static void arm_accept(void) {
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_accept(sqe, listen_fd, NULL, NULL, 0);
    io_uring_sqe_set_data(sqe, &accept_tag);
}

static void arm_recv(struct conn *c) {
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_recv(sqe, c->fd, c->buf + c->have, sizeof c->buf - c->have, 0);
    io_uring_sqe_set_data(sqe, c);
    c->op = OP_RECV;
}

static void arm_close(struct conn *c, int shutdown_first) {
    struct io_uring_sqe *sqe = sqe_get();
    if (shutdown_first) {
        io_uring_prep_shutdown(sqe, c->fd, SHUT_WR);
        c->op = OP_SHUTDOWN;
    } else {
        io_uring_prep_close(sqe, c->fd);
        c->op = OP_CLOSE;
    }
    io_uring_sqe_set_data(sqe, c);
}

static void conn_free(struct conn *c) {
    plan_free(&c->plan);
    free(c->writes);
    free(c);
}

// Sends step `c->step` (or its unsent rest), stamped and submitted on its own.
static void send_step(struct conn *c) {
    struct step *s = &c->plan.steps[c->step];
    struct io_uring_sqe *sqe = sqe_get();
    io_uring_prep_send(sqe, c->fd, s->bytes + c->sent, s->len - c->sent, MSG_NOSIGNAL);
    io_uring_sqe_set_data(sqe, c);
    c->op = OP_SEND;
    if (c->count_writes) writes_total++;
    uint64_t ts = monotonic_ns();
    if (c->sent == 0 && c->writes) c->writes[c->step] = (struct truth_write){ts, s->len, s->content_events};
    io_uring_submit(&ring);
}

static void write_truth(struct conn *c) {
    struct buf b = {0};
    uint64_t first_token = 0, end = 0;
    unsigned content_writes = 0, chunks = 0;
    buf_str(&b, "{\"server\":\"" SERVER_NAME "\",\"id\":");
    buf_json_str(&b, c->id, strlen(c->id));
    buf_str(&b, ",\"path\":");
    buf_json_str(&b, c->path, strlen(c->path));
    buf_str(&b, ",\"method\":");
    buf_json_str(&b, c->method, strlen(c->method));
    buf_fmt(&b, ",\"request_ns\":%llu,\"writes\":[", (unsigned long long)c->request_ns);
    for (size_t i = 0; i < c->plan.n; i++) {
        struct truth_write *w = &c->writes[i];
        buf_fmt(&b, "%s{\"ts_ns\":%llu,\"bytes\":%zu,\"content_events\":%u}", i ? "," : "",
                (unsigned long long)w->ts_ns, w->bytes, w->content_events);
        if (w->content_events) {
            if (!content_writes) first_token = w->ts_ns;
            content_writes++;
            chunks += w->content_events;
        }
        end = w->ts_ns;
    }
    buf_fmt(&b, "],\"first_byte_ns\":%llu,\"first_token_ns\":", (unsigned long long)c->writes[0].ts_ns);
    if (content_writes) buf_fmt(&b, "%llu", (unsigned long long)first_token);
    else buf_str(&b, "null");
    buf_fmt(&b, ",\"end_ns\":%llu,\"content_writes\":%u,\"chunks\":%u,\"tokens\":", (unsigned long long)end,
            content_writes, chunks);
    if (c->tokens >= 0) buf_fmt(&b, "%ld", c->tokens);
    else buf_str(&b, "null");
    buf_str(&b, ",\"status\":200}\n");
    // One write per record, so a concurrent reader never sees half a line.
    if (truth_fd >= 0 && write(truth_fd, b.p, b.len) != (ssize_t)b.len) perror("truth: write");
    free(b.p);
}

static void process_input(struct conn *c);

// The current step is out (or the plan is empty): go on with the next one, or finish.
static void advance(struct conn *c) {
    while (c->step < c->plan.n) {
        struct step *s = &c->plan.steps[c->step];
        if (s->delay_ns && !c->waited) {
            c->ts.tv_sec = (long long)(s->delay_ns / 1000000000ULL);
            c->ts.tv_nsec = (long long)(s->delay_ns % 1000000000ULL);
            struct io_uring_sqe *sqe = sqe_get();
            io_uring_prep_timeout(sqe, &c->ts, 0, 0);
            io_uring_sqe_set_data(sqe, c);
            c->op = OP_TIMEOUT;
            io_uring_submit(&ring);  // the kernel reads c->ts now
            return;
        }
        send_step(c);
        return;
    }
    if (c->record) write_truth(c);
    plan_free(&c->plan);
    free(c->writes);
    c->writes = NULL;
    if (!c->keep_alive) {
        arm_close(c, 1);
        return;
    }
    process_input(c);
}

static void start_response(struct conn *c) {
    c->step = 0, c->sent = 0, c->waited = 0;
    c->writes = c->record ? calloc(c->plan.n, sizeof *c->writes) : NULL;
    advance(c);
}

static void simple_reply(struct conn *c, const char *status, const char *type, const char *body, int count) {
    struct buf b = {0};
    buf_fmt(&b, "HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: %s\r\n\r\n%s", status, type,
            strlen(body), c->client_close ? "close" : "keep-alive", body);
    plan_push(&c->plan, 0, &b, 0);
    c->record = 0;
    c->count_writes = count;
    c->keep_alive = !c->client_close;
    start_response(c);
}

// A whole request (head and body) has been read: answer it.
static void respond(struct conn *c) {
    const char *target = c->target;
    size_t tn = c->target_len;
    const char *qm = memchr(target, '?', tn);
    size_t pn = qm ? (size_t)(qm - target) : tn;
    const char *query = qm ? qm + 1 : target + tn;
    size_t qn = qm ? tn - pn - 1 : 0;
    snprintf(c->path, sizeof c->path, "%.*s", (int)pn, target);
    if (!strcmp(c->method, "GET") && !strcmp(c->path, "/health")) {
        simple_reply(c, "200 OK", "text/plain", "ok", 1);
        return;
    }
    if (!strcmp(c->method, "GET") && !strcmp(c->path, "/stats")) {
        char body[64];
        snprintf(body, sizeof body, "{\"writes\":%llu}", writes_total);
        simple_reply(c, "200 OK", "application/json", body, 0);
        return;
    }
    size_t plen = strlen(STREAM_PREFIX);
    const char *rest = c->path + plen;
    if (strncmp(c->path, STREAM_PREFIX, plen) || (*rest && *rest != '/')) {
        simple_reply(c, "404 Not Found", "text/plain", "not found", 1);
        return;
    }
    const char *slash = strrchr(rest, '/');
    snprintf(c->id, sizeof c->id, "%s", slash ? slash + 1 : "");
    struct params p;
    if (parse_params(query, qn, &p)) {
        simple_reply(c, "400 Bad Request", "text/plain", bad_param, 1);
        return;
    }
    build_plan(&p, c->client_close, &c->plan);
    c->record = 1;
    c->tokens = p.usage ? p.tokens : -1;
    c->count_writes = 1;
    c->keep_alive = !c->client_close && p.framing != CLOSE;
    start_response(c);
}

// Looks for a complete request in c->buf; answers it, or asks for more bytes.
static void process_input(struct conn *c) {
    if (c->body_left > 0) {
        size_t take = (size_t)c->body_left < c->have ? (size_t)c->body_left : c->have;
        memmove(c->buf, c->buf + take, c->have - take);
        c->have -= take;
        c->body_left -= (long)take;
        if (c->body_left > 0) {
            arm_recv(c);
            return;
        }
        c->request_ns = monotonic_ns();
        respond(c);
        return;
    }
    char *end = memmem(c->buf, c->have, "\r\n\r\n", 4);
    if (!end) {
        if (c->have == sizeof c->buf) {
            fprintf(stderr, "connection: request headers too large\n");
            arm_close(c, 0);
        } else {
            arm_recv(c);
        }
        return;
    }
    size_t head_len = (size_t)(end - c->buf) + 4;
    // Request line: METHOD SP TARGET SP VERSION
    char *line_end = memmem(c->buf, head_len, "\r\n", 2);
    char *sp1 = memchr(c->buf, ' ', (size_t)(line_end - c->buf));
    char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(line_end - sp1 - 1)) : NULL;
    if (!sp1 || !sp2 || sp1 - c->buf >= (long)sizeof c->method || sp2 - sp1 - 1 >= (long)sizeof c->target) {
        fprintf(stderr, "connection: bad request line\n");
        arm_close(c, 0);
        return;
    }
    snprintf(c->method, sizeof c->method, "%.*s", (int)(sp1 - c->buf), c->buf);
    c->target_len = (size_t)(sp2 - sp1 - 1);
    memcpy(c->target, sp1 + 1, c->target_len);
    c->target[c->target_len] = 0;
    c->client_close = (size_t)(line_end - sp2 - 1) == 8 && !memcmp(sp2 + 1, "HTTP/1.0", 8);
    long content_length = 0;
    for (char *l = line_end + 2; l < end;) {
        char *le = memmem(l, (size_t)(end + 2 - l), "\r\n", 2);
        char *colon = memchr(l, ':', (size_t)(le - l));
        if (!colon) {
            fprintf(stderr, "connection: bad header line\n");
            arm_close(c, 0);
            return;
        }
        char *v = colon + 1;
        while (v < le && (*v == ' ' || *v == '\t')) v++;
        char *ve = le;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t')) ve--;
        size_t nn = (size_t)(colon - l), vn = (size_t)(ve - v);
        if (nn == 14 && !strncasecmp(l, "content-length", 14)) {
            char tmp[24];
            char *e;
            snprintf(tmp, sizeof tmp, "%.*s", (int)(vn < 23 ? vn : 23), v);
            content_length = strtol(tmp, &e, 10);
            if (!vn || *e || content_length < 0 || content_length > MAX_BODY) {
                fprintf(stderr, "connection: bad Content-Length\n");
                arm_close(c, 0);
                return;
            }
        } else if (nn == 10 && !strncasecmp(l, "connection", 10)) {
            c->client_close = vn == 5 && !strncasecmp(v, "close", 5);
        } else if (nn == 17 && !strncasecmp(l, "transfer-encoding", 17)) {
            fprintf(stderr, "connection: chunked request bodies are not supported\n");
            arm_close(c, 0);
            return;
        }
        l = le + 2;
    }
    memmove(c->buf, c->buf + head_len, c->have - head_len);
    c->have -= head_len;
    if (content_length > 0) {  // read and drop the body
        c->body_left = content_length;
        process_input(c);
        return;
    }
    c->request_ns = monotonic_ns();
    respond(c);
}

static void on_completion(struct io_uring_cqe *cqe) {
    void *tag = io_uring_cqe_get_data(cqe);
    int res = cqe->res;
    if (tag == &accept_tag) {
        if (res < 0) {
            fprintf(stderr, "accept: %s\n", strerror(-res));
            struct io_uring_sqe *sqe = sqe_get();  // back off (EMFILE) instead of spinning
            io_uring_prep_timeout(sqe, &backoff_ts, 0, 0);
            io_uring_sqe_set_data(sqe, &accept_backoff_tag);
            return;
        }
        int one = 1;
        setsockopt(res, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) abort();
        c->fd = res;
        arm_recv(c);
        arm_accept();
        return;
    }
    if (tag == &accept_backoff_tag) {
        arm_accept();
        return;
    }
    struct conn *c = tag;
    switch (c->op) {
    case OP_RECV:
        if (res <= 0) {
            if (res < 0 || c->have || c->body_left) {
                if (res < 0 && res != -ECONNRESET) fprintf(stderr, "recv: %s\n", strerror(-res));
            }
            arm_close(c, 0);
            return;
        }
        c->have += (size_t)res;
        process_input(c);
        return;
    case OP_TIMEOUT:
        if (res != -ETIME && res != 0) fprintf(stderr, "timeout: %s\n", strerror(-res));
        c->waited = 1;
        advance(c);
        return;
    case OP_SEND: {
        if (res < 0) {  // the client went away mid-stream: not recorded
            if (res != -EPIPE && res != -ECONNRESET) fprintf(stderr, "send: %s\n", strerror(-res));
            arm_close(c, 0);
            return;
        }
        struct step *s = &c->plan.steps[c->step];
        c->sent += (size_t)res;
        if (c->sent < s->len) {
            fprintf(stderr, "warning: a write took more than one send (short send)\n");
            send_step(c);
            return;
        }
        c->step++, c->sent = 0, c->waited = 0;
        advance(c);
        return;
    }
    case OP_SHUTDOWN:
        arm_close(c, 0);
        return;
    case OP_CLOSE:
        conn_free(c);
        return;
    case OP_NONE:
        return;
    }
}

static void on_exit_signal(int sig) {
    (void)sig;
    _exit(0);
}

int main(int argc, char **argv) {
    int port = 0;
    const char *truth = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--port") && i + 1 < argc) port = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--truth") && i + 1 < argc) truth = argv[++i];
        else {
            fprintf(stderr, "usage: %s [--port P] [--truth FILE]\n", argv[0]);
            return 2;
        }
    }
    if (truth && (truth_fd = open(truth, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644)) < 0) {
        perror(truth);
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_exit_signal);
    signal(SIGINT, on_exit_signal);
    int r = io_uring_queue_init(RING_ENTRIES, &ring, 0);
    if (r < 0) {
        fprintf(stderr, "io_uring_queue_init: %s\n", strerror(-r));
        return 1;
    }
    listen_fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listen_fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(listen_fd, (struct sockaddr *)&a, sizeof a) || listen(listen_fd, 512) ||
        getsockname(listen_fd, (struct sockaddr *)&a, &len)) {
        perror("bind/listen");
        return 1;
    }
    arm_accept();
    io_uring_submit(&ring);
    printf("LISTENING %d\n", ntohs(a.sin_port));
    fflush(stdout);
    for (;;) {
        struct io_uring_cqe *cqe;
        r = io_uring_submit_and_wait(&ring, 1);
        if (r < 0 && r != -EINTR) {
            fprintf(stderr, "io_uring_submit_and_wait: %s\n", strerror(-r));
            return 1;
        }
        while (io_uring_peek_cqe(&ring, &cqe) == 0) {
            struct io_uring_cqe copy = *cqe;
            io_uring_cqe_seen(&ring, cqe);
            on_completion(&copy);
        }
    }
}
