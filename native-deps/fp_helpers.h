// fp_helpers.h (part of fastpath.h): the helper threads and what they share
// with FUSE threads: early writeback, the second half of split reads, and
// the copy-on-write read-ahead slots.

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

// Early writeback (fastpath.h says why): one helper, woken every
// FP_WRITEBACK_KICK bytes written.
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

// Split reads. A large buffered read (blocks shared with a snapshot, which
// stay in the page cache: see fastpath.h) is one copy out of the page cache, and
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
