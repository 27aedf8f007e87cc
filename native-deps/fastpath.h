// fastpath.h: thinfuse's native fast path for mapped I/O, #included by the
// patched fuse-native.c (native-deps/fuse-native.patch; build.mjs adds
// native-deps/ to the include path).
//
// Why: fuse-native hands every request to the one JS thread (uv_async plus a
// semaphore), which caps a JS FUSE daemon at 12-21k requests/s. Most requests
// of a thin device only need "virtual block -> data block" and a pread or
// pwrite on POOL/data. So the read and write handlers first look here; when
// every block a request touches is in the table (and writable, for a write)
// the FUSE thread does the I/O itself and replies, never waking JS. Anything
// else (a miss, an I/O error, a partial block past the end) falls through to
// the JS op, which then teaches the table what it learnt.
//
// The table (all of it filled and emptied by the JS thread only):
//  - entries: FP_TABLE_SIZE slots, direct-mapped by (device, virtual block);
//    slot = (vblock + dev * FP_DEV_STRIDE) mod size, so one device's
//    consecutive blocks never collide. An entry holds the data block and a
//    "writable in place" bit: the block is this device's alone (not shared
//    with a snapshot), mapped (so provisioned and zeroed or copied), and the
//    pool is in a mode that writes. A new entry simply replaces whatever held
//    its slot (the evicted mapping stays valid; it just goes back to JS).
//    Each entry is a seqlock (seq odd while JS rewrites it), so a FUSE thread
//    never sees a torn entry and never takes a lock.
//  - devices: FP_DEVS records, slot (dev + 1) mod FP_DEVS, each with the
//    device's name and size. A request uses the fast path only if its file
//    handle (dev + 1, what the JS open answered) finds a record with its own
//    path's name and the request lies within the size. A device whose record
//    slot is taken by another one just stays on the JS path.
//  Memory: FP_TABLE_SIZE * 24 bytes = 3 MiB for the table (allocated on the
//  first configure), about 17 KiB for the device records.
//
// Correctness (revoke, then drain, before the pool changes anything):
//  - Fast-path I/O runs inside an epoch: enter = count yourself in
//    inflight[epoch & 1] (re-checking the epoch so a flip in between cannot
//    be missed), leave = uncount. fp_drain(), on the JS thread, flips the
//    epoch and waits until the old parity's count is zero: every request
//    that might have read the table before the flip has finished its I/O,
//    and every later one sees what JS stored before the flip. Waiting is
//    bounded by one pread/pwrite: fast-path I/O never waits on JS, so the JS
//    thread may block here (it never blocks while holding a FUSE thread
//    that the fast path waits on: there is none).
//  - Every pool operation that changes a mapping or its sharing revokes the
//    affected entries (or their writable bit) and drains, synchronously in
//    the same JS tick as the metadata change, so nothing can re-insert the
//    old state in between (src/pool/pool.ts MappingHooks): discard/unmap (the
//    range), snapshot (the origin's writable bits), device delete,
//    deactivate and resize (the device's entries and record), a metadata
//    abort (everything), pool mode read_only (all writable bits) and fail
//    (everything), pool close (everything, and the data fd is forgotten).
//    Inserts come from the same tick as the metadata lookup that found them.
//  - Replacing an entry's writable mapping by anything else drains too
//    (defensive: the pool never does it without a revoke first).
//  - Fast-path writes set `dirty`; the JS fsync takes it and fdatasyncs
//    POOL/data, because the pool's own dirty flag never saw those writes.
//    The commit's data flush before the superblock covers provisioning
//    writes (they went through JS); fast-path writes only go to blocks
//    already mapped.
//  - Errors: a failed or short pread/pwrite falls back to JS, which redoes
//    the request and reports (or handles) the error as it always did.
//
// Large reads go around the host page cache: a read of FP_DIRECT_MIN bytes
// or more, into a buffer the read handler aligned (fuse-native.patch's
// read_buf), with every piece FP_DIRECT_ALIGN-aligned, is a pread on a second
// descriptor of POOL/data opened O_DIRECT (`dfd`). Why: a buffered read
// copies each byte twice in this process's CPU time (page cache -> our
// buffer -> the FUSE request), and on the 2-vCPU machines measured that copy
// out of the page cache was half of all CPU time during a sequential read
// (perf: _copy_to_iter under filemap_read). O_DIRECT lets the disk fill our
// buffer itself. It stays coherent with the buffered writes on the other
// descriptor: the kernel writes back dirty pages of the range before a direct
// read. Small reads stay buffered (random 4 KiB reads gain from the cache),
// and so do reads of blocks shared with a snapshot (entries without the
// writable bit): all the devices sharing a block then share its cached copy,
// and copy-on-write, which reads the whole old block, finds it in memory.
// (Measured: with every large read direct, copy-on-write after a sequential
// read of the snapshot ran at 0.8x qsd, whose buffered reads leave the old
// blocks cached; without the seq read first it ran at 1.35-1.45x.)
// A filesystem that refuses O_DIRECT (tmpfs) leaves `dfd` at -1; a direct
// read that fails is retried buffered.
//
// fsync: while JS says the pool is `clean` (no metadata change and no data
// written through JS since the last durable point), an fsync of a device
// file is one fdatasync of POOL/data, done here (fp_fsync). JS clears
// `clean` synchronously on any change, before the request that made it is
// answered, so an fsync that finds it set covers every write answered
// before it. A failed fdatasync is kept in `flush_errno` (sticky, and it
// turns `clean` off): the request falls back to JS, which takes the errno
// and fails the pool's flushes as if its own fdatasync had failed.
//
// Early writeback: after every FP_WRITEBACK_KICK bytes of writes (fast-path
// ones, and the JS path's, which it reports through fastpath_count_written),
// a helper thread starts writeback of all of POOL/data's dirty pages
// (sync_file_range WRITE: it submits the I/O and does not wait). Why: a
// filesystem above flushes seldom (xfs at a log force, a sync), and until
// then our writes only dirty the host page cache; the flush's fdatasync
// then wrote hundreds of MB while the loop device, which sends one request
// at a time, waited for it. Started early, that writeback overlaps the
// writes that come before the flush. The helper marks itself busy while it
// uses the data file's descriptor, and fastpath_configure (before the file
// closes) waits until it is not; it stays out of the epochs, so the drains
// of revokes never wait for a writeback submission.
//
// Written blocks: every fast-path write also sets its data blocks' bits in
// `written` (one bit per data block of the pool when configured; a block
// past that, after the pool grew, is not tracked). At each commit JS takes
// and clears them (fastpath_take_written) and, once the commit made them
// durable, drops those blocks from the host page cache (src/pool/pool.ts
// dropWritten says why). Only a hint: a bit set by a write still in flight
// may be taken early, and the kernel keeps pages that are dirty again.
//
// Speculative entries (src/pool/pool.ts provisions blocks ahead of a
// sequential writer): an entry may carry a "speculative" bit; every
// fast-path write marks the slots it wrote in `touched` before it leaves its
// epoch. JS resets a slot's mark before it publishes a speculative entry
// there (fresh), and asks fastpath_settle which speculative entries were
// written: the unwritten ones are removed and drained first, and the mark
// read again after the drain, so a write that saw the entry is never
// missed. A speculative entry evicted by an insert is drained and reported
// the same way. A stray mark (a writer of the slot's previous entry) can
// only make JS keep a block it could have unmapped.

