/*
 * thinfuse_fs: file-system calls Node's fs module lacks, needed to unpack and
 * diff image layers (xattrs of symlinks included, device nodes, FIFOs).
 *
 *   lsetxattr(path, name, value: Buffer)     set an xattr, never following a final symlink
 *   lgetxattr(path, name) -> Buffer | null   null when the file has no such xattr (ENODATA)
 *   llistxattr(path) -> string[]             the names of the file's xattrs
 *   mknod(path, mode, major, minor)          mode carries the type (S_IFCHR, S_IFBLK, S_IFIFO)
 *
 * All calls are synchronous: each is one short system call on a local
 * filesystem. Failures throw an Error whose `code` is the errno name, `errno`
 * the positive errno number and `syscall` the failing call, like the errors
 * of Node's fs module. Bad arguments throw a TypeError (ERR_INVALID_ARG_TYPE).
 *
 * A second addon rather than more calls in thinfuse_native.c, so the pool's
 * addon stays as small as the pool needs.
 */
#define _GNU_SOURCE
#define NAPI_VERSION 8

#include <errno.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>

#include <node_api.h>

/* Longest path, xattr name and xattr value accepted (Linux: PATH_MAX 4096,
 * XATTR_NAME_MAX 255, XATTR_SIZE_MAX 65536). */
#define MAX_PATH 4096
#define MAX_NAME 256
#define MAX_VALUE 65536

/* ------------------------------------------------------------------ errno */

static const char *errno_name(int err) {
  switch (err) {
#define E(x) case x: return #x;
    E(EPERM) E(ENOENT) E(EIO) E(ENXIO) E(E2BIG) E(EBADF) E(ENOMEM) E(EACCES)
    E(EFAULT) E(EBUSY) E(EEXIST) E(EXDEV) E(ENODEV) E(ENOTDIR) E(EISDIR)
    E(EINVAL) E(ENOSPC) E(EROFS) E(EMLINK) E(ERANGE) E(ENAMETOOLONG)
    E(ENOSYS) E(ELOOP) E(EOPNOTSUPP) E(EDQUOT) E(ENODATA) E(EUCLEAN)
#undef E
    default: return NULL;
  }
}

/* Throws Error(`${syscall} ${path}: ${strerror} (${code})`) with code/errno/syscall. */
static void throw_errno(napi_env env, int err, const char *syscall, const char *path) {
  char codebuf[32];
  const char *code = errno_name(err);
  if (code == NULL) {
    snprintf(codebuf, sizeof codebuf, "E%d", err);
    code = codebuf;
  }
  char msgbuf[MAX_PATH + 256];
  snprintf(msgbuf, sizeof msgbuf, "%s %s: %s (%s)", syscall, path, strerror(err), code);

  napi_value msg, codev, errv, sysv, error;
  napi_create_string_utf8(env, msgbuf, NAPI_AUTO_LENGTH, &msg);
  napi_create_string_utf8(env, code, NAPI_AUTO_LENGTH, &codev);
  napi_create_error(env, codev, msg, &error);
  napi_create_int32(env, err, &errv);
  napi_create_string_utf8(env, syscall, NAPI_AUTO_LENGTH, &sysv);
  napi_set_named_property(env, error, "errno", errv);
  napi_set_named_property(env, error, "syscall", sysv);
  napi_throw(env, error);
}

/* -------------------------------------------------------------- arguments */

/* Every helper returns false with a JS exception pending on failure. */

static bool get_args(napi_env env, napi_callback_info info, size_t want, napi_value *argv, const char *fn) {
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

static bool type_error(napi_env env, const char *fn, const char *name, const char *what) {
  char buf[160];
  snprintf(buf, sizeof buf, "%s: \"%s\" must be %s", fn, name, what);
  napi_throw_type_error(env, "ERR_INVALID_ARG_TYPE", buf);
  return false;
}

/* A string without NUL bytes that fits in `size` bytes with its terminator. */
static bool get_string(napi_env env, napi_value v, const char *fn, const char *name, char *out, size_t size) {
  napi_valuetype t;
  if (napi_typeof(env, v, &t) != napi_ok) return false;
  if (t != napi_string) return type_error(env, fn, name, "a string");
  size_t len;
  if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) return false;
  if (len == 0 || len >= size) return type_error(env, fn, name, "a non-empty string of sane length");
  if (napi_get_value_string_utf8(env, v, out, size, &len) != napi_ok) return false;
  if (strlen(out) != len) return type_error(env, fn, name, "a string without NUL bytes");
  return true;
}

static bool get_uint(napi_env env, napi_value v, const char *fn, const char *name, unsigned int *out) {
  napi_valuetype t;
  double d;
  if (napi_typeof(env, v, &t) != napi_ok) return false;
  if (t != napi_number) return type_error(env, fn, name, "a number");
  if (napi_get_value_double(env, v, &d) != napi_ok) return false;
  if (!isfinite(d) || d != floor(d) || d < 0 || d > 4294967295.0) {
    return type_error(env, fn, name, "an unsigned 32-bit integer");
  }
  *out = (unsigned int)d;
  return true;
}

static napi_value undefined(napi_env env) {
  napi_value u;
  napi_get_undefined(env, &u);
  return u;
}

