#ifndef PORTFORWARD_CLINUXSHIM_H
#define PORTFORWARD_CLINUXSHIM_H
/* Linux calls that Swift's Glibc module does not import (they sit behind
   _GNU_SOURCE or in headers the module leaves out). Plain C types only. */
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <signal.h>
#include <sys/prctl.h>

typedef struct {
    uint32_t events;
    uint64_t data;
} pf_epoll_event;

int pf_epoll_create(void);
int pf_epoll_ctl(int epfd, int op, int fd, uint32_t events, uint64_t data);
int pf_epoll_wait(int epfd, pf_epoll_event *events, int max, int timeout_ms);

int pf_accept4(int fd, struct sockaddr *addr, socklen_t *len);   /* NONBLOCK|CLOEXEC */
int pf_pipe2(int fds[2]);                                        /* NONBLOCK|CLOEXEC */
ssize_t pf_splice(int from, int to, size_t len, unsigned flags);  /* flags: pf_splice_* */
int pf_set_pipe_size(int fd, int size);
int pf_setns(int fd, int nstype);
/* The file system type of fd's file (statfs f_type), or -1 with errno. */
int64_t pf_fstatfs_type(int fd);
/* The kind of namespace an nsfs descriptor refers to (a CLONE_NEW* value), or -1 with errno. */
int pf_namespace_type(int fd);
int pf_eventfd(void);
/* A non-blocking signalfd for `signals`, which are then blocked (only if it could be made);
   -errno on failure, with the mask unchanged. */
int pf_signalfd(const int *signals, int count);
int pf_block_signals(const int *signals, int count);
int pf_unblock_all_signals(void);
int pf_socket_nonblock(int domain, int type);
int pf_errno(void);
int pf_ignore_sigpipe(void);
int pf_raise_nofile_limit(uint64_t *soft, uint64_t *hard);
int pf_set_nofile_soft_limit(uint64_t soft);                         /* the hard limit stays */
/* glibc's malloc_trim (<malloc.h>): returns freed heap memory to the system; 1 if it did. */
int pf_malloc_trim(size_t pad);
int pf_set_linger_zero(int fd);
int pf_tcp_nodelay(int fd);
/* prctl(PR_SET_PDEATHSIG, signal): `signal` comes when the parent (the thread that started this
   process) ends. prctl is variadic, which Swift cannot call. */
static inline int pf_set_parent_death_signal(int signal) {
    return prctl(PR_SET_PDEATHSIG, (unsigned long)signal, 0UL, 0UL, 0UL);
}

extern const unsigned pf_splice_move, pf_splice_nonblock, pf_splice_more;
extern const uint32_t pf_epollin, pf_epollout, pf_epollerr, pf_epollhup, pf_epollrdhup, pf_epollet;
extern const int pf_epoll_ctl_add, pf_epoll_ctl_mod, pf_epoll_ctl_del;
extern const int pf_clone_newnet;
extern const int64_t pf_nsfs_magic;

/* A per-user cache of freed small blocks (block_cache.c), for nghttp2_mem. Single-threaded. */
typedef struct pf_block_cache pf_block_cache;
pf_block_cache *pf_block_cache_new(void);
void pf_block_cache_delete(pf_block_cache *cache);
void *pf_cache_malloc(size_t size, void *cache);
void pf_cache_free(void *ptr, void *cache);
void *pf_cache_calloc(size_t count, size_t size, void *cache);
void *pf_cache_realloc(void *ptr, size_t size, void *cache);
#endif
