/* nodeagent CNI shim: hands one CNI call to the warm agent daemon over a unix socket and
 * relays the answer.  The protocol, its limits and failure rules are docs/cni-socket.md;
 * cni/wire.py is the daemon's side of the framing.  C11 + libc (Linux) only.
 *
 * Socket path: $NODEAGENT_SOCKET, else the config's top-level "agentSocket" string, else
 * DEFAULT_SOCKET.  With $NODEAGENT_SOCKET set the shim connects before it reads stdin, so a
 * fallback gets the very stdin the runtime passed.  Otherwise the socket is named on stdin,
 * which must be read first; if the daemon then turns out to be unreachable, the fallback gets
 * the bytes read back: stdin rewound when it is seekable, else a memfd holding them.
 */
#define _GNU_SOURCE /* memfd_create */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define DEFAULT_SOCKET "/run/nodeagent/agent.sock"
#define FALLBACK_NAME "nodeagent-cni-fallback"
#define DEFAULT_CNI_VERSION "1.1.0"
#define DEFAULT_TIMEOUT_MS 240000
#define MAX_STDIN (1u << 20)
#define MAX_OUTPUT (1u << 24) /* per response field, the limit cni/wire.py reads with */
#define BAD SIZE_MAX          /* "not found / malformed" index in the config scanner */

#ifndef NODEAGENT_SHIM_SOURCE
#define NODEAGENT_SHIM_SOURCE "unknown"
#endif
/* setup.py defines NODEAGENT_SHIM_SOURCE as the sha256 of this file; cni/shim.py looks for
 * this string in the binary to refuse a stale build.  Not static, so it is kept. */
const char nodeagent_shim_source[] = "NODEAGENT_SHIM_SOURCE=" NODEAGENT_SHIM_SOURCE;

extern char **environ;

/* stdin, read at most once: one byte past MAX_STDIN so the daemon can tell it was too big. */
static unsigned char config[MAX_STDIN + 1];
static size_t config_len;
static bool config_read;
static off_t stdin_start = -1; /* where reading started, if stdin is seekable */
static void read_stdin(void);

/* ---- growable byte buffer ---------------------------------------------------------------- */

struct buf {
    unsigned char *p;
    size_t len, cap;
    bool oom;
};

static void put(struct buf *b, const void *data, size_t n)
{
    if (b->oom || n == 0)
        return;
    if (n > b->cap - b->len) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap - b->len < n) {
            if (cap > SIZE_MAX / 2) {
                b->oom = true;
                return;
            }
            cap *= 2;
        }
        unsigned char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = true;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void put_u32(struct buf *b, uint32_t v)
{
    unsigned char be[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16),
                           (unsigned char)(v >> 8), (unsigned char)v};
    put(b, be, sizeof be);
}

static void put_str(struct buf *b, const char *s) { put(b, s, strlen(s)); }