#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <stdio.h>
#include <sched.h>
#include <stdint.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FP_TABLE_BITS 17
#define FP_TABLE_SIZE (1u << FP_TABLE_BITS)
#define FP_DEV_STRIDE 40503u
#define FP_DEVS 64
#define FP_NAME_MAX 256
#define FP_MAX_PIECES 32
/** dm-thin device ids are 24-bit; handles are dev + 1. */
#define FP_MAX_HANDLE (1u << 24)
#define FP_VB_BITS 40
#define FP_MISS INT32_MIN
/** Reads this large or larger go through the O_DIRECT descriptor. */
#define FP_DIRECT_MIN (64u * 1024)
/** Offset, length and buffer alignment for those reads (what ext4 and xfs on 4Kn or 512e disks accept). */
#define FP_DIRECT_ALIGN 4096u
/** Fast-path bytes written between two early-writeback kicks. */
#define FP_WRITEBACK_KICK (8u * 1024 * 1024)
/** Buffered reads this large or larger are copied by two threads (fp_split). */
#define FP_SPLIT_MIN (512u * 1024)

typedef struct {
  _Atomic uint32_t seq;
  /** 0: empty; else (dev + 1) << FP_VB_BITS | vblock. */
  _Atomic uint64_t key;
  /** data block << 2 | speculative << 1 | writable. */
  _Atomic uint64_t val;
} fp_entry_t;

typedef struct {
  /** Bytes; 0 = no record. Stored last (release) when a record is set. */
  _Atomic uint64_t size;
  /** dev + 1. */
  _Atomic uint32_t handle;
  /** Rewritten only while size is 0 and drained. */
  char name[FP_NAME_MAX];
} fp_dev_t;

static struct {
  _Atomic int fd;
  /** POOL/data opened again with O_DIRECT, for large reads; -1 if the filesystem refuses it. */
  _Atomic int dfd;
  uint64_t block_bytes;
  fp_entry_t *table;
  /** Per slot: a fast-path write landed since JS last reset it. */
  _Atomic uint8_t *touched;
  /** One bit per data block: a fast-path write landed since JS last took it; `written_blocks` bits. */
  _Atomic uint64_t *written;
  uint64_t written_blocks;
  fp_dev_t devs[FP_DEVS];
  _Atomic uint64_t epoch;
  _Atomic int64_t inflight[2];
  _Atomic int dirty;
  _Atomic int clean;
  _Atomic int flush_errno;
  /** Fast-path bytes written since the last early-writeback kick. */
  _Atomic uint64_t unkicked;
  /** Bumped by every revoke and reconfigure: a copy-on-write read-ahead from before one is not used. */
  _Atomic uint64_t revokes;
  _Atomic uint64_t reads, writes, fallbacks, read_bytes, write_bytes, direct_reads, split_reads, writebacks, cow_reads;
} fp = { .fd = -1, .dfd = -1 };

static inline uint64_t fp_key(uint32_t handle, uint64_t vb) {
  return ((uint64_t) handle << FP_VB_BITS) | vb;
}

static inline uint32_t fp_index(uint32_t handle, uint64_t vb) {
  return (uint32_t) ((vb + (uint64_t) handle * FP_DEV_STRIDE) & (FP_TABLE_SIZE - 1));
}

static inline fp_entry_t *fp_slot(uint32_t handle, uint64_t vb) {
  return &fp.table[fp_index(handle, vb)];
}

/** A consistent copy of an entry, or 0 if JS is rewriting it. */
static int fp_read_entry(fp_entry_t *e, uint64_t *key, uint64_t *val) {
  uint32_t s1 = atomic_load_explicit(&e->seq, memory_order_acquire);
  if (s1 & 1) return 0;
  *key = atomic_load_explicit(&e->key, memory_order_relaxed);
  *val = atomic_load_explicit(&e->val, memory_order_relaxed);
  atomic_thread_fence(memory_order_acquire);
  return atomic_load_explicit(&e->seq, memory_order_relaxed) == s1;
}

/** JS thread only. */
static void fp_write_entry(fp_entry_t *e, uint64_t key, uint64_t val) {
  uint32_t s = atomic_load_explicit(&e->seq, memory_order_relaxed);
  atomic_store_explicit(&e->seq, s + 1, memory_order_relaxed);
  atomic_thread_fence(memory_order_release);
  atomic_store_explicit(&e->key, key, memory_order_relaxed);
  atomic_store_explicit(&e->val, val, memory_order_relaxed);
  atomic_store_explicit(&e->seq, s + 2, memory_order_release);
}

