/*
 * thinfuse_native: the few Linux system calls Node's fs module lacks.
 *
 *   punchHole(fd, offset, length)              fallocate(PUNCH_HOLE|KEEP_SIZE), sync
 *   punchHoleAsync(fd, offset, length)         the same on the libuv threadpool -> Promise<void>
 *   dropCacheAsync(fd, offset, length)         posix_fadvise(DONTNEED) on the threadpool -> Promise<void>
 *   zeroRange(fd, offset, length)              fallocate(ZERO_RANGE|KEEP_SIZE), sync
 *   fallocate(fd, mode, offset, length)        the raw call, sync
 *   copyFileRange(fdIn, offIn, fdOut, offOut, length)
 *                                              copy_file_range loop on the threadpool -> Promise<number>
 *   flock(fd, exclusive, nonBlocking)          true if taken, false on EWOULDBLOCK with nonBlocking
 *   funlock(fd)                                flock(LOCK_UN)
 *   FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
 *
 * Failures throw (or reject with) an Error whose `code` is the errno name
 * ("ENOSPC", "EOPNOTSUPP", ...), `errno` the positive errno number and
 * `syscall` the failing call, like the errors of Node's fs module.
 * Bad arguments throw a TypeError / RangeError with code ERR_INVALID_ARG_TYPE /
 * ERR_OUT_OF_RANGE.
 *
 * Offsets and lengths are JS numbers: non-negative integers up to
 * Number.MAX_SAFE_INTEGER (2^53 - 1); they are converted through a double,
 * never through int32.
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8

#include <errno.h>
#include <sys/socket.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/types.h>
#include <unistd.h>

#include <node_api.h>

#define MAX_SAFE_INTEGER 9007199254740991.0 /* 2^53 - 1 */
/* One copy_file_range call copies at most this much, so a huge request cannot
 * hit the kernel's per-call ssize_t / MAX_RW_COUNT limits in surprising ways. */
#define COPY_CHUNK ((size_t)1 << 30)

/* ------------------------------------------------------------------ errno */

static const char *errno_name(int err) {
  switch (err) {
#define E(x) case x: return #x;
    E(EPERM) E(ENOENT) E(ESRCH) E(EINTR) E(EIO) E(ENXIO) E(E2BIG) E(ENOEXEC)
    E(EBADF) E(ECHILD) E(EAGAIN) E(ENOMEM) E(EACCES) E(EFAULT) E(EBUSY)
    E(EEXIST) E(EXDEV) E(ENODEV) E(ENOTDIR) E(EISDIR) E(EINVAL) E(ENFILE)
    E(EMFILE) E(ENOTTY) E(ETXTBSY) E(EFBIG) E(ENOSPC) E(ESPIPE) E(EROFS)
    E(EMLINK) E(EPIPE) E(EDOM) E(ERANGE) E(EDEADLK) E(ENAMETOOLONG) E(ENOLCK)
    E(ENOSYS) E(ENOTEMPTY) E(ELOOP) E(EOVERFLOW) E(EOPNOTSUPP) E(EDQUOT)
    E(ESTALE) E(EREMOTEIO) E(ECANCELED) E(ENODATA) E(EBADMSG) E(ETIMEDOUT)
    E(ENOTCONN) E(ENOTSOCK) E(ENOMEDIUM) E(EUCLEAN)
#undef E
    default: return NULL;
  }
}

/* Builds Error(`${syscall}: ${strerror} (${code})`) with code/errno/syscall. */
static napi_value make_errno_error(napi_env env, int err, const char *syscall) {
  char codebuf[32];
  const char *code = errno_name(err);
  if (code == NULL) {
    snprintf(codebuf, sizeof codebuf, "E%d", err);
    code = codebuf;
  }
  char msgbuf[256];
  snprintf(msgbuf, sizeof msgbuf, "%s: %s (%s)", syscall, strerror(err), code);

  napi_value msg, codev, errv, sysv, error;
  napi_create_string_utf8(env, msgbuf, NAPI_AUTO_LENGTH, &msg);
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &codev);
  napi_create_error(env, codev, msg, &error);
  napi_create_int32(env, err, &errv);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sysv);
  napi_set_named_property(env, error, "errno", errv);
  napi_set_named_property(env, error, "syscall", sysv);
  return error;
}

static void throw_errno(napi_env env, int err, const char *syscall) {
  napi_throw(env, make_errno_error(env, err, syscall));
}