/* A protocol `bytes` field.  Its sources (argv[0], environment strings) are far below 4 GiB. */
static void put_field(struct buf *b, const void *data, size_t n)
{
    put_u32(b, (uint32_t)n);
    put(b, data, n);
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---- JSON output ------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence starting at p (NUL-terminated), 0 if there is none. */
static size_t utf8_len(const unsigned char *p)
{
    size_t n;
    uint32_t c;
    if (p[0] >= 0xc2 && p[0] <= 0xdf)
        n = 2, c = p[0] & 0x1fu;
    else if (p[0] >= 0xe0 && p[0] <= 0xef)
        n = 3, c = p[0] & 0x0fu;
    else if (p[0] >= 0xf0 && p[0] <= 0xf4)
        n = 4, c = p[0] & 0x07u;
    else
        return 0;
    for (size_t i = 1; i < n; i++) {
        if ((p[i] & 0xc0) != 0x80)
            return 0;
        c = c << 6 | (p[i] & 0x3fu);
    }
    if ((n == 3 && c < 0x800) || (n == 4 && (c < 0x10000 || c > 0x10ffff)) ||
        (c >= 0xd800 && c <= 0xdfff))
        return 0;
    return n;
}

/* A JSON string literal; invalid UTF-8 (e.g. from a path) becomes U+FFFD. */
static void put_json_string(struct buf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *p = (const unsigned char *)s;
    put(b, "\"", 1);
    while (*p) {
        size_t n;
        if (*p == '"' || *p == '\\') {
            put(b, "\\", 1);
            put(b, p++, 1);
        } else if (*p < 0x20) {
            char esc[6] = {'\\', 'u', '0', '0', hex[*p >> 4], hex[*p & 15]};
            put(b, esc, sizeof esc);
            p++;
        } else if (*p < 0x80) {
            put(b, p++, 1);
        } else if ((n = utf8_len(p)) != 0) {
            put(b, p, n);
            p += n;
        } else {
            put_str(b, "\\ufffd");
            p++;
        }
    }
    put(b, "\"", 1);
}

/* ---- config scan ------------------------------------------------------------------------- */
/* Not a JSON parser: it walks the members of the top-level object, skips nested values by
 * bracket depth (no recursion, so hostile nesting cannot exhaust the stack), never reads past
 * config_len, and gives up at the first thing it does not understand.  As with Python's json
 * module, the last duplicate member wins; the daemon validates the config properly. */

static size_t skip_ws(size_t i)
{
    while (i < config_len && (config[i] == ' ' || config[i] == '\t' || config[i] == '\n' ||
                              config[i] == '\r'))
        i++;
    return i;
}

/* config[i] is an opening quote: the index past the closing one, or BAD. */
static size_t skip_string(size_t i)
{
    for (i++; i < config_len; i++) {
        if (config[i] == '\\')
            i++;
        else if (config[i] == '"')
            return i + 1;
    }
    return BAD;
}

static size_t skip_value(size_t i)
{
    size_t depth = 0;
    do {
        if (i >= config_len)
            return BAD;
        unsigned char c = config[i];
        if (c == '"') {
            if ((i = skip_string(i)) == BAD)
                return BAD;
            continue;
        }
        if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (depth == 0)
                return BAD;
            depth--;
        } else if (depth == 0) { /* number, true, false, null: up to a delimiter */
            while (i < config_len && !memchr(",}] \t\r\n", config[i], 7))
                i++;
            return i;
        }
        i++;
    } while (depth > 0);
    return i;
}

static int hex4(size_t i)
{
    int v = 0;
    if (i > config_len || config_len - i < 4)
        return -1;
    for (size_t k = i; k < i + 4; k++) {
        unsigned char c = config[k];
        int d = c >= '0' && c <= '9'   ? c - '0'
                : c >= 'a' && c <= 'f' ? c - 'a' + 10
                : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                       : -1;
        if (d < 0)
            return -1;
        v = v << 4 | d;
    }
    return v;
}

/* The code point of the \uXXXX escape at config[*i] ('u'), joining a surrogate pair; *i is left
 * on its last digit.  0 (which also rules out NUL) if malformed. */
static uint32_t unicode_escape(size_t *i)
{
    int hi = hex4(*i + 1), lo;
    if (hi < 0 || (hi >= 0xdc00 && hi <= 0xdfff))
        return 0;
    *i += 4;
    if (hi < 0xd800 || hi > 0xdbff)
        return (uint32_t)hi;
    if (*i + 2 >= config_len || config[*i + 1] != '\\' || config[*i + 2] != 'u')
        return 0;
    lo = hex4(*i + 3);
    if (lo < 0xdc00 || lo > 0xdfff)
        return 0;
    *i += 6;
    return 0x10000 + ((uint32_t)(hi - 0xd800) << 10) + (uint32_t)(lo - 0xdc00);
}