static unsigned fp_enter(void) {
  for (;;) {
    uint64_t e = atomic_load(&fp.epoch);
    atomic_fetch_add(&fp.inflight[e & 1], 1);
    if (atomic_load(&fp.epoch) == e) return (unsigned) (e & 1);
    atomic_fetch_sub(&fp.inflight[e & 1], 1);
  }
}

static void fp_leave(unsigned parity) {
  atomic_fetch_sub(&fp.inflight[parity], 1);
}

/** JS thread only: returns once no fast-path I/O that began before the call is running. */
static void fp_drain(void) {
  uint64_t e = atomic_fetch_add(&fp.epoch, 1);
  for (int spins = 0; atomic_load(&fp.inflight[e & 1]) != 0; spins++) {
    if (spins < 64) {
      sched_yield();
    } else {
      struct timespec ts = { 0, 20000 };
      nanosleep(&ts, NULL);
    }
  }
}

static int fp_full_io(int writing, int fd, char *buf, size_t len, off_t at) {
  while (len > 0) {
    ssize_t n = writing ? pwrite(fd, buf, len, at) : pread(fd, buf, len, at);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    buf += n;
    len -= (size_t) n;
    at += n;
  }
  return 0;
}

static inline bool fp_aligned(uint64_t v) {
  return v % FP_DIRECT_ALIGN == 0;
}

/** 0 if an O_DIRECT read filled the piece; else the caller reads it buffered. */
static int fp_direct_read(int dfd, char *buf, size_t len, off_t at) {
  if (!fp_aligned((uintptr_t) buf) || !fp_aligned(len) || !fp_aligned((uint64_t) at)) return -1;
  if (fp_full_io(0, dfd, buf, len, at) != 0) return -1;
  atomic_fetch_add_explicit(&fp.direct_reads, 1, memory_order_relaxed);
  return 0;
}

/** The device's size if the handle's record is this path's device, else 0. */
static uint64_t fp_device_size(const char *path, uint32_t handle) {
  fp_dev_t *d = &fp.devs[handle % FP_DEVS];
  uint64_t size = atomic_load_explicit(&d->size, memory_order_acquire);
  if (size == 0 || atomic_load(&d->handle) != handle || path[0] != '/' || strcmp(path + 1, d->name) != 0) return 0;
  return size;
}

static inline void fp_mark_written(uint64_t block) {
  if (block >= fp.written_blocks) return;
  _Atomic uint64_t *word = &fp.written[block >> 6];
  uint64_t bit = (uint64_t) 1 << (block & 63);
  // Read first: a sequential writer hits the same word 64 times.
  if (!(atomic_load_explicit(word, memory_order_relaxed) & bit)) atomic_fetch_or_explicit(word, bit, memory_order_relaxed);
}

/** Where a request lies in POOL/data: up to FP_MAX_PIECES contiguous pieces. */
typedef struct {
  off_t at[FP_MAX_PIECES];
  size_t len[FP_MAX_PIECES];
  int n;
  /** Some block is shared with a snapshot (no writable bit). */
  bool shared;
  /** A write missed on this shared data block (+1; 0: none) of virtual block cow_vb: JS will copy it. */
  uint64_t cow_block, cow_vb;
} fp_plan_t;

/** 0 if every block of the request is in the table (and writable, for a write), else FP_MISS. */
static int fp_plan(int writing, const char *path, uint32_t handle, size_t len, off_t off, fp_plan_t *plan) {
  plan->cow_block = 0;
  uint64_t size = fp_device_size(path, handle);
  if (size == 0) return FP_MISS;
  if (len == 0 || off < 0 || (uint64_t) off + len > size) return FP_MISS;
  uint64_t bb = fp.block_bytes;
  plan->n = 0;
  plan->shared = false;
  for (size_t done = 0; done < len;) {
    uint64_t pos = (uint64_t) off + done;
    uint64_t vb = pos / bb;
    uint64_t within = pos % bb;
    size_t piece = (size_t) (bb - within < len - done ? bb - within : len - done);
    uint64_t key, val;
    if (!fp_read_entry(fp_slot(handle, vb), &key, &val) || key != fp_key(handle, vb)) return FP_MISS;
    if (!(val & 1)) {
      if (writing) {
        plan->cow_block = (val >> 2) + 1;
        plan->cow_vb = vb;
        return FP_MISS;
      }
      plan->shared = true;
    }
    if (writing) {
      atomic_store_explicit(&fp.touched[fp_index(handle, vb)], 1, memory_order_relaxed);
      fp_mark_written(val >> 2);
    }
    off_t where = (off_t) ((val >> 2) * bb + within);
    int n = plan->n;
    if (n > 0 && plan->at[n - 1] + (off_t) plan->len[n - 1] == where) {
      plan->len[n - 1] += piece;
    } else {
      if (n == FP_MAX_PIECES) return FP_MISS;
      plan->at[n] = where;
      plan->len[n] = piece;
      plan->n = n + 1;
    }
    done += piece;
  }
  return 0;
}

/** Starts a detached helper thread; 1 if it runs. */
static int fp_start_detached(void *(*main)(void *)) {
  pthread_t t;
  pthread_attr_t attr;
  pthread_attr_init(&attr);
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  int ok = pthread_create(&t, &attr, main, NULL) == 0;
  pthread_attr_destroy(&attr);
  return ok;
}

static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int started, kicked;
  /** The descriptor the helper is using (-1: none); fastpath_configure waits for -1. */
  int busy_fd;
} fp_wb = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, -1 };

