// fusechan.h: the /dev/fuse channel thinfuse's patched fuse-native mounts
// with, #included by fuse-native.c (native-deps/fuse-native.patch).
//
// Why: libfuse 2.9 (the libfuse2 fuse-native links) answers the kernel's INIT
// with protocol 7.19 and knows nothing newer. Two later flags decide how fast
// a loop device on a FUSE file can go:
//  - FUSE_ASYNC_DIO (7.22): without it, a direct-I/O read or write of a
//    device file (our files are opened direct_io) is cut into max_read pieces
//    sent one after another; the loop driver's worker thread then has one
//    128 KiB request in flight at a time. With it, the pieces go out at once.
//  - FUSE_MAX_PAGES (7.28): lifts the kernel's 32-page (128 KiB) cap per
//    request, so a 1 MiB read is one request instead of eight.
// Both change only how the kernel splits and schedules requests, not the
// format of any message libfuse2 parses, so the channel below passes
// everything through untouched except the INIT reply, where it adds those
// flags (when the kernel offered them) and the max_pages field.
//
// Writes stay at 128 KiB: libfuse2 reads each request into a buffer of
// about 132 KiB, and it answers INIT with max_write = 128 KiB, which the
// kernel keeps to. Only reads grow (replies have no such buffer).
//
// The file also has the waits on both sides of a request that needs JS
// (fc_wait_reply, fc_js_active): both poll briefly before sleeping. A FUSE
// thread about to wait for a copy-on-write first reads the old block for JS
// (fp_cow_read_ahead, in fastpath.h's fp_helpers.h: fastpath.h must be
// included before this file).
//
// The channel does what libfuse2's own kernel channel does (read(2) one
// request, writev(2) one reply, the same error handling), on a dup of the
// descriptor fuse_mount opened; that channel is destroyed at once (closing
// the original descriptor), and this one closes its own when destroyed.

#include <fuse_lowlevel.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

// From the kernel's include/uapi/linux/fuse.h.
#define FC_OP_INIT 26
#define FC_ASYNC_DIO (1u << 15)
#define FC_MAX_PAGES (1u << 22)
/** fuse_in_header: len, opcode, unique, nodeid, uid, gid, pid, padding. */
#define FC_IN_HEADER 40
/** fuse_out_header: len, error, unique. */
#define FC_OUT_HEADER 16

/** fuse_init_out up to and including max_pages (the kernel accepts a shorter reply). */
typedef struct {
  uint32_t major;
  uint32_t minor;
  uint32_t max_readahead;
  uint32_t flags;
  uint16_t max_background;
  uint16_t congestion_threshold;
  uint32_t max_write;
  uint32_t time_gran;
  uint16_t max_pages;
  uint16_t map_alignment;
  uint32_t flags2;
} fc_init_out_t;

static struct {
  /** What the mount asks for: set by fuse_transport() before a mount. */
  int async_dio;
  uint32_t max_pages;
  /** INIT as the kernel sent it: its unique id (0 once answered) and the flags it offered. */
  _Atomic uint64_t init_unique;
  uint32_t offered;
  /** How long a FUSE thread spins for JS's answer before it sleeps. */
  uint32_t spin_ns;
  /** How long the JS thread polls for the next request before it sleeps (fc_js_active). */
  uint32_t poll_ns;
  /** 1 while a FUSE thread spins in fc_wait_reply. */
  _Atomic int spinning;
} fc = { .async_dio = 1, .max_pages = 256, .spin_ns = 200000, .poll_ns = 200000 };

static int fc_receive(struct fuse_chan **chp, char *buf, size_t size) {
  struct fuse_chan *ch = *chp;
  struct fuse_session *se = fuse_chan_session(ch);
  for (;;) {
    ssize_t n = read(fuse_chan_fd(ch), buf, size);
    int err = errno;
    if (fuse_session_exited(se)) return 0;
    if (n >= 0) {
      if ((size_t) n < FC_IN_HEADER) return -EIO;
      uint32_t opcode;
      memcpy(&opcode, buf + 4, 4);
      if (opcode == FC_OP_INIT && (size_t) n >= FC_IN_HEADER + 16) {
        uint64_t unique;
        memcpy(&unique, buf + 8, 8);
        memcpy(&fc.offered, buf + FC_IN_HEADER + 12, 4);
        atomic_store(&fc.init_unique, unique);
      }
      return (int) n;
    }
    // ENOENT: the request was interrupted before we read it; read the next.
    if (err == ENOENT) continue;
    if (err == ENODEV) {
      fuse_session_exit(se);
      return 0;
    }
    if (err != EINTR && err != EAGAIN) perror("fuse: reading device");
    return -err;
  }
}

/** The INIT reply with the flags and fields added; 0 if iov is not libfuse2's INIT reply. */
static int fc_extend_init(const struct iovec iov[], size_t count, char *out, size_t *len) {
  uint64_t unique = atomic_load(&fc.init_unique);
  if (unique == 0 || count != 2 || iov[0].iov_len != FC_OUT_HEADER || iov[1].iov_len > sizeof(fc_init_out_t)) return 0;
  uint64_t replying;
  int32_t error;
  memcpy(&error, (char *) iov[0].iov_base + 4, 4);
  memcpy(&replying, (char *) iov[0].iov_base + 8, 8);
  if (replying != unique || error != 0 || iov[1].iov_len < 24) return 0;
  atomic_store(&fc.init_unique, 0);
  fc_init_out_t arg;
  memset(&arg, 0, sizeof arg);
  memcpy(&arg, iov[1].iov_base, iov[1].iov_len);
  if (fc.async_dio && (fc.offered & FC_ASYNC_DIO)) arg.flags |= FC_ASYNC_DIO;
  if (fc.max_pages > 32 && (fc.offered & FC_MAX_PAGES)) {
    arg.flags |= FC_MAX_PAGES;
    arg.max_pages = (uint16_t) fc.max_pages;
  }
  uint32_t total = FC_OUT_HEADER + sizeof arg;
  memcpy(out, iov[0].iov_base, FC_OUT_HEADER);
  memcpy(out, &total, 4);
  memcpy(out + FC_OUT_HEADER, &arg, sizeof arg);
  *len = total;
  return 1;
}

