/*
 * thinfuse-ctl: send one command to a running `thinfuse serve`, in plain C.
 *
 *   thinfuse-ctl POOL OP [KEY=VALUE | KEY:=JSON ...]
 *
 * The Node CLI reaches a serving daemon the same way, but Node's start-up
 * costs ~100 ms a command; scripts that send many commands (a chain of
 * snapshots) use this instead, as `dmsetup message` is a small C program.
 *
 * The control socket protocol (src/frontends/daemon/control.ts):
 *
 *  - While `thinfuse serve POOL MNT` runs, the file POOL/socket holds two
 *    lines: the unix socket's path (under /run/thinfuse) and the daemon's pid.
 *    serve removes it when it stops; a crashed serve leaves it stale.
 *  - The socket is mode 0600 and the daemon checks the peer's credentials
 *    (SO_PEERCRED): only root and the daemon's own user may talk to it.
 *  - A request is one line of JSON, {"id":N,"op":"NAME","args":{...}}; the
 *    answer is one line, {"id":N,"ok":true,"result":VALUE} (result left out
 *    when the op returns nothing) or
 *    {"id":N,"ok":false,"error":{"code":"CODE","message":"one line"}}.
 *  - Op and argument names are those of the op table in
 *    src/frontends/ops.ts (create {name,size}, snapshot {origin,name,size?},
 *    remove {name}, status, ...); sizes and offsets are numbers of bytes.
 *
 * Arguments: KEY=VALUE sends VALUE as a JSON number when it is a plain
 * decimal integer, as true/false for `true`/`false`, else as a string; the
 * values of name, origin, message and data are always strings (a device may
 * be named 42). KEY:=JSON sends the JSON text as it is (objects, arrays).
 *
 * Output and exit status: the result as JSON on stdout (nothing for none or
 * null) and 0; an error the daemon answers, one line `thinfuse-ctl: CODE:
 * message` on stderr and 1; no daemon to talk to (no POOL/socket, a stale
 * one, permission denied), one line and 2; bad usage, 64 (EX_USAGE).
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

enum { EXIT_ERROR = 1, EXIT_NO_DAEMON = 2, EXIT_USAGE = 64 };

/* JSON nested deeper than this is refused rather than recursed into. */
enum { MAX_DEPTH = 256 };

static const char *prog = "thinfuse-ctl";

static const char USAGE[] =
    "usage: thinfuse-ctl POOL OP [KEY=VALUE | KEY:=JSON ...]\n";

static const char HELP[] =
    "\n"
    "Sends one command to the `thinfuse serve` that holds POOL, over its control\n"
    "socket (named by POOL/socket), and prints the result as JSON.\n"
    "\n"
    "OP and the KEYs are the control socket's op and argument names (the op table\n"
    "of src/frontends/ops.ts), e.g.:\n"
    "  thinfuse-ctl P create name=base size=1073741824\n"
    "  thinfuse-ctl P snapshot origin=base name=snap1\n"
    "  thinfuse-ctl P remove name=snap1\n"
    "  thinfuse-ctl P status\n"
    "Sizes and offsets are integers of bytes. VALUE goes as a JSON number when it\n"
    "is a decimal integer, as a boolean for true/false, else as a string (always\n"
    "a string for name, origin, message and data); KEY:=JSON sends raw JSON.\n"
    "\n"
    "Exit status: 0 done; 1 the daemon answered with an error (one line on stderr,\n"
    "`thinfuse-ctl: CODE: message`); 2 no serve is running for POOL; 64 bad usage.\n"
    "Without a running serve, use the thinfuse CLI.\n";

static void fail(int status, const char *fmt, ...) __attribute__((noreturn, format(printf, 2, 3)));

static void fail(int status, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "%s: ", prog);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  exit(status);
}

static void usage_fail(const char *why) __attribute__((noreturn));

static void usage_fail(const char *why) {
  fprintf(stderr, "%s: %s; %s", prog, why, USAGE);
  exit(EXIT_USAGE);
}

/* ------------------------------------------------------------ a growing buffer */

struct buf {
  char *p;
  size_t len, cap;
};