static void *fp_wb_main(void *unused) {
  (void) unused;
  pthread_mutex_lock(&fp_wb.mu);
  for (;;) {
    while (!fp_wb.kicked) pthread_cond_wait(&fp_wb.cv, &fp_wb.mu);
    fp_wb.kicked = 0;
    // Read under the mutex: fastpath_configure sets fp.fd to -1 before it waits.
    int fd = atomic_load(&fp.fd);
    fp_wb.busy_fd = fd;
    pthread_mutex_unlock(&fp_wb.mu);
    if (fd >= 0 && sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE) == 0) atomic_fetch_add_explicit(&fp.writebacks, 1, memory_order_relaxed);
    pthread_mutex_lock(&fp_wb.mu);
    fp_wb.busy_fd = -1;
    pthread_cond_broadcast(&fp_wb.cv);
  }
  return NULL;
}

/** Counts fast-path bytes written; every FP_WRITEBACK_KICK of them wakes the writeback helper. */
static void fp_writeback_count(size_t len) {
  uint64_t before = atomic_fetch_add_explicit(&fp.unkicked, len, memory_order_relaxed);
  if (before + len < FP_WRITEBACK_KICK || before >= FP_WRITEBACK_KICK) return;
  atomic_store(&fp.unkicked, 0);
  pthread_mutex_lock(&fp_wb.mu);
  if (!fp_wb.started) fp_wb.started = fp_start_detached(fp_wb_main);
  fp_wb.kicked = 1;
  pthread_cond_signal(&fp_wb.cv);
  pthread_mutex_unlock(&fp_wb.mu);
}

static void fp_count(int writing, size_t len) {
  if (writing) {
    fp_writeback_count(len);
    atomic_store(&fp.dirty, 1);
    atomic_fetch_add_explicit(&fp.writes, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&fp.write_bytes, len, memory_order_relaxed);
  } else {
    atomic_fetch_add_explicit(&fp.reads, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&fp.read_bytes, len, memory_order_relaxed);
  }
}

/** Reads or writes the plan's pieces [from, to) of the request's bytes, into or from buf (the request's start). */
static int fp_plan_io(int writing, int fd, int dfd, const fp_plan_t *plan, char *buf, size_t from, size_t to) {
  size_t pos = 0;
  for (int i = 0; i < plan->n && pos < to; i++) {
    size_t a = pos > from ? pos : from;
    size_t b = pos + plan->len[i] < to ? pos + plan->len[i] : to;
    if (a < b) {
      off_t at = plan->at[i] + (off_t) (a - pos);
      int done = dfd >= 0 && fp_direct_read(dfd, buf + a, b - a, at) == 0;
      if (!done && fp_full_io(writing, fd, buf + a, b - a, at) != 0) return -1;
    }
    pos += plan->len[i];
  }
  return 0;
}

// Split reads. A large buffered read (blocks shared with a snapshot, which
// stay in the page cache: see above) is one copy out of the page cache, and
// that copy ran at well under memory speed on the VMs measured (perf: half
// of all CPU in it, the disk idle). The loop driver sends one request at a
// time, so the second vCPU sat idle: a helper thread now copies the second
// half while the FUSE thread copies the first. One helper, one split at a
// time; a read that finds it busy does all of it itself. The FUSE thread
// waits for the helper inside its epoch, so a drain still covers the copy.
// Only reads of FP_SPLIT_MIN or more: waking the helper costs 30-50 us on
// these VMs, about what copying 64 KiB costs, so smaller reads stay whole.
// (Reads go buffered here also where the filesystem refuses O_DIRECT.)
static struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int started;
  _Atomic int claimed;
  int queued, done, failed;
  int fd;
  const fp_plan_t *plan;
  char *buf;
  size_t from, to;
} fp_split = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER };

static void *fp_split_main(void *unused) {
  (void) unused;
  pthread_mutex_lock(&fp_split.mu);
  for (;;) {
    while (!fp_split.queued) pthread_cond_wait(&fp_split.cv, &fp_split.mu);
    fp_split.queued = 0;
    pthread_mutex_unlock(&fp_split.mu);
    int failed = fp_plan_io(0, fp_split.fd, -1, fp_split.plan, fp_split.buf, fp_split.from, fp_split.to) != 0;
    pthread_mutex_lock(&fp_split.mu);
    fp_split.failed = failed;
    fp_split.done = 1;
    pthread_cond_broadcast(&fp_split.cv);
  }
  return NULL;
}

/** Hands bytes [from, to) to the helper; 0 if it took them (then fp_split_wait), else -1. */
static int fp_split_start(int fd, const fp_plan_t *plan, char *buf, size_t from, size_t to) {
  int expected = 0;
  if (!atomic_compare_exchange_strong(&fp_split.claimed, &expected, 1)) return -1;
  pthread_mutex_lock(&fp_split.mu);
  if (!fp_split.started) fp_split.started = fp_start_detached(fp_split_main);
  if (!fp_split.started) {
    pthread_mutex_unlock(&fp_split.mu);
    atomic_store(&fp_split.claimed, 0);
    return -1;
  }
  fp_split.fd = fd;
  fp_split.plan = plan;
  fp_split.buf = buf;
  fp_split.from = from;
  fp_split.to = to;
  fp_split.done = 0;
  fp_split.queued = 1;
  pthread_cond_broadcast(&fp_split.cv);
  pthread_mutex_unlock(&fp_split.mu);
  return 0;
}

/** 0 if the helper's part succeeded. */
static int fp_split_wait(void) {
  pthread_mutex_lock(&fp_split.mu);
  while (!fp_split.done) pthread_cond_wait(&fp_split.cv, &fp_split.mu);
  int failed = fp_split.failed;
  pthread_mutex_unlock(&fp_split.mu);
  atomic_store(&fp_split.claimed, 0);
  return failed ? -1 : 0;
}

