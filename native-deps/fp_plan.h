// fp_plan.h (part of fastpath.h): where a request's bytes lie in POOL/data
// (fp_plan, from the table), and the pread/pwrite of those pieces (fp_plan_io,
// O_DIRECT where it may).

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
