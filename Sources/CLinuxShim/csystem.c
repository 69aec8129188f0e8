#define _GNU_SOURCE
#include "clinuxshim.h"
#include <errno.h>
#include <stdio.h>
#include <fcntl.h>
#include <malloc.h>
#include <sched.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/ioctl.h>
#include <sys/vfs.h>
#include <linux/magic.h>
#include <linux/nsfs.h>

const unsigned pf_splice_move = SPLICE_F_MOVE, pf_splice_nonblock = SPLICE_F_NONBLOCK, pf_splice_more = SPLICE_F_MORE;
const uint32_t pf_epollin = EPOLLIN, pf_epollout = EPOLLOUT, pf_epollerr = EPOLLERR, pf_epollhup = EPOLLHUP,
               pf_epollrdhup = EPOLLRDHUP, pf_epollet = EPOLLET;
const int pf_epoll_ctl_add = EPOLL_CTL_ADD, pf_epoll_ctl_mod = EPOLL_CTL_MOD, pf_epoll_ctl_del = EPOLL_CTL_DEL;
const int pf_clone_newnet = CLONE_NEWNET;
const int64_t pf_nsfs_magic = NSFS_MAGIC;

int pf_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

int pf_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data) {
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = events;
    ev.data.u64 = data;
    return epoll_ctl(epfd, op, fd, &ev);
}

int pf_epoll_wait(int epfd, pf_epoll_event *out, int max, int timeout_ms) {
    struct epoll_event evs[256];
    if (max > 256) max = 256;
    int n = epoll_wait(epfd, evs, max, timeout_ms);
    for (int i = 0; i < n; i++) {
        out[i].events = evs[i].events;
        out[i].data = evs[i].data.u64;
    }
    return n;
}

int pf_accept4(int fd, struct sockaddr *addr, socklen_t *len) {
    return accept4(fd, addr, len, SOCK_NONBLOCK | SOCK_CLOEXEC);
}

int pf_pipe2(int fds[2]) { return pipe2(fds, O_NONBLOCK | O_CLOEXEC); }

ssize_t pf_splice(int from, int to, size_t len, unsigned flags) {
    return splice(from, NULL, to, NULL, len, flags);
}

int pf_set_pipe_size(int fd, int size) { return fcntl(fd, F_SETPIPE_SZ, size); }

int pf_setns(int fd, int nstype) { return setns(fd, nstype); }

int64_t pf_fstatfs_type(int fd) {
    struct statfs info;
    if (fstatfs(fd, &info) != 0) return -1;
    return (int64_t)info.f_type;
}

int pf_namespace_type(int fd) { return ioctl(fd, NS_GET_NSTYPE); }

int pf_eventfd(void) { return eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC); }

static void fill(sigset_t *set, const int *signals, int count) {
    sigemptyset(set);
    for (int i = 0; i < count; i++) sigaddset(set, signals[i]);
}

int pf_block_signals(const int *signals, int count) {
    sigset_t set;
    fill(&set, signals, count);
    return sigprocmask(SIG_BLOCK, &set, NULL);
}

int pf_unblock_all_signals(void) {
    sigset_t set;
    sigemptyset(&set);
    return sigprocmask(SIG_SETMASK, &set, NULL);
}

/* The signalfd first, the mask after: blocked signals without a descriptor to read them from would
   be lost (Ctrl-C doing nothing). */
int pf_signalfd(const int *signals, int count) {
    sigset_t set;
    fill(&set, signals, count);
    int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
    if (fd < 0) return -errno;
    if (sigprocmask(SIG_BLOCK, &set, NULL) != 0) {
        int code = errno;
        close(fd);
        return -code;
    }
    return fd;
}

int pf_socket_nonblock(int domain, int type) {
    return socket(domain, type | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
}

int pf_errno(void) { return errno; }

int pf_ignore_sigpipe(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = SIG_IGN;
    return sigaction(SIGPIPE, &sa, NULL);
}

int pf_raise_nofile_limit(uint64_t *soft, uint64_t *hard) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
    /* Root may lift the hard limit too, up to fs.nr_open; others keep theirs. */
    FILE *f = fopen("/proc/sys/fs/nr_open", "r");
    unsigned long long nr_open = 0;
    if (f) {
        if (fscanf(f, "%llu", &nr_open) != 1) nr_open = 0;
        fclose(f);
    }
    if (nr_open > rl.rlim_max) {
        struct rlimit higher = { .rlim_cur = nr_open, .rlim_max = nr_open };
        if (setrlimit(RLIMIT_NOFILE, &higher) == 0) rl = higher;
    }
    rl.rlim_cur = rl.rlim_max;
    int rc = setrlimit(RLIMIT_NOFILE, &rl);
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) { *soft = rl.rlim_cur; *hard = rl.rlim_max; }
    return rc;
}

int pf_set_nofile_soft_limit(uint64_t soft) {
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -1;
    rl.rlim_cur = soft;
    return setrlimit(RLIMIT_NOFILE, &rl);
}

int pf_malloc_trim(size_t pad) { return malloc_trim(pad); }

int pf_set_linger_zero(int fd) {
    struct linger l = { .l_onoff = 1, .l_linger = 0 };
    return setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof l);
}

int pf_tcp_nodelay(int fd) {
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}