// Copy-on-write read-ahead. A partial write to a block shared with a
// snapshot goes to JS, which copies the whole old block into a new one: a
// 64 KiB read, from disk when cold (120-170 us here), that began only once
// JS had woken and done its own lookups. Now the FUSE thread that hands
// such a write to JS reads the old block itself while it waits for JS's
// answer (fc_wait_reply calls fp_cow_read_ahead right after the hand-off),
// into one of FP_COW_SLOTS buffers; JS's copy takes it from there
// (fastpath_cow_data) instead of reading, so the wake-up and JS's work
// overlap the read. JS uses a slot only if nothing was revoked since the
// FUSE thread looked the block up (`revokes`: every unmap, discard,
// snapshot and delete revokes first) and JS's own lookup gives the same
// data block, still shared: a shared block is never written in place, so
// the slot holds what JS would have read. A slot is JS's while it copies
// (state 3); its thread frees it only after JS answered the request.
#define FP_COW_SLOTS 16

typedef struct {
  /** 0 free, 1 reading, 2 ready, 3 being copied by JS. */
  _Atomic int state;
  uint32_t handle;
  uint64_t vb, block, revokes;
  char *buf;
  size_t cap;
} fp_cow_slot_t;

static fp_cow_slot_t fp_cow_slots[FP_COW_SLOTS];
/** Set by a write that missed on a shared block, for this thread's fc_wait_reply. */
static __thread struct { int set; uint32_t handle; uint64_t vb, block, revokes; } fp_cow_next;
static __thread int fp_cow_mine = -1;

/** In the FUSE thread, right after it handed a write to JS: reads the shared block JS will copy. */
static void fp_cow_read_ahead(void) {
  if (!fp_cow_next.set) return;
  fp_cow_next.set = 0;
  uint64_t bb = fp.block_bytes;
  for (int i = 0; i < FP_COW_SLOTS; i++) {
    fp_cow_slot_t *slot = &fp_cow_slots[i];
    int expected = 0;
    if (!atomic_compare_exchange_strong(&slot->state, &expected, 1)) continue;
    if (slot->cap < bb) {
      free(slot->buf);
      slot->buf = malloc(bb);
      slot->cap = slot->buf != NULL ? bb : 0;
    }
    slot->handle = fp_cow_next.handle;
    slot->vb = fp_cow_next.vb;
    slot->block = fp_cow_next.block;
    slot->revokes = fp_cow_next.revokes;
    unsigned parity = fp_enter();
    int fd = atomic_load(&fp.fd);
    int ok = slot->cap >= bb && fd >= 0 && fp_full_io(0, fd, slot->buf, bb, (off_t) (slot->block * bb)) == 0;
    fp_leave(parity);
    atomic_store(&slot->state, ok ? 2 : 0);
    fp_cow_mine = ok ? i : -1;
    return;
  }
}

/** In the FUSE thread, once JS answered: frees this thread's slot (after JS is done copying from it). */
static void fp_cow_release(void) {
  if (fp_cow_mine < 0) return;
  fp_cow_slot_t *slot = &fp_cow_slots[fp_cow_mine];
  fp_cow_mine = -1;
  for (;;) {
    int expected = 2;
    if (atomic_compare_exchange_weak(&slot->state, &expected, 0)) return;
    sched_yield();
  }
}

static int fp_io_entered(int writing, const char *path, uint32_t handle, char *buf, size_t len, off_t off) {
  int fd = atomic_load(&fp.fd);
  fp_plan_t plan;
  if (fd < 0) return FP_MISS;
  // Before the lookup: a revoke after it makes the read-ahead unusable.
  uint64_t revokes = atomic_load(&fp.revokes);
  if (fp_plan(writing, path, handle, len, off, &plan) != 0) {
    if (plan.cow_block && len < fp.block_bytes) {
      fp_cow_next.set = 1;
      fp_cow_next.handle = handle;
      fp_cow_next.vb = plan.cow_vb;
      fp_cow_next.block = plan.cow_block - 1;
      fp_cow_next.revokes = revokes;
    }
    return FP_MISS;
  }
  bool large = !writing && len >= FP_DIRECT_MIN;
  int dfd = large && !plan.shared ? atomic_load(&fp.dfd) : -1;
  size_t half = large && dfd < 0 && len >= FP_SPLIT_MIN ? len / 2 / FP_DIRECT_ALIGN * FP_DIRECT_ALIGN : 0;
  bool split = half > 0 && fp_split_start(fd, &plan, buf, half, len) == 0;
  int rc = fp_plan_io(writing, fd, dfd, &plan, buf, 0, split ? half : len);
  if (split) {
    if (fp_split_wait() != 0) rc = -1;
    atomic_fetch_add_explicit(&fp.split_reads, 1, memory_order_relaxed);
  }
  if (rc != 0) return FP_MISS;
  fp_count(writing, len);
  return (int) len;
}

/** The byte count if the fast path served the request, else FP_MISS (then JS must). */
static int fp_io(int writing, const char *path, struct fuse_file_info *info, char *buf, size_t len, off_t off) {
  if (atomic_load_explicit(&fp.fd, memory_order_relaxed) < 0 || info == NULL) return FP_MISS;
  if (info->fh == 0 || info->fh >= FP_MAX_HANDLE) return FP_MISS;
  unsigned parity = fp_enter();
  int res = fp_io_entered(writing, path, (uint32_t) info->fh, buf, len, off);
  fp_leave(parity);
  if (res == FP_MISS) atomic_fetch_add_explicit(&fp.fallbacks, 1, memory_order_relaxed);
  return res;
}