static void reserve(struct buf *b, size_t more) {
  if (b->len + more + 1 <= b->cap) return;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + more + 1) cap *= 2;
  char *p = realloc(b->p, cap);
  if (!p) fail(EXIT_ERROR, "out of memory");
  b->p = p;
  b->cap = cap;
}

static void put(struct buf *b, const char *s, size_t n) {
  reserve(b, n);
  memcpy(b->p + b->len, s, n);
  b->len += n;
  b->p[b->len] = '\0';
}

static void puts_(struct buf *b, const char *s) { put(b, s, strlen(s)); }

static void putc_(struct buf *b, char c) { put(b, &c, 1); }

/* A JSON string. Bytes >= 0x80 pass through: the daemon reads UTF-8. */
static void put_json_string(struct buf *b, const char *s) {
  putc_(b, '"');
  for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
    if (*c == '"' || *c == '\\') {
      putc_(b, '\\');
      putc_(b, (char)*c);
    } else if (*c == '\n') {
      puts_(b, "\\n");
    } else if (*c == '\t') {
      puts_(b, "\\t");
    } else if (*c < 0x20 || *c == 0x7f) {
      char esc[8];
      snprintf(esc, sizeof esc, "\\u%04x", *c);
      puts_(b, esc);
    } else {
      putc_(b, (char)*c);
    }
  }
  putc_(b, '"');
}

/* ------------------------------------------------------------ reading JSON */

static const char *skip_ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) p++;
  return p;
}

static int hex4(const char *p, const char *end) {
  if (end - p < 4) return -1;
  int v = 0;
  for (int i = 0; i < 4; i++) {
    char c = p[i];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
    if (d < 0) return -1;
    v = v * 16 + d;
  }
  return v;
}

static void put_utf8(struct buf *b, unsigned cp) {
  char u[4];
  size_t n;
  if (cp < 0x80) {
    u[0] = (char)cp, n = 1;
  } else if (cp < 0x800) {
    u[0] = (char)(0xc0 | cp >> 6), u[1] = (char)(0x80 | (cp & 0x3f)), n = 2;
  } else if (cp < 0x10000) {
    u[0] = (char)(0xe0 | cp >> 12), u[1] = (char)(0x80 | (cp >> 6 & 0x3f)), u[2] = (char)(0x80 | (cp & 0x3f)), n = 3;
  } else {
    u[0] = (char)(0xf0 | cp >> 18), u[1] = (char)(0x80 | (cp >> 12 & 0x3f)), u[2] = (char)(0x80 | (cp >> 6 & 0x3f));
    u[3] = (char)(0x80 | (cp & 0x3f)), n = 4;
  }
  put(b, u, n);
}

/*
 * Scans the JSON string at p (at its opening quote); returns the position
 * after it, or NULL if it is malformed. Decodes it into out when out is set.
 */
static const char *scan_string(const char *p, const char *end, struct buf *out) {
  if (p >= end || *p != '"') return NULL;
  for (p++; p < end; p++) {
    unsigned char c = (unsigned char)*p;
    if (c == '"') return p + 1;
    if (c < 0x20) return NULL;
    if (c != '\\') {
      if (out) putc_(out, (char)c);
      continue;
    }
    if (++p >= end) return NULL;
    const char *simple = strchr("\"\\/bfnrt", *p);
    if (*p && simple) {
      if (out) putc_(out, "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"]);
      continue;
    }
    if (*p != 'u') return NULL;
    int cp = hex4(p + 1, end);
    if (cp < 0) return NULL;
    p += 4;
    if (cp >= 0xd800 && cp < 0xdc00 && end - p > 6 && p[1] == '\\' && p[2] == 'u') {
      int lo = hex4(p + 3, end);
      if (lo >= 0xdc00 && lo < 0xe000) {
        cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
        p += 6;
      }
    }
    if (out) put_utf8(out, cp >= 0xd800 && cp < 0xe000 ? 0xfffd : (unsigned)cp);
  }
  return NULL;
}

static const char *skip_value(const char *p, const char *end, int depth);

