// Max-rate SSE server for the capture bench (xtask/src/capture_bench.rs): as many tiny stream
// writes per second as one CPU allows, so that the in-kernel cost of capturing each write shows.
//
// Listens on 127.0.0.1:PORT (0 = any; prints "LISTENING <port>" once ready), one thread per
// connection, HTTP/1.1 keep-alive. For each `GET /v1/chat/completions?frames=N HTTP/1.1` it
// writes the response head in one write(), then N SSE frames, each one HTTP chunk
// (`19\r\ndata: {"content":"tok"}\n\n\r\n`) in one write(), then the terminator `0\r\n\r\n` in
// its own write(). `Connection: close` ends the connection after the response; anything else
// gets a 404. SIGTERM/SIGINT exit 0.
//
// By default Nagle's algorithm stays on, as in a server that never sets TCP_NODELAY: the kernel
// gathers frames written while earlier ones are unacknowledged, so each write() is cheap and the
// write rate, hence the relative cost of capturing each write, is as high as it gets. With
// --nodelay every write() goes out as its own segment, as with most inference servers.
//
// usage: sse_flood [PORT] [--nodelay]
#define _GNU_SOURCE  // memmem
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#define FRAME_DATA "data: {\"content\":\"tok\"}\n\n"
#define MAX_FRAMES 100000000L

static int nodelay;
static char frame[64];
static size_t frame_len;

static const char HEAD[] =
    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    "Transfer-Encoding: chunked\r\n\r\n";
static const char NOT_FOUND[] = "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n";
static const char TERMINATOR[] = "0\r\n\r\n";

// One write() for the whole buffer; a short write (never seen on loopback) is finished with more.
static int write_all(int fd, const char *p, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void on_exit_signal(int sig) {
    (void)sig;
    _exit(0);
}

// Serves one connection until the peer closes it or asks to close.
static void *serve(void *arg) {
    int fd = (int)(long)arg;
    if (nodelay) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &nodelay, sizeof nodelay);
    char buf[8192];
    size_t have = 0;
    for (;;) {
        char *end = NULL;
        while (!(end = memmem(buf, have, "\r\n\r\n", 4))) {
            if (have == sizeof buf) goto out;  // head too large
            ssize_t r = read(fd, buf + have, sizeof buf - have);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) goto out;
            have += (size_t)r;
        }
        size_t head_len = (size_t)(end - buf) + 4;
        char *line_end = memchr(buf, '\r', head_len);
        long frames = -1;
        if (line_end && strncmp(buf, "GET /v1/chat/completions", 24) == 0) {
            char *q = memmem(buf, (size_t)(line_end - buf), "frames=", 7);
            frames = q ? strtol(q + 7, NULL, 10) : 0;
            if (frames < 0 || frames > MAX_FRAMES) frames = -1;
        }
        // Header names are case-insensitive; a plain scan of the head is enough for our clients.
        int close_after = 0;
        for (char *p = buf; p + 17 <= buf + head_len; p++) {
            if ((*p == 'C' || *p == 'c') && strncasecmp(p, "connection: close", 17) == 0) close_after = 1;
        }
        if (frames < 0) {
            if (write_all(fd, NOT_FOUND, sizeof NOT_FOUND - 1)) goto out;
        } else {
            if (write_all(fd, HEAD, sizeof HEAD - 1)) goto out;
            for (long i = 0; i < frames; i++) {
                if (write_all(fd, frame, frame_len)) goto out;
            }
            if (write_all(fd, TERMINATOR, sizeof TERMINATOR - 1)) goto out;
        }
        if (close_after) goto out;
        memmove(buf, buf + head_len, have - head_len);
        have -= head_len;
    }
out:
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 0;
    nodelay = argc > 2 && strcmp(argv[2], "--nodelay") == 0;
    frame_len = (size_t)snprintf(frame, sizeof frame, "%zx\r\n%s\r\n", sizeof FRAME_DATA - 1, FRAME_DATA);
    signal(SIGPIPE, SIG_IGN);
    signal(SIGTERM, on_exit_signal);
    signal(SIGINT, on_exit_signal);

    int ls = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 128)) {
        perror("bind/listen");
        return 1;
    }
    socklen_t len = sizeof a;
    getsockname(ls, (struct sockaddr *)&a, &len);
    printf("LISTENING %d\n", ntohs(a.sin_port));
    fflush(stdout);

    for (;;) {
        int c = accept(ls, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            perror("accept");
            return 1;
        }
        pthread_t t;
        if (pthread_create(&t, NULL, serve, (void *)(long)c)) {
            close(c);
            continue;
        }
        pthread_detach(t);
    }
}