/** 0 if the fast path made the device durable (one fdatasync), else FP_MISS (then JS must). */
static int fp_fsync(const char *path, struct fuse_file_info *info) {
  if (atomic_load_explicit(&fp.fd, memory_order_relaxed) < 0 || info == NULL) return FP_MISS;
  if (info->fh == 0 || info->fh >= FP_MAX_HANDLE || !atomic_load(&fp.clean)) return FP_MISS;
  unsigned parity = fp_enter();
  int res = FP_MISS;
  int fd = atomic_load(&fp.fd);
  if (fd >= 0 && atomic_load(&fp.clean) && fp_device_size(path, (uint32_t) info->fh) != 0) {
    // Taken before the fdatasync: a write completing during it marks it again.
    atomic_store(&fp.dirty, 0);
    int rc;
    do {
      rc = fdatasync(fd);
    } while (rc != 0 && errno == EINTR);
    if (rc == 0) {
      res = 0;
    } else {
      atomic_store(&fp.clean, 0);
      atomic_store(&fp.dirty, 1);
      int expected = 0;
      atomic_compare_exchange_strong(&fp.flush_errno, &expected, errno ? errno : EIO);
    }
  }
  fp_leave(parity);
  return res;
}

// ------------------------------------------------------------- N-API (JS thread)

static double fp_arg_double(napi_env env, napi_value v) {
  double d = 0;
  napi_get_value_double(env, v, &d);
  return d;
}

/** A second, O_DIRECT descriptor of the file behind fd, or -1 (tmpfs and some others refuse O_DIRECT). */
static int fp_open_direct(int fd) {
  char path[64];
  snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  int dfd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
  return dfd >= 0 ? dfd : -1;
}

/** fastpath_configure(fd, blockBytes, nrBlocks): fd -1 turns the fast path off (drains, empties the table). */
NAPI_METHOD(fastpath_configure) {
  NAPI_ARGV(3)
  NAPI_ARGV_INT32(fd, 0)
  NAPI_ARGV_UINT32(block_bytes, 1)
  uint64_t nr_blocks = (uint64_t) fp_arg_double(env, argv[2]);
  atomic_store(&fp.fd, -1);
  atomic_store(&fp.clean, 0);
  for (int i = 0; i < FP_DEVS; i++) atomic_store(&fp.devs[i].size, 0);
  atomic_fetch_add(&fp.revokes, 1);
  fp_drain();
  pthread_mutex_lock(&fp_wb.mu);
  while (fp_wb.busy_fd >= 0) pthread_cond_wait(&fp_wb.cv, &fp_wb.mu);
  pthread_mutex_unlock(&fp_wb.mu);
  int old_dfd = atomic_exchange(&fp.dfd, -1);
  if (old_dfd >= 0) close(old_dfd);
  if (fp.table != NULL) {
    for (uint32_t i = 0; i < FP_TABLE_SIZE; i++) fp_write_entry(&fp.table[i], 0, 0);
  }
  if (fd < 0 || block_bytes == 0) return NULL;
  if (fp.table == NULL) {
    fp.table = calloc(FP_TABLE_SIZE, sizeof(fp_entry_t));
    fp.touched = calloc(FP_TABLE_SIZE, sizeof(_Atomic uint8_t));
    if (fp.table == NULL || fp.touched == NULL) {
      napi_throw_error(env, NULL, "fast path: cannot allocate its mapping table");
      return NULL;
    }
  }
  if (fp.written_blocks < nr_blocks) {
    // Only while fd is -1 and drained: no write can be marking the old bitmap.
    free(fp.written);
    fp.written_blocks = 0;
    fp.written = calloc((nr_blocks + 63) / 64, sizeof(uint64_t));
    if (fp.written != NULL) fp.written_blocks = nr_blocks;
  }
  fp.block_bytes = block_bytes;
  atomic_store(&fp.dfd, fp_open_direct(fd));
  atomic_store(&fp.fd, fd);
  return NULL;
}

/** fastpath_enable(dev, name, size) -> bool: (re)sets the device's record; false if its slot is another device's. */
NAPI_METHOD(fastpath_enable) {
  NAPI_ARGV(3)
  NAPI_ARGV_UINT32(dev, 0)
  NAPI_ARGV_UTF8(name, FP_NAME_MAX, 1)
  uint64_t size = (uint64_t) fp_arg_double(env, argv[2]);
  napi_value result;
  uint32_t handle = dev + 1;
  fp_dev_t *d = &fp.devs[handle % FP_DEVS];
  int ok = handle < FP_MAX_HANDLE && strlen(name) < FP_NAME_MAX - 1 && fp.table != NULL;
  uint64_t cur = atomic_load(&d->size);
  if (ok && cur != 0 && atomic_load(&d->handle) != handle) ok = 0;
  if (ok && !(cur == size && strcmp(d->name, name) == 0)) {
    if (cur != 0) {
      atomic_store(&d->size, 0);
      fp_drain();
    }
    atomic_store(&d->handle, handle);
    strcpy(d->name, name);
    atomic_store_explicit(&d->size, size, memory_order_release);
  }
  napi_get_boolean(env, ok, &result);
  return result;
}

static napi_value fp_triple(napi_env env, double a, double b, double c) {
  napi_value arr, v;
  napi_create_array_with_length(env, 3, &arr);
  double xs[3] = { a, b, c };
  for (uint32_t i = 0; i < 3; i++) {
    napi_create_double(env, xs[i], &v);
    napi_set_element(env, arr, i, v);
  }
  return arr;
}

/**
 * fastpath_insert(dev, vblock, dblock, writable, speculative, fresh) -> null |
 * [dev, vblock, touched]: the pool saw this mapping just now. fresh: reset
 * the slot's write mark first (a new speculative entry). If the insert
 * evicted another key's speculative entry, answers it and whether it was
 * written (after draining).
 */