static size_t utf8_encode(uint32_t cp, unsigned char *enc)
{
    if (cp < 0x80) {
        enc[0] = (unsigned char)cp;
        return 1;
    }
    size_t len = cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4;
    static const unsigned char lead[] = {0, 0, 0xc0, 0xe0, 0xf0};
    for (size_t k = len - 1; k > 0; k--, cp >>= 6)
        enc[k] = (unsigned char)(0x80 | (cp & 0x3f));
    enc[0] = (unsigned char)(lead[len] | cp);
    return len;
}

/* Decodes the JSON string at config[i] into out (NUL-terminated).  Returns its length, or -1
 * if it is not a well-formed string, holds a NUL, or does not fit. */
static long decode_string(size_t i, char *out, size_t cap)
{
    size_t n = 0;
    if (i >= config_len || config[i] != '"')
        return -1;
    while (++i < config_len) {
        unsigned char c = config[i], enc[4];
        size_t len = 1;
        if (c == '"') {
            out[n] = '\0';
            return (long)n;
        }
        if (c < 0x20)
            return -1;
        if (c != '\\') {
            enc[0] = c; /* raw bytes are copied as they are */
        } else if (++i >= config_len) {
            return -1;
        } else {
            uint32_t cp;
            switch (config[i]) {
            case '"': case '\\': case '/': cp = config[i]; break;
            case 'b': cp = '\b'; break;
            case 'f': cp = '\f'; break;
            case 'n': cp = '\n'; break;
            case 'r': cp = '\r'; break;
            case 't': cp = '\t'; break;
            case 'u': cp = unicode_escape(&i); break;
            default: cp = 0;
            }
            if (cp == 0)
                return -1;
            len = utf8_encode(cp, enc);
        }
        if (cap - 1 - n < len)
            return -1;
        memcpy(out + n, enc, len);
        n += len;
    }
    return -1;
}

/* Index of the value of the last top-level member `name`, or BAD. */
static size_t find_member(const char *name)
{
    size_t found = BAD;
    size_t i = skip_ws(0);
    if (i >= config_len || config[i] != '{')
        return BAD;
    for (i = skip_ws(i + 1); i < config_len && config[i] == '"'; i = skip_ws(i + 1)) {
        char key[32];
        long key_len = decode_string(i, key, sizeof key);
        if ((i = skip_ws(skip_string(i))) >= config_len || config[i] != ':')
            return found; /* (skip_ws(BAD) is BAD) */
        size_t value = skip_ws(i + 1);
        if ((i = skip_ws(skip_value(value))) == BAD)
            return found;
        if (key_len >= 0 && strcmp(key, name) == 0)
            found = value;
        if (i >= config_len || config[i] != ',')
            break;
    }
    return found;
}

/* The config's top-level string `name` if it is one, non-empty and fits, else NULL. */
static const char *config_string(const char *name, char *out, size_t cap)
{
    size_t at = find_member(name);
    return at != BAD && decode_string(at, out, cap) > 0 ? out : NULL;
}

/* ---- plumbing ---------------------------------------------------------------------------- */

static const char *getenv_set(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* Forwarded to the agent: the CNI variables, and the count of nested delegations (so a
 * delegate chain that comes back through the agent is cut off; cni/ipam.py). */
static bool is_cni(const char *entry)
{
    static const char depth[] = "NODEAGENT_DELEGATE_DEPTH=";
    return (strncmp(entry, "CNI_", 4) == 0 && strchr(entry, '=') != NULL)
        || strncmp(entry, depth, sizeof depth - 1) == 0;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t timeout_ms(void)
{
    const char *s = getenv_set("NODEAGENT_TIMEOUT");
    if (s) {
        char *end;
        double v = strtod(s, &end);
        if (*end == '\0' && v > 0 && v <= 365 * 86400.0)
            return v * 1000 < 1 ? 1 : (int64_t)(v * 1000);
    }
    return DEFAULT_TIMEOUT_MS;
}

/* Waits until fd is ready for `events` (or hung up): 0, ETIMEDOUT past the deadline, or an
 * errno.  A negative deadline means none (stdin, stdout, stderr). */
static int wait_fd(int fd, short events, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline < 0 ? -1 : deadline - now_ms();
        if (deadline >= 0 && left <= 0)
            return ETIMEDOUT;
        struct pollfd pfd = {.fd = fd, .events = events};
        int rc = poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int)left);
        if (rc > 0)
            return 0;
        if (rc < 0 && errno != EINTR)
            return errno;
    }
}

