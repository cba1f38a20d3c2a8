// Loopback TCP ping-pong, a process that has nothing to do with the followed server: the capture
// bench (xtask/src/capture_bench.rs) times it with and without the agent to see what capture
// costs the rest of the node's socket I/O. One process, a server thread and a client thread on
// 127.0.0.1, TCP_NODELAY; the client send()s one byte and recv()s the one-byte reply, N times.
// Prints `ROUNDTRIPS <n> SECONDS <wall> RATE <round trips/s> NS_PER_ROUNDTRIP <ns>`.
// Every recv times out after 10 s, so it cannot hang.
//
// With --one-thread both ends live in the main thread: send on one end, recv on the other, send
// the byte back, recv it. Loopback delivers in the sender's context, so nothing ever blocks and
// there are no context switches: the figure is the four socket calls alone, free of the wake-up
// and preemption effects that make two threads sharing a CPU jittery.
//
// usage: pingpong [N] [--one-thread]   (default N 100000)
#include <arpa/inet.h>
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

static long iterations = 100000;

static void tune(int fd) {
    int one = 1;
    struct timeval tv = {10, 0};
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

// Echoes every byte until the client closes.
static void *echo(void *arg) {
    int fd = accept((int)(long)arg, NULL, NULL);
    if (fd < 0) {
        perror("accept");
        exit(1);
    }
    tune(fd);
    char b;
    while (recv(fd, &b, 1, 0) == 1) {
        if (send(fd, &b, 1, 0) != 1) break;
    }
    close(fd);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc > 1) iterations = atol(argv[1]);
    int one_thread = argc > 2 && strcmp(argv[2], "--one-thread") == 0;
    if (iterations < 1) return 2;
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    if (bind(ls, (struct sockaddr *)&a, sizeof a) || listen(ls, 1) || getsockname(ls, (struct sockaddr *)&a, &len)) {
        perror("bind/listen");
        return 1;
    }
    pthread_t server;
    if (!one_thread) pthread_create(&server, NULL, echo, (void *)(long)ls);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&a, sizeof a)) {
        perror("connect");
        return 1;
    }
    tune(fd);
    int peer = -1;
    if (one_thread) {
        peer = accept(ls, NULL, NULL);
        if (peer < 0) {
            perror("accept");
            return 1;
        }
        tune(peer);
    }
    char b = 'x';
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < iterations; i++) {
        int ok = one_thread ? send(fd, &b, 1, 0) == 1 && recv(peer, &b, 1, 0) == 1 && send(peer, &b, 1, 0) == 1 &&
                                  recv(fd, &b, 1, 0) == 1
                            : send(fd, &b, 1, 0) == 1 && recv(fd, &b, 1, 0) == 1;
        if (!ok) {
            perror("ping");
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    close(fd);
    if (one_thread) close(peer);
    else pthread_join(server, NULL);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) * 1e-9;
    printf("ROUNDTRIPS %ld SECONDS %.6f RATE %.0f NS_PER_ROUNDTRIP %.0f\n", iterations, secs, iterations / secs,
           secs * 1e9 / iterations);
    return 0;
}