/* ----------------------------------------------------------------- xattrs */

static napi_value js_lsetxattr(napi_env env, napi_callback_info info) {
  napi_value argv[3];
  char path[MAX_PATH], name[MAX_NAME];
  if (!get_args(env, info, 3, argv, "lsetxattr") ||
      !get_string(env, argv[0], "lsetxattr", "path", path, sizeof path) ||
      !get_string(env, argv[1], "lsetxattr", "name", name, sizeof name)) {
    return NULL;
  }
  bool isBuffer = false;
  if (napi_is_buffer(env, argv[2], &isBuffer) != napi_ok) return NULL;
  if (!isBuffer) {
    type_error(env, "lsetxattr", "value", "a Buffer");
    return NULL;
  }
  void *data;
  size_t len;
  if (napi_get_buffer_info(env, argv[2], &data, &len) != napi_ok) return NULL;
  if (lsetxattr(path, name, data, len, 0) != 0) {
    throw_errno(env, errno, "lsetxattr", path);
    return NULL;
  }
  return undefined(env);
}

static napi_value js_lgetxattr(napi_env env, napi_callback_info info) {
  napi_value argv[2];
  char path[MAX_PATH], name[MAX_NAME];
  if (!get_args(env, info, 2, argv, "lgetxattr") ||
      !get_string(env, argv[0], "lgetxattr", "path", path, sizeof path) ||
      !get_string(env, argv[1], "lgetxattr", "name", name, sizeof name)) {
    return NULL;
  }
  char *value = malloc(MAX_VALUE);
  if (value == NULL) {
    throw_errno(env, ENOMEM, "lgetxattr", path);
    return NULL;
  }
  ssize_t n = lgetxattr(path, name, value, MAX_VALUE);
  int err = errno;
  if (n < 0) {
    free(value);
    if (err == ENODATA) {
      napi_value nul;
      napi_get_null(env, &nul);
      return nul;
    }
    throw_errno(env, err, "lgetxattr", path);
    return NULL;
  }
  napi_value buf;
  napi_status status = napi_create_buffer_copy(env, (size_t)n, value, NULL, &buf);
  free(value);
  return status == napi_ok ? buf : NULL;
}

static napi_value js_llistxattr(napi_env env, napi_callback_info info) {
  napi_value argv[1];
  char path[MAX_PATH];
  if (!get_args(env, info, 1, argv, "llistxattr") ||
      !get_string(env, argv[0], "llistxattr", "path", path, sizeof path)) {
    return NULL;
  }
  /* The list can grow between the sizing call and the real one: retry. */
  for (int attempt = 0; attempt < 5; attempt++) {
    ssize_t size = llistxattr(path, NULL, 0);
    if (size < 0) {
      throw_errno(env, errno, "llistxattr", path);
      return NULL;
    }
    char *list = malloc((size_t)size + 1);
    if (list == NULL) {
      throw_errno(env, ENOMEM, "llistxattr", path);
      return NULL;
    }
    ssize_t n = llistxattr(path, list, (size_t)size);
    if (n < 0) {
      int err = errno;
      free(list);
      if (err == ERANGE) continue;
      throw_errno(env, err, "llistxattr", path);
      return NULL;
    }
    napi_value names;
    napi_create_array(env, &names);
    uint32_t i = 0;
    for (ssize_t at = 0; at < n; at += (ssize_t)strlen(list + at) + 1) {
      napi_value s;
      napi_create_string_utf8(env, list + at, NAPI_AUTO_LENGTH, &s);
      napi_set_element(env, names, i++, s);
    }
    free(list);
    return names;
  }
  throw_errno(env, ERANGE, "llistxattr", path);
  return NULL;
}

/* ------------------------------------------------------------------ mknod */

static napi_value js_mknod(napi_env env, napi_callback_info info) {
  napi_value argv[4];
  char path[MAX_PATH];
  unsigned int mode, major, minor;
  if (!get_args(env, info, 4, argv, "mknod") ||
      !get_string(env, argv[0], "mknod", "path", path, sizeof path) ||
      !get_uint(env, argv[1], "mknod", "mode", &mode) ||
      !get_uint(env, argv[2], "mknod", "major", &major) ||
      !get_uint(env, argv[3], "mknod", "minor", &minor)) {
    return NULL;
  }
  if (mknod(path, (mode_t)mode, makedev(major, minor)) != 0) {
    throw_errno(env, errno, "mknod", path);
    return NULL;
  }
  return undefined(env);
}

/* ------------------------------------------------------------------- init */

static bool export_fn(napi_env env, napi_value exports, const char *name, napi_callback cb) {
  napi_value fn;
  return napi_create_function(env, name, NAPI_AUTO_LENGTH, cb, NULL, &fn) == napi_ok &&
         napi_set_named_property(env, exports, name, fn) == napi_ok;
}

NAPI_MODULE_INIT() {
  if (!export_fn(env, exports, "lsetxattr", js_lsetxattr) ||
      !export_fn(env, exports, "lgetxattr", js_lgetxattr) ||
      !export_fn(env, exports, "llistxattr", js_llistxattr) ||
      !export_fn(env, exports, "mknod", js_mknod)) {
    return NULL;
  }
  return exports;
}