/* Skips an object or array at p ('{' or '['). */
static const char *skip_container(const char *p, const char *end, int depth) {
  char close = *p == '{' ? '}' : ']';
  bool object = *p == '{';
  p = skip_ws(p + 1, end);
  if (p < end && *p == close) return p + 1;
  for (;;) {
    if (object) {
      p = scan_string(p, end, NULL);
      if (!p) return NULL;
      p = skip_ws(p, end);
      if (p >= end || *p != ':') return NULL;
      p = skip_ws(p + 1, end);
    }
    p = skip_value(p, end, depth + 1);
    if (!p) return NULL;
    p = skip_ws(p, end);
    if (p < end && *p == ',') {
      p = skip_ws(p + 1, end);
      continue;
    }
    return p < end && *p == close ? p + 1 : NULL;
  }
}

static const char *skip_number(const char *p, const char *end) {
  const char *start = p;
  if (p < end && *p == '-') p++;
  if (p < end && *p == '0') {
    p++;
  } else {
    if (p >= end || *p < '1' || *p > '9') return NULL;
    while (p < end && *p >= '0' && *p <= '9') p++;
  }
  if (p < end && *p == '.') {
    const char *digits = ++p;
    while (p < end && *p >= '0' && *p <= '9') p++;
    if (p == digits) return NULL;
  }
  if (p < end && (*p == 'e' || *p == 'E')) {
    p++;
    if (p < end && (*p == '+' || *p == '-')) p++;
    const char *digits = p;
    while (p < end && *p >= '0' && *p <= '9') p++;
    if (p == digits) return NULL;
  }
  return p > start ? p : NULL;
}

static const char *skip_word(const char *p, const char *end, const char *word) {
  size_t n = strlen(word);
  return (size_t)(end - p) >= n && memcmp(p, word, n) == 0 ? p + n : NULL;
}

/* Returns the position after the JSON value at p, or NULL if it is not one. */
static const char *skip_value(const char *p, const char *end, int depth) {
  if (p >= end || depth > MAX_DEPTH) return NULL;
  switch (*p) {
  case '"': return scan_string(p, end, NULL);
  case '{':
  case '[': return skip_container(p, end, depth);
  case 't': return skip_word(p, end, "true");
  case 'f': return skip_word(p, end, "false");
  case 'n': return skip_word(p, end, "null");
  default: return skip_number(p, end);
  }
}

struct span {
  const char *p, *end; /* p == NULL: absent */
};

/* Finds member `key` of the object [p, end); false if the text is not an object. */
static bool member(const char *p, const char *end, const char *key, struct span *out) {
  out->p = out->end = NULL;
  p = skip_ws(p, end);
  if (p >= end || *p != '{') return false;
  p = skip_ws(p + 1, end);
  if (p < end && *p == '}') return true;
  struct buf name = {0};
  for (;;) {
    name.len = 0;
    p = scan_string(p, end, &name);
    if (!p) break;
    p = skip_ws(p, end);
    if (p >= end || *p != ':') break;
    const char *v = skip_ws(p + 1, end);
    p = skip_value(v, end, 1);
    if (!p) break;
    if (name.p && name.len == strlen(key) && memcmp(name.p, key, name.len) == 0) *out = (struct span){v, p};
    p = skip_ws(p, end);
    if (p < end && *p == ',') {
      p = skip_ws(p + 1, end);
      continue;
    }
    free(name.p);
    return p < end && *p == '}';
  }
  free(name.p);
  return false;
}

/* The string member `key` of an object, decoded, newlines made spaces; "" when absent. */
static char *string_member(struct span obj, const char *key) {
  struct span s;
  struct buf out = {0};
  reserve(&out, 0);
  out.p[0] = '\0';
  if (obj.p && member(obj.p, obj.end, key, &s) && s.p && *s.p == '"') scan_string(s.p, s.end, &out);
  for (size_t i = 0; i < out.len; i++) {
    if (out.p[i] == '\n' || out.p[i] == '\r') out.p[i] = ' ';
  }
  return out.p;
}

/* ------------------------------------------------------------ the request */

/* Arguments that are text even when they look like a number. */
static bool text_key(const char *key) {
  static const char *const keys[] = {"name", "origin", "message", "data"};
  for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
    if (strcmp(key, keys[i]) == 0) return true;
  }
  return false;
}

static bool is_integer(const char *s) {
  const char *p = s + (*s == '-');
  if (*p == '0') return p[1] == '\0';
  if (*p < '1' || *p > '9') return false;
  while (*p >= '0' && *p <= '9') p++;
  return *p == '\0';
}

