#ifndef TETHER_CURING_SHIM_H
#define TETHER_CURING_SHIM_H

// Header-only helpers for what Swift cannot import from liburing 2.3: IOSQE_* flag macros,
// anonymous-union SQE fields, function-like macros and a few newer constants.
// liburing.h defines _XOPEN_SOURCE/_GNU_SOURCE before its libc includes, which changes
// their definitions (fd_set) from the ones SwiftGlibc built: include them first, under the
// default feature macros, so every module agrees. Socket constants come from Glibc in Swift.
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/select.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <inttypes.h>
#include <time.h>
#include <fcntl.h>
#include <sched.h>
#include <liburing.h>

static const unsigned TETHER_CQE_F_BUFFER = IORING_CQE_F_BUFFER;
static const unsigned TETHER_CQE_F_MORE = IORING_CQE_F_MORE;
static const unsigned TETHER_CQE_BUFFER_SHIFT = IORING_CQE_BUFFER_SHIFT;
static const unsigned TETHER_SETUP_SINGLE_ISSUER = IORING_SETUP_SINGLE_ISSUER;
static const unsigned TETHER_SETUP_DEFER_TASKRUN = IORING_SETUP_DEFER_TASKRUN;
static const unsigned TETHER_SETUP_SUBMIT_ALL = IORING_SETUP_SUBMIT_ALL;
static const unsigned TETHER_SETUP_CQSIZE = IORING_SETUP_CQSIZE;

static inline int tether_errno(void) { return errno; }

// <sys/eventfd.h> is not in SwiftGlibc and including it here clashes; declare what we use.
extern int eventfd(unsigned int count, int flags);
static inline int tether_eventfd_cloexec(void) { return eventfd(0, 02000000 /* EFD_CLOEXEC */); }

// Multishot recv selecting from a provided-buffer group.
static inline void tether_prep_recv_multishot(struct io_uring_sqe *sqe, int fd, unsigned short group) {
    io_uring_prep_recv_multishot(sqe, fd, NULL, 0, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = group;
}

// Send with MSG_NOSIGNAL: a peer that went away must yield EPIPE, never kill the process.
static inline void tether_prep_send(struct io_uring_sqe *sqe, int fd, const void *buf, size_t len) {
    io_uring_prep_send(sqe, fd, buf, len, MSG_NOSIGNAL);
}

// Registers a provided-buffer ring whose entries live in caller-mapped memory
// (liburing 2.3 has no io_uring_setup_buf_ring).
static inline int tether_register_buf_ring(struct io_uring *ring, void *ring_mem, unsigned entries, unsigned short group) {
    struct io_uring_buf_reg reg = {0};
    reg.ring_addr = (unsigned long)ring_mem;
    reg.ring_entries = entries;
    reg.bgid = group;
    return io_uring_register_buf_ring(ring, &reg, 0);
}

static inline size_t tether_buf_ring_entry_size(void) { return sizeof(struct io_uring_buf); }

static inline int tether_setsockopt_int(int fd, int level, int name, int value) {
    return setsockopt(fd, level, name, &value, sizeof(value));
}

static inline int tether_sock_stream_cloexec(void) { return SOCK_STREAM | SOCK_CLOEXEC; }
static inline int tether_sock_cloexec(void) { return SOCK_CLOEXEC; }

#endif
