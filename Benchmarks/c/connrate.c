// A minimal connection-rate client for the bench (scripts/bench.sh): PARALLEL processes, each
// in a loop: connect, write a 4-byte message, read its echo, close; counted for SECONDS after
// WARMUP seconds. Blocking calls, no event loop: as little client work per connection as there
// can be, so the figure is the path's, not the client's.
// Usage: connrate HOST PORT SECONDS WARMUP PARALLEL; prints "connections_per_s p50_us connections_made".
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int compare(const void *a, const void *b) {
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 6) { fprintf(stderr, "usage: connrate HOST PORT SECONDS WARMUP PARALLEL\n"); return 2; }
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[2])) };
    inet_pton(AF_INET, argv[1], &address.sin_addr);
    double seconds = atof(argv[3]), warmup = atof(argv[4]);
    int parallel = atoi(argv[5]);
    int results[2];
    if (pipe(results) != 0) return 1;
    for (int p = 0; p < parallel; p++) {
        if (fork() != 0) continue;
        size_t capacity = 1 << 20, count = 0, failures = 0, made = 0;
        float *latencies = malloc(capacity * sizeof *latencies);
        double start = now(), measure = start + warmup, end = measure + seconds;
        for (double t = start; t < end; t = now()) {
            int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            char message[4] = {'p', 'i', 'n', 'g'}, echo[4];
            size_t got = 0;
            if (connect(fd, (struct sockaddr *)&address, sizeof address) == 0 && write(fd, message, 4) == 4) {
                for (ssize_t n; got < 4 && (n = read(fd, echo + got, 4 - got)) > 0;) got += n;
            }
            // An abortive close (RST): no TIME_WAIT piling up over rounds of tens of thousands.
            struct linger abort = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &abort, sizeof abort);
            close(fd);
            double done = now();
            made++;
            if (got != 4 || memcmp(message, echo, 4) != 0) { failures++; continue; }
            if (t >= measure && count < capacity) latencies[count++] = (float)((done - t) * 1e6);
        }
        qsort(latencies, count, sizeof *latencies, compare);
        char line[128];
        int length = snprintf(line, sizeof line, "%zu %zu %.1f %zu\n", count, failures, count ? latencies[count / 2] : 0.0f, made);
        if (write(results[1], line, length) != length) return 1;
        return 0;
    }
    close(results[1]);
    FILE *in = fdopen(results[0], "r");
    size_t total = 0, failed = 0, all = 0;
    double p50 = 0;
    for (int p = 0; p < parallel; p++) {
        size_t count = 0, failures = 0, made = 0;
        float median = 0;
        if (fscanf(in, "%zu %zu %f %zu", &count, &failures, &median, &made) != 4) { fprintf(stderr, "connrate: a worker failed\n"); return 1; }
        total += count; failed += failures; p50 += median / parallel; all += made;
    }
    while (wait(NULL) > 0) {}
    // Connections/s measured, their median latency (us), and every connection made (warm-up
    // and failures included: what the CPU a relay spent over the whole run is divided by).
    printf("%.0f %.1f %zu\n", total / seconds, p50, all);
    if (failed) fprintf(stderr, "connrate: %zu connections failed\n", failed);
    return total == 0;
}
