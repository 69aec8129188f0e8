#define _GNU_SOURCE
// A minimal epoll echo server for the bench (scripts/bench.sh): one thread, edge-triggered,
// each read echoed back at once. Light enough that the relay, not the target, is what a
// connection-rate or throughput figure measures. Usage: echo-server PORT
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: echo-server PORT\n"); return 2; }
    int listener = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in address = { .sin_family = AF_INET, .sin_port = htons(atoi(argv[1])),
                                   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
    if (bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 4096) != 0) {
        perror("echo-server: bind/listen");
        return 1;
    }
    int epoll = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event event = { .events = EPOLLIN, .data.fd = listener };
    epoll_ctl(epoll, EPOLL_CTL_ADD, listener, &event);
    static char buffer[1 << 16];
    struct epoll_event events[256];
    for (;;) {
        int count = epoll_wait(epoll, events, 256, -1);
        if (count < 0) { if (errno == EINTR) continue; perror("epoll_wait"); return 1; }
        for (int i = 0; i < count; i++) {
            int fd = events[i].data.fd;
            if (fd == listener) {
                int client;
                while ((client = accept4(listener, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    setsockopt(client, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct epoll_event add = { .events = EPOLLIN | EPOLLRDHUP | EPOLLET, .data.fd = client };
                    epoll_ctl(epoll, EPOLL_CTL_ADD, client, &add);
                }
                continue;
            }
            for (;;) {
                ssize_t got = read(fd, buffer, sizeof buffer);
                if (got > 0) {
                    // Blocking-style echo: a stalled reader only slows this bench target.
                    for (ssize_t sent = 0; sent < got;) {
                        ssize_t n = write(fd, buffer + sent, got - sent);
                        if (n > 0) { sent += n; continue; }
                        if (n < 0 && errno == EAGAIN) { struct timespec pause = {0, 100000}; nanosleep(&pause, NULL); continue; }
                        got = -1; errno = EPIPE; break;
                    }
                    if (got > 0) continue;
                }
                if (got < 0 && errno == EAGAIN) break;
                close(fd);  // end of file or error (also leaves the epoll set)
                break;
            }
        }
    }
}
