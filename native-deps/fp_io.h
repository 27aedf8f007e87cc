// fp_io.h (part of fastpath.h): the handlers the patched fuse-native.c calls
// in FUSE threads: fp_io for reads and writes, fp_fsync for an fsync.

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
