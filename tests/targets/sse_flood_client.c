// Load client for sse_flood.c: K keep-alive connections (one thread each) to 127.0.0.1:PORT, each
// sending M requests `GET /v1/chat/completions?frames=N` one after the other and reading every
// response to its chunked terminator. Counts the non-empty chunks it received (one per frame) and
// prints `FRAMES <total> SECONDS <wall> RATE <frames/s> REQUESTS <done>`; exit status 1 if a
// connection failed or a response had a frame count other than N. Every read times out after 30 s,
// so a stalled server cannot hang the client.
//
// usage: sse_flood_client PORT K M N
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static int port, requests_per_conn;
static long frames_per_request;

struct result {
    long frames;
    long requests;
    int failed;
};

enum state { HEAD, SIZE, DATA, LAST_CRLF };

// Streaming parser of one chunked response; feed it bytes until it reports the response is done.
struct parser {
    enum state st;
    int head_match;     // bytes of "\r\n\r\n" matched so far
    long size;          // chunk size being read (SIZE) or bytes left to skip (DATA, LAST_CRLF)
    int size_digits;
    long chunks;
};

// Consumes bytes from p[0..n); returns bytes consumed when the response ended there, -1 if it
// needs more, -2 on a framing error.
static long feed(struct parser *ps, const char *p, long n) {
    for (long i = 0; i < n; i++) {
        char c = p[i];
        switch (ps->st) {
        case HEAD:
            if (c == "\r\n\r\n"[ps->head_match]) {
                if (++ps->head_match == 4) ps->st = SIZE, ps->size = 0, ps->size_digits = 0;
            } else {
                ps->head_match = c == '\r';
            }
            break;
        case SIZE:
            if (c >= '0' && c <= '9') ps->size = ps->size * 16 + (c - '0'), ps->size_digits++;
            else if (c >= 'a' && c <= 'f') ps->size = ps->size * 16 + (c - 'a' + 10), ps->size_digits++;
            else if (c >= 'A' && c <= 'F') ps->size = ps->size * 16 + (c - 'A' + 10), ps->size_digits++;
            else if (c == '\n') {
                if (!ps->size_digits) return -2;
                if (ps->size == 0) {
                    ps->st = LAST_CRLF, ps->size = 2;
                } else {
                    ps->chunks++;
                    ps->st = DATA, ps->size += 2;  // data + CRLF
                }
            } else if (c != '\r') return -2;
            break;
        case DATA: {
            long skip = n - i < ps->size ? n - i : ps->size;
            ps->size -= skip;
            i += skip - 1;
            if (ps->size == 0) ps->st = SIZE, ps->size = 0, ps->size_digits = 0;
            break;
        }
        case LAST_CRLF:
            if (--ps->size == 0) return i + 1;
            break;
        }
    }
    return -1;
}

static void *run_conn(void *arg) {
    struct result *res = arg;
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        perror("connect");
        res->failed = 1;
        return NULL;
    }
    char req[160];
    int req_len = snprintf(req, sizeof req,
                           "GET /v1/chat/completions?frames=%ld HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
                           frames_per_request);
    static __thread char buf[1 << 16];
    long have = 0, off = 0;  // unparsed bytes buf[off..have)
    for (int r = 0; r < requests_per_conn; r++) {
        if (write(fd, req, (size_t)req_len) != req_len) {
            perror("write");
            res->failed = 1;
            break;
        }
        struct parser ps = {0};
        long used;
        for (;;) {
            used = off < have ? feed(&ps, buf + off, have - off) : -1;
            if (used >= 0 || used == -2) break;
            ssize_t got = read(fd, buf, sizeof buf);
            if (got <= 0) {
                fprintf(stderr, "read: %s\n", got ? strerror(errno) : "connection closed");
                res->failed = 1;
                goto out;
            }
            off = 0, have = got;
            // ACK at once: the server runs with Nagle on, and a delayed ACK (40 ms) would hold
            // its last frames back at the end of every response.
            setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
        }
        if (used == -2) {
            fprintf(stderr, "bad chunked framing\n");
            res->failed = 1;
            break;
        }
        off += used;
        res->frames += ps.chunks;
        res->requests++;
        if (ps.chunks != frames_per_request) {
            fprintf(stderr, "response with %ld frames, expected %ld\n", ps.chunks, frames_per_request);
            res->failed = 1;
        }
    }
out:
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s PORT K M N\n", argv[0]);
        return 2;
    }
    port = atoi(argv[1]);
    int conns = atoi(argv[2]);
    requests_per_conn = atoi(argv[3]);
    frames_per_request = atol(argv[4]);
    if (conns < 1 || conns > 1024 || requests_per_conn < 0 || frames_per_request < 0) return 2;
    pthread_t *threads = calloc((size_t)conns, sizeof *threads);
    struct result *results = calloc((size_t)conns, sizeof *results);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int i = 0; i < conns; i++) pthread_create(&threads[i], NULL, run_conn, &results[i]);
    long frames = 0, done = 0;
    int failed = 0;
    for (int i = 0; i < conns; i++) {
        pthread_join(threads[i], NULL);
        frames += results[i].frames;
        done += results[i].requests;
        failed |= results[i].failed;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    printf("FRAMES %ld SECONDS %.6f RATE %.0f REQUESTS %ld\n", frames, secs, frames / secs, done);
    return failed;
}