/* -------------------------------------------------------------- arguments */

/* Every helper returns false with a JS exception pending on failure. */

static bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv,
                     const char *fn) {
  size_t argc = want;
  if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) return false;
  if (argc < want) {
    char buf[128];
    snprintf(buf, sizeof buf, "%s: expected %zu arguments, got %zu", fn, want, argc);
    napi_throw_type_error(env, "ERR_MISSING_ARGS", buf);
    return false;
  }
  return true;
}

static bool get_number(napi_env env, napi_value v, const char *fn, const char *name, double *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return false;
  if (t != napi_number) {
    char buf[160];
    snprintf(buf, sizeof buf, "%s: \"%s\" must be a number", fn, name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", buf);
    return false;
  }
  if (napi_get_value_double(env, v, out) != napi_ok) return false;
  return true;
}

static bool get_fd(napi_env env, napi_value v, const char *fn, const char *name, int *out) {
  double d;
  if (!get_number(env, v, fn, name, &d)) return false;
  if (!isfinite(d) || d != floor(d) || d < 0 || d > 2147483647.0) {
    char buf[160];
    snprintf(buf, sizeof buf, "%s: \"%s\" must be a file descriptor (non-negative int32)", fn, name);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", buf);
    return false;
  }
  *out = (int)d;
  return true;
}

/* Non-negative integer up to 2^53 - 1, as int64. */
static bool get_u53(napi_env env, napi_value v, const char *fn, const char *name, int64_t *out) {
  double d;
  if (!get_number(env, v, fn, name, &d)) return false;
  if (!isfinite(d) || d != floor(d) || d < 0 || d > MAX_SAFE_INTEGER) {
    char buf[200];
    snprintf(buf, sizeof buf,
             "%s: \"%s\" must be an integer in [0, 2^53 - 1], got %.17g", fn, name, d);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", buf);
    return false;
  }
  *out = (int64_t)d;
  return true;
}

static bool get_bool(napi_env env, napi_value v, const char *fn, const char *name, bool *out) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return false;
  if (t != napi_boolean) {
    char buf[160];
    snprintf(buf, sizeof buf, "%s: \"%s\" must be a boolean", fn, name);
    napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", buf);
    return false;
  }
  return napi_get_value_bool(env, v, out) == napi_ok;
}

static bool check_end(napi_env env, int64_t offset, int64_t length, const char *fn) {
  if ((double)offset + (double)length > MAX_SAFE_INTEGER + 1.0) {
    char buf[160];
    snprintf(buf, sizeof buf, "%s: offset + length exceeds 2^53", fn);
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", buf);
    return false;
  }
  return true;
}