/* Writes everything, through partial writes, EINTR and non-blocking descriptors.  With a
 * deadline (>= 0) fd is the daemon's socket; without one (-1), any other descriptor. */
static int write_all(int fd, const void *data, size_t len, int64_t deadline)
{
    const unsigned char *p = data;
    while (len > 0) {
        /* MSG_NOSIGNAL: a daemon that went away is an EPIPE, not a SIGPIPE. */
        ssize_t n = deadline >= 0 ? send(fd, p, len, MSG_NOSIGNAL | MSG_DONTWAIT)
                                  : write(fd, p, len);
        if (n >= 0) {
            p += n;
            len -= (size_t)n;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int err = wait_fd(fd, POLLOUT, deadline);
            if (err)
                return err;
        } else if (errno != EINTR) {
            return errno;
        }
    }
    return 0;
}

/* Reads exactly len bytes from the daemon: 0, EPIPE if it closed first, or an errno. */
static int recv_all(int fd, void *data, size_t len, int64_t deadline)
{
    unsigned char *p = data;
    while (len > 0) {
        ssize_t n = recv(fd, p, len, MSG_DONTWAIT);
        if (n > 0) {
            p += n;
            len -= (size_t)n;
        } else if (n == 0) {
            return EPIPE;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int err = wait_fd(fd, POLLIN, deadline);
            if (err)
                return err;
        } else if (errno != EINTR) {
            return errno;
        }
    }
    return 0;
}

#define OOM_JSON                                                                               \
    "{\"cniVersion\":\"" DEFAULT_CNI_VERSION "\",\"code\":11,"                                     \
    "\"msg\":\"nodeagent CNI shim: out of memory\"}\n"

