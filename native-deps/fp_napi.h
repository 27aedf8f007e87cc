// fp_napi.h (part of fastpath.h): the N-API functions JS calls (Fuse.fastPath in
// the patched index.js), all on the JS thread.

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