NAPI_METHOD(fastpath_insert) {
  NAPI_ARGV(6)
  NAPI_ARGV_UINT32(dev, 0)
  uint64_t vb = (uint64_t) fp_arg_double(env, argv[1]);
  uint64_t db = (uint64_t) fp_arg_double(env, argv[2]);
  bool writable = false, speculative = false, fresh = false;
  napi_get_value_bool(env, argv[3], &writable);
  napi_get_value_bool(env, argv[4], &speculative);
  napi_get_value_bool(env, argv[5], &fresh);
  uint32_t handle = dev + 1;
  fp_dev_t *d = &fp.devs[handle % FP_DEVS];
  napi_value none;
  napi_get_null(env, &none);
  if (fp.table == NULL || vb >= ((uint64_t) 1 << FP_VB_BITS) || atomic_load(&d->size) == 0 || atomic_load(&d->handle) != handle) return none;
  uint32_t idx = fp_index(handle, vb);
  fp_entry_t *e = &fp.table[idx];
  uint64_t key = fp_key(handle, vb);
  uint64_t val = (db << 2) | (speculative ? 2 : 0) | (writable ? 1 : 0);
  uint64_t old_key = atomic_load(&e->key);
  uint64_t old_val = atomic_load(&e->val);
  napi_value evicted = none;
  if (old_key != 0 && old_key != key && (old_val & 2)) {
    fp_write_entry(e, 0, 0);
    fp_drain();
    int was = atomic_load(&fp.touched[idx]) != 0;
    evicted = fp_triple(env, (double) ((old_key >> FP_VB_BITS) - 1), (double) (old_key & (((uint64_t) 1 << FP_VB_BITS) - 1)), was);
  }
  if (fresh) atomic_store(&fp.touched[idx], 0);
  fp_write_entry(e, key, val);
  if (old_key == key && (old_val & 1) && (old_val >> 2) != db) fp_drain();
  return evicted;
}

/**
 * fastpath_settle(pairs) -> number[]: pairs = [dev, vblock, dev, vblock, ...]
 * of speculative entries. Per pair: 1 = nothing wrote it (the entry is gone
 * and no fast-path write can reach it), 0 = written (it stays, no longer
 * speculative), 2 = not in the table as a speculative entry (JS decides).
 */
NAPI_METHOD(fastpath_settle) {
  NAPI_ARGV(1)
  uint32_t n = 0;
  napi_get_array_length(env, argv[0], &n);
  n /= 2;
  uint8_t *res = calloc(n ? n : 1, 1);
  uint32_t *idxs = calloc(n ? n : 1, sizeof(uint32_t));
  if (res == NULL || idxs == NULL) {
    free(res);
    free(idxs);
    napi_throw_error(env, NULL, "fast path: out of memory settling speculative entries");
    return NULL;
  }
  for (uint32_t i = 0; i < n && fp.table != NULL; i++) {
    napi_value a, b;
    napi_get_element(env, argv[0], 2 * i, &a);
    napi_get_element(env, argv[0], 2 * i + 1, &b);
    uint32_t handle = (uint32_t) fp_arg_double(env, a) + 1;
    uint64_t vb = (uint64_t) fp_arg_double(env, b);
    uint32_t idx = fp_index(handle, vb);
    fp_entry_t *e = &fp.table[idx];
    uint64_t key = atomic_load(&e->key), val = atomic_load(&e->val);
    idxs[i] = idx;
    if (key != fp_key(handle, vb) || !(val & 2)) {
      res[i] = 2;
    } else if (atomic_load(&fp.touched[idx])) {
      fp_write_entry(e, key, val & ~(uint64_t) 2);
      res[i] = 0;
    } else {
      fp_write_entry(e, 0, 0);
      res[i] = 1;
    }
  }
  if (fp.table == NULL) memset(res, 2, n);
  fp_drain();
  napi_value out, v;
  napi_create_array_with_length(env, n, &out);
  for (uint32_t i = 0; i < n; i++) {
    // A write that read the entry before it was removed has finished now.
    if (res[i] == 1 && atomic_load(&fp.touched[idxs[i]])) res[i] = 0;
    napi_create_uint32(env, res[i], &v);
    napi_set_element(env, out, i, v);
  }
  free(res);
  free(idxs);
  return out;
}

/**
 * fastpath_revoke(dev, from, end, writesOnly) -> number[]: drops the entries of
 * dev (-1: every device) with from <= vblock < end (end -1: all), or only
 * their writable bit; a whole-device (or every-device) drop also drops the
 * record. Drains before returning. Answers the data blocks whose writable bit
 * it cleared (JS may cache them again).
 */
NAPI_METHOD(fastpath_revoke) {
  NAPI_ARGV(4)
  NAPI_ARGV_INT32(dev, 0)
  double from_d = fp_arg_double(env, argv[1]);
  double end_d = fp_arg_double(env, argv[2]);
  bool writes_only = false;
  napi_get_value_bool(env, argv[3], &writes_only);
  uint64_t from = from_d < 0 ? 0 : (uint64_t) from_d;
  uint64_t end = end_d < 0 ? UINT64_MAX : (uint64_t) end_d;
  uint32_t handle = dev < 0 ? 0 : (uint32_t) dev + 1;
  int whole = from == 0 && end == UINT64_MAX;

  if (!writes_only && whole) {
    for (int i = 0; i < FP_DEVS; i++) {
      if (handle == 0 || atomic_load(&fp.devs[i].handle) == handle) atomic_store(&fp.devs[i].size, 0);
    }
  }
  napi_value cleared;
  napi_create_array(env, &cleared);
  uint32_t ncleared = 0;
  if (fp.table != NULL) {
    int by_slot = handle != 0 && end != UINT64_MAX && end - from < FP_TABLE_SIZE;
    uint64_t count = by_slot ? end - from : FP_TABLE_SIZE;
    for (uint64_t i = 0; i < count; i++) {
      fp_entry_t *e = by_slot ? fp_slot(handle, from + i) : &fp.table[i];
      uint64_t key = atomic_load(&e->key);
      uint64_t val = atomic_load(&e->val);
      if (key == 0) continue;
      uint32_t h = (uint32_t) (key >> FP_VB_BITS);
      uint64_t vb = key & (((uint64_t) 1 << FP_VB_BITS) - 1);
      if ((handle != 0 && h != handle) || vb < from || vb >= end) continue;
      if (writes_only && !(val & 1)) continue;
      if (val & 1) {
        napi_value b;
        napi_create_double(env, (double) (val >> 2), &b);
        napi_set_element(env, cleared, ncleared++, b);
      }
      if (writes_only) fp_write_entry(e, key, val & ~(uint64_t) 1);
      else fp_write_entry(e, 0, 0);
    }
  }
  atomic_fetch_add(&fp.revokes, 1);
  fp_drain();
  return cleared;
}