static void put_arg(struct buf *req, const char *arg) {
  const char *eq = strchr(arg, '=');
  if (!eq) {
    fprintf(stderr, "%s: argument '%s' is not KEY=VALUE; %s", prog, arg, USAGE);
    exit(EXIT_USAGE);
  }
  bool raw = eq > arg && eq[-1] == ':';
  size_t keylen = (size_t)(eq - arg) - raw;
  if (keylen == 0) {
    fprintf(stderr, "%s: argument '%s' has no KEY before '='; %s", prog, arg, USAGE);
    exit(EXIT_USAGE);
  }
  char *key = strndup(arg, keylen);
  if (!key) fail(EXIT_ERROR, "out of memory");
  const char *value = eq + 1;
  put_json_string(req, key);
  putc_(req, ':');
  if (raw) {
    const char *end = value + strlen(value);
    const char *after = skip_value(skip_ws(value, end), end, 0);
    if (!after || skip_ws(after, end) != end) {
      fprintf(stderr, "%s: the value of %s:= is not valid JSON: %s; %s", prog, key, value, USAGE);
      exit(EXIT_USAGE);
    }
    /* A request is one line: valid JSON has line breaks only as whitespace. */
    size_t from = req->len;
    puts_(req, value);
    for (size_t i = from; i < req->len; i++) {
      if (req->p[i] == '\n' || req->p[i] == '\r') req->p[i] = ' ';
    }
  } else if (!text_key(key) && (is_integer(value) || strcmp(value, "true") == 0 || strcmp(value, "false") == 0)) {
    puts_(req, value);
  } else {
    put_json_string(req, value);
  }
  free(key);
}

static struct buf build_request(const char *op, int nargs, char **args) {
  struct buf req = {0};
  puts_(&req, "{\"id\":1,\"op\":");
  put_json_string(&req, op);
  puts_(&req, ",\"args\":{");
  for (int i = 0; i < nargs; i++) {
    if (i > 0) putc_(&req, ',');
    put_arg(&req, args[i]);
  }
  puts_(&req, "}}\n");
  return req;
}

/* ------------------------------------------------------------ the connection */

static const char *pool;

static void no_daemon(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));

/* One line: what is wrong, then what to do. */
static void no_daemon(const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "%s: ", prog);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "; start `thinfuse serve %s MNT`, or use the thinfuse CLI\n", pool);
  exit(EXIT_NO_DAEMON);
}

/* POOL/socket's first line, the socket path; its second, the pid (0 if none). */
static char *read_pointer(long *pid) {
  char file[4096];
  if ((size_t)snprintf(file, sizeof file, "%s/socket", pool) >= sizeof file) usage_fail("POOL is too long a path");
  int fd = open(file, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int e = errno;
    struct stat st;
    if (e == ENOENT && stat(pool, &st) == 0 && S_ISDIR(st.st_mode)) no_daemon("no thinfuse serve is running for %s (no %s)", pool, file);
    if (e == ENOENT || e == ENOTDIR) fail(EXIT_NO_DAEMON, "%s: no such pool directory; give the pool's directory (it holds data and metadata)", pool);
    no_daemon("cannot read %s: %s", file, strerror(e));
  }
  struct buf text = {0};
  for (;;) {
    reserve(&text, 4096);
    ssize_t n = read(fd, text.p + text.len, text.cap - text.len - 1);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) no_daemon("cannot read %s: %s", file, strerror(errno));
    if (n == 0) break;
    text.len += (size_t)n;
    text.p[text.len] = '\0';
  }
  close(fd);
  char *nl = strchr(text.p, '\n');
  if (nl) *nl = '\0';
  *pid = nl ? strtol(nl + 1, NULL, 10) : 0;
  if (text.p[0] == '\0') no_daemon("%s names no socket (empty or torn)", file);
  return text.p;
}

