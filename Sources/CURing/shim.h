#ifndef PORTFORWARD_CURING_SHIM_H
#define PORTFORWARD_CURING_SHIM_H
/* liburing.h defines _XOPEN_SOURCE/_GNU_SOURCE before its libc includes, which
   clashes with Swift's Glibc module: pull the libc headers in first. */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <stdint.h>
#include <stdbool.h>
#include <inttypes.h>
#include <time.h>
#include <unistd.h>
#include <sys/types.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/stat.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <linux/swab.h>
#include <liburing.h>

/* Flag macros written as (1U << X) do not import into Swift. */
static const unsigned pf_iosqe_io_link = IOSQE_IO_LINK;
static const unsigned pf_iosqe_fixed_file = IOSQE_FIXED_FILE;
static const unsigned pf_iosqe_buffer_select = IOSQE_BUFFER_SELECT;
static const unsigned pf_iosqe_cqe_skip_success = IOSQE_CQE_SKIP_SUCCESS;
static const unsigned pf_ioring_cqe_f_more = IORING_CQE_F_MORE;
static const unsigned pf_ioring_cqe_f_buffer = IORING_CQE_F_BUFFER;
static const unsigned pf_ioring_cqe_f_notif = IORING_CQE_F_NOTIF;
static const unsigned pf_ioring_cqe_buffer_shift = IORING_CQE_BUFFER_SHIFT;
static const unsigned pf_ioring_setup_single_issuer = IORING_SETUP_SINGLE_ISSUER;
static const unsigned pf_ioring_setup_defer_taskrun = IORING_SETUP_DEFER_TASKRUN;
static const unsigned pf_ioring_setup_coop_taskrun = IORING_SETUP_COOP_TASKRUN;
static const unsigned pf_ioring_setup_submit_all = IORING_SETUP_SUBMIT_ALL;
static const unsigned pf_ioring_timeout_multishot = 1U << 6; /* IORING_TIMEOUT_MULTISHOT, newer than liburing 2.3 headers */
static const unsigned pf_ioring_async_cancel_all = IORING_ASYNC_CANCEL_ALL;
static const unsigned pf_ioring_async_cancel_fd = IORING_ASYNC_CANCEL_FD;
static const unsigned pf_ioring_async_cancel_any = IORING_ASYNC_CANCEL_ANY;
static const unsigned pf_ioring_setup_r_disabled = IORING_SETUP_R_DISABLED;
static const unsigned pf_ioring_setup_cqsize = IORING_SETUP_CQSIZE;
static const unsigned pf_ioring_feat_cqe_skip = IORING_FEAT_CQE_SKIP;
/* accept4 flags for accepted sockets (SOCK_* import into Swift as enum cases). */
static const int pf_accept_flags = SOCK_NONBLOCK | SOCK_CLOEXEC;
/* liburing 2.3 declares io_uring_enable_rings but leaves it out of its symbol map. */
static inline int pf_io_uring_enable_rings(struct io_uring *ring) {
    long result = syscall(__NR_io_uring_register, ring->ring_fd, IORING_REGISTER_ENABLE_RINGS, NULL, 0);
    return result < 0 ? -errno : 0;
}
#endif