/** fastpath_set_clean(bool): whether an fsync may be one fdatasync done in the FUSE thread. */
NAPI_METHOD(fastpath_set_clean) {
  NAPI_ARGV(1)
  bool on = false;
  napi_get_value_bool(env, argv[0], &on);
  atomic_store(&fp.clean, on && atomic_load(&fp.flush_errno) == 0 ? 1 : 0);
  return NULL;
}

/** fastpath_take_flush_error() -> number: the errno of a failed fast-path fdatasync (0: none), once. */
NAPI_METHOD(fastpath_take_flush_error) {
  napi_value result;
  napi_create_int32(env, atomic_exchange(&fp.flush_errno, 0), &result);
  return result;
}

/** fastpath_take_written() -> number[]: [first, count, first, count, ...] runs of data blocks fast-path writes marked since the last call (then cleared). */
NAPI_METHOD(fastpath_take_written) {
  napi_value out, v;
  napi_create_array(env, &out);
  uint32_t n = 0;
  uint64_t run_start = 0, run_len = 0;
  for (uint64_t w = 0; w < (fp.written_blocks + 63) / 64; w++) {
    uint64_t bits = atomic_load_explicit(&fp.written[w], memory_order_relaxed) ? atomic_exchange(&fp.written[w], 0) : 0;
    for (unsigned i = 0; i < 64; i++) {
      if (bits & ((uint64_t) 1 << i)) {
        uint64_t b = w * 64 + i;
        if (run_len > 0 && run_start + run_len == b) {
          run_len++;
          continue;
        }
        if (run_len > 0) {
          napi_create_double(env, (double) run_start, &v);
          napi_set_element(env, out, n++, v);
          napi_create_double(env, (double) run_len, &v);
          napi_set_element(env, out, n++, v);
        }
        run_start = b;
        run_len = 1;
      }
    }
  }
  if (run_len > 0) {
    napi_create_double(env, (double) run_start, &v);
    napi_set_element(env, out, n++, v);
    napi_create_double(env, (double) run_len, &v);
    napi_set_element(env, out, n++, v);
  }
  return out;
}

/** fastpath_count_written(bytes): data written to POOL/data outside the fast path, counted toward early writeback. */
NAPI_METHOD(fastpath_count_written) {
  NAPI_ARGV(1)
  double bytes = fp_arg_double(env, argv[0]);
  if (bytes > 0 && atomic_load(&fp.fd) >= 0) fp_writeback_count((size_t) bytes);
  return NULL;
}

/**
 * fastpath_cow_data(dev, vblock, dblock, dst) -> bool: fills dst (one block)
 * with data block dblock as a FUSE thread read it ahead for a write to
 * dev:vblock, if one did and nothing was revoked since; waits for a read
 * still running. The caller has just looked dev:vblock up itself and found
 * dblock, shared. False: read it yourself.
 */
NAPI_METHOD(fastpath_cow_data) {
  NAPI_ARGV(4)
  NAPI_ARGV_UINT32(dev, 0)
  uint64_t vb = (uint64_t) fp_arg_double(env, argv[1]);
  uint64_t block = (uint64_t) fp_arg_double(env, argv[2]);
  NAPI_ARGV_BUFFER(dst, 3)
  napi_value result;
  bool ok = false;
  uint64_t bb = fp.block_bytes;
  uint64_t revokes = atomic_load(&fp.revokes);
  for (int i = 0; i < FP_COW_SLOTS && !ok && dst_len >= bb; i++) {
    fp_cow_slot_t *slot = &fp_cow_slots[i];
    int state = atomic_load(&slot->state);
    // Fields are stable from state 1 on; re-checked under state 3 below.
    if (state == 0 || slot->handle != dev + 1 || slot->vb != vb || slot->block != block || slot->revokes != revokes) continue;
    while ((state = atomic_load(&slot->state)) == 1) sched_yield();
    int expected = 2;
    if (state != 2 || !atomic_compare_exchange_strong(&slot->state, &expected, 3)) continue;
    if (slot->handle == dev + 1 && slot->vb == vb && slot->block == block && slot->revokes == revokes) {
      memcpy(dst, slot->buf, bb);
      ok = true;
      atomic_fetch_add_explicit(&fp.cow_reads, 1, memory_order_relaxed);
    }
    atomic_store(&slot->state, 2);
  }
  napi_get_boolean(env, ok, &result);
  return result;
}

/** fastpath_take_dirty() -> bool: whether fast-path writes landed since the last call. */
NAPI_METHOD(fastpath_take_dirty) {
  napi_value result;
  napi_get_boolean(env, atomic_exchange(&fp.dirty, 0) != 0, &result);
  return result;
}

/** fastpath_stats() -> [reads, writes, fallbacks, readBytes, writeBytes, directReads, splitReads, writebacks, cowReads]. */
NAPI_METHOD(fastpath_stats) {
  napi_value result;
  napi_create_array_with_length(env, 9, &result);
  uint64_t v[9] = {
    atomic_load(&fp.reads), atomic_load(&fp.writes), atomic_load(&fp.fallbacks), atomic_load(&fp.read_bytes),
    atomic_load(&fp.write_bytes), atomic_load(&fp.direct_reads), atomic_load(&fp.split_reads), atomic_load(&fp.writebacks),
    atomic_load(&fp.cow_reads),
  };
  for (uint32_t i = 0; i < 9; i++) {
    napi_value n;
    napi_create_double(env, (double) v[i], &n);
    napi_set_element(env, result, i, n);
  }
  return result;
}