/* Prints the shim's own CNI error (code 11, "try again later") and exits 1. */
static _Noreturn void fail(const char *details, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void fail(const char *details, const char *fmt, ...)
{
    char msg[8192], version[32];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    read_stdin(); /* for cniVersion: nothing will want stdin after this */

    struct buf b = {0};
    put_str(&b, "{\"cniVersion\":");
    put_json_string(&b, config_string("cniVersion", version, sizeof version)
                            ? version
                            : DEFAULT_CNI_VERSION);
    put_str(&b, ",\"code\":11,\"msg\":");
    put_json_string(&b, msg);
    put_str(&b, ",\"details\":");
    put_json_string(&b, details);
    put_str(&b, "}\n");
    if (b.oom)
        write_all(STDOUT_FILENO, OOM_JSON, sizeof OOM_JSON - 1, -1);
    else
        write_all(STDOUT_FILENO, b.p, b.len, -1);
    free(b.p);
    exit(1);
}

static void read_stdin(void)
{
    if (config_read)
        return;
    config_read = true; /* first, so a failure below cannot recurse through fail() */
    stdin_start = lseek(STDIN_FILENO, 0, SEEK_CUR);
    while (config_len < sizeof config) {
        ssize_t n = read(STDIN_FILENO, config + config_len, sizeof config - config_len);
        if (n > 0)
            config_len += (size_t)n;
        else if (n == 0)
            break;
        else if (errno == EAGAIN || errno == EWOULDBLOCK)
            wait_fd(STDIN_FILENO, POLLIN, -1);
        else if (errno != EINTR)
            fail(strerror(errno), "nodeagent CNI shim: cannot read the network configuration");
    }
}

/* Hands the fallback the stdin we were given.  A pipe cannot be un-read, so it gets a memfd
 * with the bytes read instead; of oversize input (which it rejects all the same) it sees only
 * the first MAX_STDIN + 1 bytes. */
static int restore_stdin(void)
{
    if (!config_read || (stdin_start >= 0 && lseek(STDIN_FILENO, stdin_start, SEEK_SET) >= 0))
        return 0;
    int fd = memfd_create("nodeagent-cni-stdin", 0);
    if (fd < 0)
        return errno;
    int err = write_all(fd, config, config_len, -1);
    if (!err && lseek(fd, 0, SEEK_SET) < 0)
        err = errno;
    if (!err && fd != STDIN_FILENO && dup2(fd, STDIN_FILENO) < 0)
        err = errno;
    if (fd != STDIN_FILENO)
        close(fd);
    return err;
}

/* The daemon is not there: become the fallback, with our argv, environment and stdin, plus
 * NODEAGENT_CNI_PLUGIN naming what we were invoked as (an interpreter running the fallback
 * script sees its own path as argv[0], and "whereabouts" must act as an IPAM plugin). */
_Noreturn static void run_fallback(char **argv, const char *sock, int connect_err,
                                   const struct sigaction *sigpipe)
{
    char path[PATH_MAX + sizeof FALLBACK_NAME], details[PATH_MAX + 256];
    const char *fallback = getenv_set("NODEAGENT_CNI_FALLBACK");
    if (!fallback) {
        ssize_t n = readlink("/proc/self/exe", path, PATH_MAX);
        char *slash = n > 0 ? memrchr(path, '/', (size_t)n) : NULL;
        if (slash) {
            memcpy(slash + 1, FALLBACK_NAME, sizeof FALLBACK_NAME);
            fallback = path;
        } else {
            snprintf(details, sizeof details, "cannot locate " FALLBACK_NAME
                     ": readlink /proc/self/exe: %s", n < 0 ? strerror(errno) : "no directory");
        }
    }
    if (fallback) {
        int err = restore_stdin();
        const char *name = argv[0] ? argv[0] : "";
        if (strrchr(name, '/'))
            name = strrchr(name, '/') + 1;
        if (!err && setenv("NODEAGENT_CNI_PLUGIN", name, 1) != 0)
            err = errno;
        if (!err) {
            struct sigaction ignore;
            sigaction(SIGPIPE, sigpipe, &ignore); /* ignored signals stay ignored across exec */
            execv(fallback, argv);
            err = errno;
            sigaction(SIGPIPE, &ignore, NULL);
        }
        snprintf(details, sizeof details, "fallback %s: %s", fallback, strerror(err));
    }
    fail(details, "nodeagent agent socket %s is unreachable (%s) and no fallback could run",
         sock, strerror(connect_err));
}

/* 0 with *out connected, or an errno. */
static int connect_agent(const char *path, int64_t timeout, int *out)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    size_t len = strlen(path);
    if (len >= sizeof addr.sun_path)
        return ENAMETOOLONG;
    memcpy(addr.sun_path, path, len + 1);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return errno;
    /* A unix connect blocks while the daemon's accept queue is full; SO_SNDTIMEO bounds that
     * wait (connect then fails with EAGAIN).  Sends below use poll and MSG_DONTWAIT. */
    struct timeval tv = {.tv_sec = (time_t)(timeout / 1000),
                         .tv_usec = (suseconds_t)(timeout % 1000 * 1000)};
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    int rc;
    while ((rc = connect(fd, (struct sockaddr *)&addr, sizeof addr)) < 0 && errno == EINTR)
        ;
    if (rc < 0) {
        int err = errno;
        close(fd);
        return err;
    }
    *out = fd;
    return 0;
}

static void check_io(int err, const char *sock, const char *what)
{
    if (err == EPIPE || err == ECONNRESET)
        fail(what, "nodeagent agent at %s closed the connection before a complete response",
             sock);
    if (err == ETIMEDOUT || err == EAGAIN) /* EAGAIN: connect's SO_SNDTIMEO ran out */
        fail(what, "nodeagent agent at %s timed out (NODEAGENT_TIMEOUT %.3g s)", sock,
             (double)timeout_ms() / 1000);
    if (err)
        fail(what, "nodeagent agent at %s: %s", sock, strerror(err));
}