static napi_value undefined(napi_env env) {
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

/* -------------------------------------------------------------- fallocate */

/* fallocate, retried on EINTR. Returns 0 or an errno. */
static int do_fallocate(int fd, int mode, int64_t offset, int64_t length) {
  for (;;) {
    if (fallocate(fd, mode, (off_t)offset, (off_t)length) == 0) return 0;
    if (errno != EINTR) return errno;
  }
}

static napi_value sync_fallocate(napi_env env, napi_callback_info info, int mode, const char *fn) {
  napi_value argv[3];
  int fd;
  int64_t offset, length;
  if (!get_args(env, info, 3, argv, fn)) return NULL;
  if (!get_fd(env, argv[0], fn, "fd", &fd)) return NULL;
  if (!get_u53(env, argv[1], fn, "offset", &offset)) return NULL;
  if (!get_u53(env, argv[2], fn, "length", &length)) return NULL;
  if (!check_end(env, offset, length, fn)) return NULL;
  if (length == 0) return undefined(env); /* nothing to do; the kernel would say EINVAL */
  int err = do_fallocate(fd, mode, offset, length);
  if (err != 0) {
    throw_errno(env, err, "fallocate");
    return NULL;
  }
  return undefined(env);
}

static napi_value js_punch_hole(napi_env env, napi_callback_info info) {
  return sync_fallocate(env, info, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, "punchHole");
}

static napi_value js_zero_range(napi_env env, napi_callback_info info) {
  return sync_fallocate(env, info, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, "zeroRange");
}

/*
 * dataFrom(fd, offset) -> number: where the first data at or after offset
 * lies, by lseek(SEEK_DATA), so [offset, result) is a hole and reads as
 * zeros. The filesystem counts data written but not yet allocated
 * (delalloc) as data. No data after offset: 2^53. Any error answers offset
 * itself (nothing known), so the caller zeroes as if it did not ask.
 */
static napi_value js_data_from(napi_env env, napi_callback_info info) {
  const char *fn = "dataFrom";
  napi_value argv[2], result;
  int fd;
  int64_t offset;
  if (!get_args(env, info, 2, argv, fn)) return NULL;
  if (!get_fd(env, argv[0], fn, "fd", &fd)) return NULL;
  if (!get_u53(env, argv[1], fn, "offset", &offset)) return NULL;
  off_t next = lseek(fd, (off_t)offset, SEEK_DATA);
  double at = next >= 0 ? (double)next : errno == ENXIO ? MAX_SAFE_INTEGER + 1.0 : (double)offset;
  napi_create_double(env, at, &result);
  return result;
}

static napi_value js_fallocate(napi_env env, napi_callback_info info) {
  const char *fn = "fallocate";
  napi_value argv[4];
  int fd;
  double dmode;
  int64_t offset, length;
  if (!get_args(env, info, 4, argv, fn)) return NULL;
  if (!get_fd(env, argv[0], fn, "fd", &fd)) return NULL;
  if (!get_number(env, argv[1], fn, "mode", &dmode)) return NULL;
  if (!isfinite(dmode) || dmode != floor(dmode) || dmode < 0 || dmode > 2147483647.0) {
    napi_throw_range_error(env, "ERR_OUT_OF_RANGE", "fallocate: \"mode\" must be a non-negative int32");
    return NULL;
  }
  if (!get_u53(env, argv[2], fn, "offset", &offset)) return NULL;
  if (!get_u53(env, argv[3], fn, "length", &length)) return NULL;
  if (!check_end(env, offset, length, fn)) return NULL;
  /* Raw: a zero length goes to the kernel (which answers EINVAL). */
  int err = do_fallocate(fd, (int)dmode, offset, length);
  if (err != 0) {
    throw_errno(env, err, "fallocate");
    return NULL;
  }
  return undefined(env);
}

/* ------------------------------------------------------------- async work */

enum job_kind { JOB_PUNCH, JOB_COPY, JOB_ALLOC, JOB_DROP };

typedef struct {
  enum job_kind kind;
  napi_async_work work;
  napi_deferred deferred;
  int fd_in, fd_out;
  int64_t off_in, off_out, length;
  int64_t done;      /* bytes copied */
  int err;           /* errno, 0 on success */
  const char *syscall;
} job_t;

static void job_execute(napi_env env, void *data) {
  (void)env; /* no N-API calls on the threadpool */
  job_t *job = data;
  if (job->kind == JOB_DROP) {
    job->syscall = "posix_fadvise";
    if (job->length > 0) job->err = posix_fadvise(job->fd_in, (off_t)job->off_in, (off_t)job->length, POSIX_FADV_DONTNEED);
    return;
  }
  if (job->kind == JOB_PUNCH || job->kind == JOB_ALLOC) {
    job->syscall = "fallocate";
    int mode = job->kind == JOB_PUNCH ? FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE : FALLOC_FL_KEEP_SIZE;
    if (job->length > 0) job->err = do_fallocate(job->fd_in, mode, job->off_in, job->length);
    return;
  }
  job->syscall = "copy_file_range";
  loff_t in = (loff_t)job->off_in, out = (loff_t)job->off_out;
  while (job->done < job->length) {
    uint64_t left = (uint64_t)(job->length - job->done);
    size_t n = left > COPY_CHUNK ? COPY_CHUNK : (size_t)left;
    ssize_t r = copy_file_range(job->fd_in, &in, job->fd_out, &out, n, 0);
    if (r < 0) {
      if (errno == EINTR) continue;
      job->err = errno;
      return;
    }
    if (r == 0) return; /* end of the input file */
    job->done += r;     /* the kernel advanced in/out by r */
  }
}

static void job_complete(napi_env env, napi_status status, void *data) {
  job_t *job = data;
  if (status == napi_cancelled) {
    job->err = ECANCELED;
  }
  if (job->err != 0) {
    napi_reject_deferred(env, job->deferred, make_errno_error(env, job->err, job->syscall));
  } else if (job->kind == JOB_COPY) {
    napi_value v;
    napi_create_int64(env, job->done, &v);
    napi_resolve_deferred(env, job->deferred, v);
  } else {
    napi_resolve_deferred(env, job->deferred, undefined(env));
  }
  napi_delete_async_work(env, job->work);
  free(job);
}

/* Queues `job` (taking ownership) and returns its promise, or NULL with an
 * exception pending. */
static napi_value queue_job(napi_env env, job_t *job, const char *name) {
  napi_value promise, resource_name;
  if (napi_create_promise(env, &job->deferred, &promise) != napi_ok) {
    free(job);
    return NULL;
  }
  napi_create_string_utf8(env, name, NAPI_AUTO_LENGTH, &resource_name);
  if (napi_create_async_work(env, NULL, resource_name, job_execute, job_complete, job,
                             &job->work) != napi_ok) {
    napi_value err = make_errno_error(env, ENOMEM, "napi_create_async_work");
    napi_reject_deferred(env, job->deferred, err);
    free(job);
    return promise;
  }
  if (napi_queue_async_work(env, job->work) != napi_ok) {
    napi_value err = make_errno_error(env, ENOMEM, "napi_queue_async_work");
    napi_reject_deferred(env, job->deferred, err);
    napi_delete_async_work(env, job->work);
    free(job);
  }
  return promise;
}

/* An fallocate (or fadvise) job on the threadpool for (fd, offset, length) arguments. */
static napi_value queue_fallocate(napi_env env, napi_callback_info info, enum job_kind kind, const char *fn, const char *name) {
  napi_value argv[3];
  int fd;
  int64_t offset, length;
  if (!get_args(env, info, 3, argv, fn)) return NULL;
  if (!get_fd(env, argv[0], fn, "fd", &fd)) return NULL;
  if (!get_u53(env, argv[1], fn, "offset", &offset)) return NULL;
  if (!get_u53(env, argv[2], fn, "length", &length)) return NULL;
  if (!check_end(env, offset, length, fn)) return NULL;
  job_t *job = calloc(1, sizeof *job);
  if (job == NULL) {
    throw_errno(env, ENOMEM, fn);
    return NULL;
  }
  job->kind = kind;
  job->fd_in = fd;
  job->off_in = offset;
  job->length = length;
  return queue_job(env, job, name);
}

/*
 * preallocateAsync(fd, offset, length) -> Promise<void>: fallocate(KEEP_SIZE)
 * on the threadpool: holes in the range get allocated, unwritten (reading as
 * zeros) extents; data already there is untouched. So a later write there
 * needs no block allocation by the filesystem on the write path.
 */
static napi_value js_preallocate_async(napi_env env, napi_callback_info info) {
  return queue_fallocate(env, info, JOB_ALLOC, "preallocateAsync", "thinfuse.preallocate");
}

/*
 * dropCacheAsync(fd, offset, length) -> Promise<void>: posix_fadvise(DONTNEED)
 * on the threadpool: the range's clean pages leave the host page cache
 * (dirty ones are only queued for writeback and stay).
 */
static napi_value js_drop_cache_async(napi_env env, napi_callback_info info) {
  return queue_fallocate(env, info, JOB_DROP, "dropCacheAsync", "thinfuse.dropCache");
}

static napi_value js_punch_hole_async(napi_env env, napi_callback_info info) {
  return queue_fallocate(env, info, JOB_PUNCH, "punchHoleAsync", "thinfuse.punchHole");
}

static napi_value js_copy_file_range(napi_env env, napi_callback_info info) {
  const char *fn = "copyFileRange";
  napi_value argv[5];
  int fd_in, fd_out;
  int64_t off_in, off_out, length;
  if (!get_args(env, info, 5, argv, fn)) return NULL;
  if (!get_fd(env, argv[0], fn, "fdIn", &fd_in)) return NULL;
  if (!get_u53(env, argv[1], fn, "offIn", &off_in)) return NULL;
  if (!get_fd(env, argv[2], fn, "fdOut", &fd_out)) return NULL;
  if (!get_u53(env, argv[3], fn, "offOut", &off_out)) return NULL;
  if (!get_u53(env, argv[4], fn, "length", &length)) return NULL;
  if (!check_end(env, off_in, length, fn) || !check_end(env, off_out, length, fn)) return NULL;
  job_t *job = calloc(1, sizeof *job);
  if (job == NULL) {
    throw_errno(env, ENOMEM, fn);
    return NULL;
  }
  job->kind = JOB_COPY;
  job->fd_in = fd_in;
  job->fd_out = fd_out;
  job->off_in = off_in;
  job->off_out = off_out;
  job->length = length;
  return queue_job(env, job, "thinfuse.copyFileRange");
}

/* ------------------------------------------------------------------ flock */

static napi_value js_flock(napi_env env, napi_callback_info info) {
  const char *fn = "flock";
  napi_value argv[3];
  int fd;
  bool exclusive, non_blocking;
  if (!get_args(env, info, 3, argv, fn)) return NULL;
  if (!get_fd(env, argv[0], fn, "fd", &fd)) return NULL;
  if (!get_bool(env, argv[1], fn, "exclusive", &exclusive)) return NULL;
  if (!get_bool(env, argv[2], fn, "nonBlocking", &non_blocking)) return NULL;
  int op = (exclusive ? LOCK_EX : LOCK_SH) | (non_blocking ? LOCK_NB : 0);
  for (;;) {
    if (flock(fd, op) == 0) break;
    if (errno == EINTR) continue;
    if (non_blocking && errno == EWOULDBLOCK) {
      napi_value f;
      napi_get_boolean(env, false, &f);
      return f;
    }
    throw_errno(env, errno, "flock");
    return NULL;
  }
  napi_value t;
  napi_get_boolean(env, true, &t);
  return t;
}

static napi_value js_funlock(napi_env env, napi_callback_info info) {
  const char *fn = "funlock";
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv, fn)) return NULL;
  if (!get_fd(env, argv[0], fn, "fd", &fd)) return NULL;
  for (;;) {
    if (flock(fd, LOCK_UN) == 0) break;
    if (errno == EINTR) continue;
    throw_errno(env, errno, "flock");
    return NULL;
  }
  return undefined(env);
}