static int fc_send(struct fuse_chan *ch, const struct iovec iov[], size_t count) {
  if (iov == NULL) return 0;
  char init[FC_OUT_HEADER + sizeof(fc_init_out_t)];
  size_t init_len;
  struct iovec one = { init, 0 };
  if (fc_extend_init(iov, count, init, &init_len)) {
    one.iov_len = init_len;
    iov = &one;
    count = 1;
  }
  if (writev(fuse_chan_fd(ch), iov, (int) count) >= 0) return 0;
  int err = errno;
  // ENOENT: the request was interrupted and the kernel dropped the reply.
  if (!fuse_session_exited(fuse_chan_session(ch)) && err != ENOENT) perror("fuse: writing device");
  return -err;
}

static void fc_destroy(struct fuse_chan *ch) {
  int fd = fuse_chan_fd(ch);
  if (fd >= 0) close(fd);
}

static struct fuse_chan_ops fc_ops = { .receive = fc_receive, .send = fc_send, .destroy = fc_destroy };

/** Replaces fuse_mount's channel by ours on a dup of its descriptor; on failure keeps it. */
static struct fuse_chan *fc_wrap(struct fuse_chan *kernel) {
  if (!fc.async_dio && fc.max_pages <= 32) return kernel;
  int fd = dup(fuse_chan_fd(kernel));
  if (fd < 0) return kernel;
  struct fuse_chan *ch = fuse_chan_new(&fc_ops, fd, fuse_chan_bufsize(kernel), NULL);
  if (ch == NULL) {
    close(fd);
    return kernel;
  }
  fuse_chan_destroy(kernel);
  return ch;
}

/**
 * fuse_transport(asyncDio, maxPages, pollNs): what the next mount asks the
 * kernel for (maxPages 32 = libfuse2's own), and how long FUSE threads spin
 * and the JS thread polls for an answer or the next request (0: never).
 */
NAPI_METHOD(fuse_transport) {
  NAPI_ARGV(3)
  NAPI_ARGV_INT32(async_dio, 0)
  NAPI_ARGV_UINT32(max_pages, 1)
  NAPI_ARGV_UINT32(poll_ns, 2)
  fc.async_dio = async_dio != 0;
  fc.max_pages = max_pages < 32 ? 32 : max_pages > 256 ? 256 : max_pages;
  fc.spin_ns = poll_ns;
  fc.poll_ns = poll_ns;
  return NULL;
}

static inline void fc_cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  __asm__ volatile("yield");
#endif
}

/**
 * Waits for JS to answer a request this FUSE thread handed it. One thread at
 * a time spins for a while first: on these VMs a sleeping thread takes tens
 * of microseconds to wake (an IPI through the hypervisor), more than JS takes
 * for most requests. More spinners would take the CPU JS needs (2 vCPUs).
 */
static void fc_wait_reply_inner(uv_sem_t *sem) {
  int idle = 0;
  if (fc.spin_ns > 0 && atomic_compare_exchange_strong(&fc.spinning, &idle, 1)) {
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (unsigned i = 1;; i++) {
      if (uv_sem_trywait(sem) == 0) {
        atomic_store(&fc.spinning, 0);
        return;
      }
      if ((i & 63) == 0) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long ns = (now.tv_sec - t0.tv_sec) * 1000000000L + (now.tv_nsec - t0.tv_nsec);
        if (ns > (long) fc.spin_ns) break;
      }
      fc_cpu_relax();
    }
    atomic_store(&fc.spinning, 0);
  }
  uv_sem_wait(sem);
}

/**
 * A FUSE thread's wait for JS's answer. A write that missed on a block
 * shared with a snapshot first reads that block for JS's copy-on-write
 * (fp_helpers.h's fp_cow_read_ahead), so the read overlaps JS waking up.
 */
static void fc_wait_reply(uv_sem_t *sem) {
  fp_cow_read_ahead();
  fc_wait_reply_inner(sem);
  fp_cow_release();
}

// The JS side of the same wake-up cost: after JS takes or answers a request,
// its event loop polls (an active uv_idle handle makes libuv poll with a zero
// timeout) instead of sleeping, until fc.poll_ns pass with no request. The
// next request's uv_async then finds the JS thread awake.
static uv_idle_t fc_idle;
static int fc_idle_ready;
static uint64_t fc_last_request;

static void fc_idle_check(uv_idle_t *idle) {
  if (uv_hrtime() - fc_last_request > fc.poll_ns) uv_idle_stop(idle);
}

/** JS thread only: a request was just taken or answered. */
static void fc_js_active(void) {
  if (fc.poll_ns == 0) return;
  if (!fc_idle_ready) {
    uv_idle_init(uv_default_loop(), &fc_idle);
    uv_unref((uv_handle_t *) &fc_idle);
    fc_idle_ready = 1;
  }
  fc_last_request = uv_hrtime();
  if (!uv_is_active((uv_handle_t *) &fc_idle)) uv_idle_start(&fc_idle, fc_idle_check);
}