/* One length-prefixed response field, into a malloc'd buffer. */
static unsigned char *recv_field(int fd, int64_t deadline, const char *sock, const char *what,
                                 uint32_t *len)
{
    unsigned char be[4];
    check_io(recv_all(fd, be, sizeof be, deadline), sock, what);
    if ((*len = get_u32(be)) > MAX_OUTPUT)
        fail(what, "nodeagent agent at %s sent a %u-byte field", sock, *len);
    unsigned char *data = malloc(*len ? *len : 1);
    if (!data)
        fail(what, "nodeagent CNI shim: out of memory");
    check_io(recv_all(fd, data, *len, deadline), sock, what);
    return data;
}

int main(int argc, char **argv)
{
    struct sigaction ignore = {.sa_handler = SIG_IGN}, sigpipe;
    sigemptyset(&ignore.sa_mask);
    sigaction(SIGPIPE, &ignore, &sigpipe);
    /* A closed stdin/stdout/stderr would be reused by socket() below, and the shim would then
     * read its config from, or write its result to, the daemon: park /dev/null there. */
    for (int fd = 0; fd < 3; fd++)
        if (fcntl(fd, F_GETFD) < 0 && errno == EBADF && open("/dev/null", O_RDWR) != fd)
            return 1;

    char named[PATH_MAX];
    const char *sock = getenv_set("NODEAGENT_SOCKET");
    if (!sock) {
        read_stdin();
        sock = config_string("agentSocket", named, sizeof named);
        if (!sock)
            sock = DEFAULT_SOCKET;
    }

    /* One deadline for the whole exchange, so a daemon trickling bytes cannot stretch it. */
    int64_t timeout = timeout_ms(), deadline = now_ms() + timeout;
    int fd = -1, err = connect_agent(sock, timeout, &fd);
    if (err == ENOENT || err == ECONNREFUSED || err == EACCES || err == ENOTDIR)
        run_fallback(argv, sock, err, &sigpipe);
    check_io(err, sock, "connect");
    read_stdin();

    const char *name = argc > 0 && argv[0] ? argv[0] : "";
    if (strrchr(name, '/'))
        name = strrchr(name, '/') + 1;
    struct buf req = {0};
    uint32_t count = 0;
    for (char **e = environ; e && *e; e++)
        count += is_cni(*e);
    put_str(&req, "NAC1");
    put_field(&req, name, strlen(name));
    put_u32(&req, count);
    for (char **e = environ; e && *e; e++)
        if (is_cni(*e))
            put_field(&req, *e, strlen(*e));
    put_field(&req, config, config_len); /* the whole request in one send: one wake-up */
    if (req.oom)
        fail("request", "nodeagent CNI shim: out of memory");

    err = write_all(fd, req.p, req.len, deadline);
    free(req.p);
    /* A daemon may answer early (e.g. reject the request) and close: read what it said. */
    if (err != EPIPE && err != ECONNRESET)
        check_io(err, sock, "sending the request");

    unsigned char head[8];
    check_io(recv_all(fd, head, sizeof head, deadline), sock, "response header");
    if (memcmp(head, "NAR1", 4) != 0)
        fail("response header", "nodeagent agent at %s sent no NAR1 response", sock);
    uint32_t status = get_u32(head + 4), out_len, err_len;
    unsigned char *out = recv_field(fd, deadline, sock, "response stdout", &out_len);
    unsigned char *errs = recv_field(fd, deadline, sock, "response stderr", &err_len);
    close(fd);

    /* The daemon's verdict stands; a result the runtime cannot read is a failure, though. */
    if (write_all(STDOUT_FILENO, out, out_len, -1) && status == 0)
        status = 1;
    write_all(STDERR_FILENO, errs, err_len, -1);
    free(out);
    free(errs);
    return status > 255 ? 1 : (int)status; /* exit(256) would read as success */
}
