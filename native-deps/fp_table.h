// fp_table.h (part of fastpath.h): the fast path's shared state `fp` (mapping
// table, device records, written-block bitmap, counters), the seqlock on
// table entries, and the epochs with which fp_drain waits out fast-path I/O.

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