/* ------------------------------------------------------- peer credentials */

/* SO_PEERCRED of a connected unix socket: who is talking to the daemon. */
static napi_value js_peer_cred(napi_env env, napi_callback_info info) {
  const char *fn = "peerCred";
  napi_value argv[1];
  int fd;
  if (!get_args(env, info, 1, argv, fn)) return NULL;
  if (!get_fd(env, argv[0], fn, "fd", &fd)) return NULL;
  struct ucred cred;
  socklen_t len = sizeof cred;
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    throw_errno(env, errno, "getsockopt");
    return NULL;
  }
  napi_value obj, v;
  napi_create_object(env, &obj);
  napi_create_int32(env, cred.pid, &v);
  napi_set_named_property(env, obj, "pid", v);
  napi_create_uint32(env, cred.uid, &v);
  napi_set_named_property(env, obj, "uid", v);
  napi_create_uint32(env, cred.gid, &v);
  napi_set_named_property(env, obj, "gid", v);
  return obj;
}

/* ------------------------------------------------------------------- init */

static bool export_fn(napi_env env, napi_value exports, const char *name, napi_callback cb) {
  napi_value fn;
  return napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn) == napi_ok &&
         napi_set_named_property(env, exports, name, fn) == napi_ok;
}

static bool export_int(napi_env env, napi_value exports, const char *name, int32_t value) {
  napi_value v;
  return napi_create_int32(env, value, &v) == napi_ok &&
         napi_set_named_property(env, exports, name, v) == napi_ok;
}