static int connect_daemon(void) {
  long pid;
  char *path = read_pointer(&pid);
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(path) >= sizeof addr.sun_path) no_daemon("%s/socket names a socket path longer than %zu bytes: %s", pool, sizeof addr.sun_path - 1, path);
  strcpy(addr.sun_path, path);
  int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0) fail(EXIT_ERROR, "socket: %s", strerror(errno));
  int r;
  do r = connect(s, (struct sockaddr *)&addr, sizeof addr);
  while (r < 0 && errno == EINTR);
  if (r < 0 && errno != EISCONN) {
    int e = errno;
    if (e == EACCES || e == EPERM) {
      fail(EXIT_NO_DAEMON, "cannot connect to %s (the control socket of %s): %s; only root and the user running serve may use it", path, pool,
           strerror(e));
    }
    if (e == ECONNREFUSED || e == ENOENT) {
      no_daemon("no thinfuse serve answers for %s: %s/socket is stale (pid %ld, %s: %s)", pool, pool, pid, path, strerror(e));
    }
    no_daemon("cannot connect to %s (the control socket of %s): %s", path, pool, strerror(e));
  }
  free(path);
  return s;
}

static void send_all(int s, const struct buf *req) {
  for (size_t done = 0; done < req->len;) {
    ssize_t n = send(s, req->p + done, req->len - done, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail(EXIT_ERROR, "IO_ERROR: sending to the control socket of %s: %s", pool, strerror(errno));
    done += (size_t)n;
  }
}

/* Reads up to the first newline; returns the line's length. */
static size_t read_line(int s, struct buf *in) {
  for (;;) {
    char *nl = in->len ? memchr(in->p, '\n', in->len) : NULL;
    if (nl) return (size_t)(nl - in->p);
    reserve(in, 64 * 1024);
    ssize_t n = recv(s, in->p + in->len, in->cap - in->len - 1, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && errno != ECONNRESET) fail(EXIT_ERROR, "IO_ERROR: reading from the control socket of %s: %s", pool, strerror(errno));
    if (n <= 0) {
      fail(EXIT_ERROR, "IO_ERROR: the daemon serving %s closed the control connection without answering (did it stop?); check with `thinfuse info %s`",
           pool, pool);
    }
    in->len += (size_t)n;
    in->p[in->len] = '\0';
  }
}

/* ------------------------------------------------------------ the answer */

static int report(const char *line, size_t len) {
  const char *end = line + len;
  struct span id, ok, result, error;
  if (!member(line, end, "id", &id) || !member(line, end, "ok", &ok) || !member(line, end, "result", &result) ||
      !member(line, end, "error", &error) || !ok.p) {
    fail(EXIT_ERROR, "IO_ERROR: the daemon's reply is not a control socket answer: %.200s", line);
  }
  if (!id.p || id.end - id.p != 1 || *id.p != '1') {
    fail(EXIT_ERROR, "IO_ERROR: the daemon answered another request: %.200s", line);
  }
  if (ok.end - ok.p == 4 && memcmp(ok.p, "true", 4) == 0) {
    if (result.p && !(result.end - result.p == 4 && memcmp(result.p, "null", 4) == 0)) {
      fwrite(result.p, 1, (size_t)(result.end - result.p), stdout);
      fputc('\n', stdout);
    }
    if (fflush(stdout) != 0 || ferror(stdout)) fail(EXIT_ERROR, "writing the result: %s", strerror(errno));
    return 0;
  }
  char *code = string_member(error, "code");
  char *message = string_member(error, "message");
  fprintf(stderr, "%s: %s: %s\n", prog, code[0] ? code : "INTERNAL", message[0] ? message : "the daemon gave no message");
  free(code);
  free(message);
  return EXIT_ERROR;
}

int main(int argc, char **argv) {
  if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    fputs(USAGE, stdout);
    fputs(HELP, stdout);
    return 0;
  }
  if (argc < 3) usage_fail(argc < 2 ? "missing POOL and OP" : "missing OP");
  pool = argv[1];
  if (pool[0] == '\0' || argv[2][0] == '\0') usage_fail("POOL and OP must not be empty");

  struct buf req = build_request(argv[2], argc - 3, argv + 3);
  int s = connect_daemon();
  send_all(s, &req);
  struct buf in = {0};
  size_t len = read_line(s, &in);
  in.p[len] = '\0';
  close(s);
  int status = report(in.p, len);
  free(req.p);
  free(in.p);
  return status;
}