NAPI_MODULE_INIT() {
  if (!export_fn(env, exports, "punchHole", js_punch_hole) ||
      !export_fn(env, exports, "punchHoleAsync", js_punch_hole_async) ||
      !export_fn(env, exports, "zeroRange", js_zero_range) ||
      !export_fn(env, exports, "fallocate", js_fallocate) ||
      !export_fn(env, exports, "dataFrom", js_data_from) ||
      !export_fn(env, exports, "preallocateAsync", js_preallocate_async) ||
      !export_fn(env, exports, "dropCacheAsync", js_drop_cache_async) ||
      !export_fn(env, exports, "copyFileRange", js_copy_file_range) ||
      !export_fn(env, exports, "flock", js_flock) ||
      !export_fn(env, exports, "funlock", js_funlock) ||
      !export_fn(env, exports, "peerCred", js_peer_cred) ||
      !export_int(env, exports, "FALLOC_FL_KEEP_SIZE", FALLOC_FL_KEEP_SIZE) ||
      !export_int(env, exports, "FALLOC_FL_PUNCH_HOLE", FALLOC_FL_PUNCH_HOLE) ||
      !export_int(env, exports, "FALLOC_FL_ZERO_RANGE", FALLOC_FL_ZERO_RANGE)) {
    return NULL;
  }
  return exports;
}
