/* trusthook-hook: the OCI hook (createRuntime or prestart) run on every container start.
 *
 * It moves the OCI state from stdin to the trusthook agent's unix socket and turns the agent's
 * answer into an exit status and at most one line on stderr; every decision is the agent's
 * (docs/api.md, "The hook's request"). Everything it does is set by its arguments, which the
 * runtime config records and so measures: --socket PATH, --timeout SECONDS, --stage STAGE,
 * --audit. Fails closed: any failure is one line on stderr and exit status 1, and the runtime
 * does not start the container. With --audit, a failure to reach the agent (or a bad argument)
 * is logged to syslog and stderr and the container starts; whatever the agent answers is
 * final. The agent is asked only if its socket's directory is root's alone and the process
 * listening on it runs as root (SO_PEERCRED).
 *
 * Compiled by the package build (setup.py) and by scripts/build-deb; no library beyond libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#define MAX_MESSAGE_BYTES (1 << 20)
#define DEFAULT_SOCKET "/run/trusthook/agent.sock"
#define DEFAULT_TIMEOUT 30.0
#define USAGE "usage: trusthook-hook [--socket PATH] [--timeout SECONDS] [--stage STAGE] [--audit]"
#define UNMEASURED "{\"unmeasured\":\""
#define LINE_MAX_BYTES 4096

/* How a failure ends: the agent refused (exit 1 in every mode), or there was no agent to ask
 * (exit 1, or 0 with a warning in audit mode). */
enum outcome { OK = 0, REFUSED, UNAVAILABLE };

struct hook {
    const char *socket;
    double timeout;
    const char *stage;
    int audit;
    char message[LINE_MAX_BYTES]; /* the one line a failure prints */
};

static enum outcome fail(struct hook *h, enum outcome kind, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

static enum outcome fail(struct hook *h, enum outcome kind, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(h->message, sizeof h->message, format, args);
    va_end(args);
    return kind;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int parse_timeout(const char *value, double *out) {
    char *end = NULL;
    errno = 0;
    double seconds = strtod(value, &end);
    if (end == value || *end != '\0' || errno != 0 || isnan(seconds) || !(seconds > 0) ||
        !(seconds < 1e9))
        return -1;
    *out = seconds;
    return 0;
}

/* The arguments, as trusthook's own config writes them: NAME VALUE or NAME=VALUE. */
static enum outcome parse_args(struct hook *h, int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--audit") == 0) {
            h->audit = 1;
            continue;
        }
        const char *eq = strchr(arg, '=');
        size_t name_len = eq ? (size_t)(eq - arg) : strlen(arg);
        static const char *names[] = {"--socket", "--timeout", "--stage"};
        int which = -1;
        for (int n = 0; n < 3; n++)
            if (strlen(names[n]) == name_len && strncmp(arg, names[n], name_len) == 0) which = n;
        if (which < 0) return fail(h, UNAVAILABLE, "unknown argument '%.200s'; %s", arg, USAGE);
        const char *value = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : "");
        if (which == 0) {
            h->socket = value;
        } else if (which == 2) {
            if (strcmp(value, "createRuntime") != 0 && strcmp(value, "prestart") != 0)
                return fail(h, UNAVAILABLE,
                            "--stage must be one of createRuntime, prestart, got '%.200s'", value);
            h->stage = value;
        } else if (parse_timeout(value, &h->timeout) != 0) {
            return fail(h, UNAVAILABLE,
                        "--timeout must be a number of seconds > 0, got '%.200s'", value);
        }
    }
    return OK;
}

/* The request: its header line, then the OCI state from stdin (at most MAX_MESSAGE_BYTES;
 * ``buf`` holds ``cap`` >= header + MAX_MESSAGE_BYTES + 1 bytes). */
static enum outcome read_request(struct hook *h, char *buf, size_t cap, size_t *len) {
    int n = snprintf(buf, cap, "{\"audit\":%s,\"op\":\"hook\",\"stage\":\"%s\",\"version\":1}\n",
                     h->audit ? "true" : "false", h->stage);
    size_t header = (size_t)n, used = header;
    while (used < cap) {
        ssize_t got = read(STDIN_FILENO, buf + used, cap - used);
        if (got == 0) break;
        if (got < 0) {
            if (errno == EINTR) continue;
            return fail(h, UNAVAILABLE, "cannot read the OCI state on stdin: %s", strerror(errno));
        }
        used += (size_t)got;
    }
    if (used - header > MAX_MESSAGE_BYTES)
        return fail(h, UNAVAILABLE, "state JSON on stdin is larger than %d bytes",
                    MAX_MESSAGE_BYTES);
    *len = used;
    return OK;
}

/* Refuse a socket whose directory someone other than root could have put there. */
static enum outcome check_directory(struct hook *h) {
    char directory[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
    const char *slash = strrchr(h->socket, '/');
    if (slash == NULL)
        snprintf(directory, sizeof directory, ".");
    else if (slash == h->socket)
        snprintf(directory, sizeof directory, "/");
    else
        snprintf(directory, sizeof directory, "%.*s", (int)(slash - h->socket), h->socket);
    struct stat st;
    if (stat(directory, &st) != 0)
        return fail(h, UNAVAILABLE, "agent socket directory %s: %s", directory, strerror(errno));
    if (st.st_uid != 0 || (st.st_mode & 022))
        return fail(h, UNAVAILABLE,
                    "agent socket directory %s is not root's alone (owner uid %u, mode %o);"
                    " refusing to talk to an agent there",
                    directory, (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
    return OK;
}

static enum outcome timed_out(struct hook *h) {
    return fail(h, UNAVAILABLE, "trusthook agent on %s did not answer within %gs", h->socket,
                h->timeout);
}

static enum outcome io_error(struct hook *h, int error) {
    if (error == ENOENT)
        return fail(h, UNAVAILABLE,
                    "agent socket %s does not exist; is the trusthook agent running?", h->socket);
    if (error == ECONNREFUSED)
        return fail(h, UNAVAILABLE,
                    "nothing listens on agent socket %s; is the trusthook agent running?",
                    h->socket);
    return fail(h, UNAVAILABLE, "cannot talk to the trusthook agent on %s: %s", h->socket,
                strerror(error));
}

/* Wait until ``fd`` is ready for ``events`` or the deadline passes: 0, or -1 (timeout). */
static int wait_for(int fd, short events, double deadline) {
    for (;;) {
        double left = deadline - now();
        if (left <= 0) return -1;
        struct pollfd p = {.fd = fd, .events = events};
        int ms = left > 1e6 ? 1000000000 : (int)(left * 1000) + 1;
        int r = poll(&p, 1, ms);
        if (r > 0) return 0;
        if (r < 0 && errno != EINTR) return 0; /* the next call reports the error */
    }
}

/* Send the request and read the whole answer into ``answer`` (at most cap bytes). */
static enum outcome exchange(struct hook *h, const char *request, size_t request_len,
                             char *answer, size_t cap, size_t *answer_len) {
    enum outcome r = check_directory(h);
    if (r != OK) return r;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(h->socket) >= sizeof addr.sun_path)
        return fail(h, UNAVAILABLE, "agent socket path %.200s is too long", h->socket);
    strcpy(addr.sun_path, h->socket);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return io_error(h, errno);
    double deadline = now() + h->timeout;
    r = OK;
    /* a full listen backlog answers EAGAIN on unix sockets: wait and try again */
    while (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN) {
            r = io_error(h, errno);
            goto out;
        }
        if (now() >= deadline) {
            r = timed_out(h);
            goto out;
        }
        usleep(2000);
    }
    struct ucred peer;
    socklen_t peer_len = sizeof peer;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) != 0) {
        r = io_error(h, errno);
        goto out;
    }
    if (peer.uid != 0) {
        r = fail(h, REFUSED,
                 "the process listening on agent socket %s runs as uid %u, not root;"
                 " refusing to talk to it",
                 h->socket, (unsigned)peer.uid);
        goto out;
    }
    for (size_t sent = 0; sent < request_len;) {
        ssize_t n = send(fd, request + sent, request_len - sent, MSG_NOSIGNAL);
        if (n >= 0) {
            sent += (size_t)n;
        } else if (errno == EAGAIN) {
            if (wait_for(fd, POLLOUT, deadline) != 0) {
                r = timed_out(h);
                goto out;
            }
        } else if (errno != EINTR) {
            r = io_error(h, errno);
            goto out;
        }
    }
    shutdown(fd, SHUT_WR);
    size_t used = 0;
    for (;;) { /* ``answer`` holds cap = MAX_MESSAGE_BYTES + 1 bytes: one more is too many */
        if (used == cap) {
            r = fail(h, REFUSED, "trusthook agent's answer is larger than %d bytes",
                     MAX_MESSAGE_BYTES);
            goto out;
        }
        ssize_t n = recv(fd, answer + used, cap - used, 0);
        if (n == 0) break;
        if (n > 0) {
            used += (size_t)n;
        } else if (errno == EAGAIN) {
            if (wait_for(fd, POLLIN, deadline) != 0) {
                r = timed_out(h);
                goto out;
            }
        } else if (errno != EINTR) {
            r = io_error(h, errno);
            goto out;
        }
    }
    *answer_len = used;
out:
    close(fd);
    return r;
}

/* Append the UTF-8 encoding of ``code`` to ``out`` (room for 4 bytes is checked by the caller). */
static size_t utf8(unsigned code, char *out) {
    if (code < 0x80) {
        out[0] = (char)code;
        return 1;
    }
    if (code < 0x800) {
        out[0] = (char)(0xC0 | (code >> 6));
        out[1] = (char)(0x80 | (code & 0x3F));
        return 2;
    }
    if (code < 0x10000) {
        out[0] = (char)(0xE0 | (code >> 12));
        out[1] = (char)(0x80 | ((code >> 6) & 0x3F));
        out[2] = (char)(0x80 | (code & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (code >> 18));
    out[1] = (char)(0x80 | ((code >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((code >> 6) & 0x3F));
    out[3] = (char)(0x80 | (code & 0x3F));
    return 4;
}

static int hex4(const char *p, const char *end, unsigned *out) {
    unsigned v = 0;
    if (end - p < 4) return -1;
    for (int i = 0; i < 4; i++) {
        char c = p[i];
        v <<= 4;
        if (c >= '0' && c <= '9') v |= (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f') v |= (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F') v |= (unsigned)(c - 'A' + 10);
        else return -1;
    }
    *out = v;
    return 0;
}

/* The JSON string starting at ``p`` (after its opening quote), decoded into ``out`` (cut to
 * fit, control characters shown as '?'); 0, or -1 if it is not a JSON string. */
static int json_string(const char *p, const char *end, char *out, size_t cap) {
    size_t used = 0;
    while (p < end && *p != '"') {
        unsigned code;
        if (*p == '\\') {
            if (end - p < 2) return -1;
            char e = p[1];
            p += 2;
            switch (e) {
            case '"': code = '"'; break;
            case '\\': code = '\\'; break;
            case '/': code = '/'; break;
            case 'b': case 'f': case 'n': case 'r': case 't': code = ' '; break;
            case 'u':
                if (hex4(p, end, &code) != 0) return -1;
                p += 4;
                if (code >= 0xD800 && code < 0xDC00) {
                    unsigned low;
                    if (end - p < 6 || p[0] != '\\' || p[1] != 'u' || hex4(p + 2, end, &low) != 0 ||
                        low < 0xDC00 || low >= 0xE000)
                        code = '?';
                    else {
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                        p += 6;
                    }
                } else if (code >= 0xDC00 && code < 0xE000) {
                    code = '?';
                }
                break;
            default: return -1;
            }
        } else {
            code = (unsigned char)*p++;
            if (code >= 0x80) { /* raw UTF-8 from the agent: copied byte by byte */
                if (used + 1 < cap) out[used++] = (char)code;
                continue;
            }
        }
        if (code < 0x20 || code == 0x7F) code = '?';
        if (used + 5 < cap) used += utf8(code, out + used);
    }
    if (p >= end) return -1;
    out[used] = '\0';
    return 0;
}

static void unmeasured(const char *reason) {
    char line[LINE_MAX_BYTES + 64];
    snprintf(line, sizeof line, "trusthook-hook: audit mode, container starts unmeasured: %s",
             reason);
    openlog("trusthook-hook", LOG_PID, LOG_USER);
    syslog(LOG_WARNING, "%s", line);
    closelog();
    fprintf(stderr, "%s\n", line);
}

/* The agent's answer: "ok\n" and a result, or "error REASON". */
static enum outcome judge(struct hook *h, const char *answer, size_t len) {
    const char *newline = memchr(answer, '\n', len);
    size_t status_len = newline ? (size_t)(newline - answer) : len;
    if (len == 0)
        return fail(h, UNAVAILABLE, "trusthook agent on %s closed the connection unanswered",
                    h->socket);
    if (status_len == 2 && memcmp(answer, "ok", 2) == 0) {
        const char *result = newline ? newline + 1 : answer + len;
        size_t result_len = (size_t)(answer + len - result);
        size_t prefix = strlen(UNMEASURED);
        if (result_len >= prefix && memcmp(result, UNMEASURED, prefix) == 0) {
            char reason[LINE_MAX_BYTES];
            if (json_string(result + prefix, answer + len, reason, sizeof reason) != 0)
                snprintf(reason, sizeof reason, "(the agent's reason is malformed)");
            unmeasured(reason);
        }
        return OK;
    }
    if (status_len >= 6 && memcmp(answer, "error ", 6) == 0) {
        int shown = (int)(status_len - 6 < 2048 ? status_len - 6 : 2048);
        return fail(h, REFUSED, "%.*s", shown, answer + 6);
    }
    return fail(h, REFUSED, "trusthook agent on %s sent a malformed answer", h->socket);
}

static int finish(struct hook *h, enum outcome r) {
    if (r == OK) return 0;
    if (r == UNAVAILABLE && h->audit) {
        unmeasured(h->message);
        return 0;
    }
    fprintf(stderr, "trusthook-hook: %s\n", h->message);
    return 1;
}

int main(int argc, char **argv) {
    struct hook h = {.socket = DEFAULT_SOCKET, .timeout = DEFAULT_TIMEOUT,
                     .stage = "createRuntime"};
    if (argc == 2 && strcmp(argv[1], "--help") == 0) {
        printf("%s\n"
               "The OCI hook that hands each container start to the trusthook agent.\n\n"
               "Run at createRuntime (or prestart, --stage), it passes the OCI state on stdin\n"
               "to the agent listening on --socket (default %s), which measures\n"
               "and records the container. Any failure is one line on stderr and exit status\n"
               "1: the container does not start. With --audit, a failure to reach the agent\n"
               "is logged and the container starts unmeasured. --timeout: seconds to wait for\n"
               "the agent (default %g).\n",
               USAGE, DEFAULT_SOCKET, DEFAULT_TIMEOUT);
        return 0;
    }
    for (int i = 1; i < argc; i++) /* bad arguments in audit mode are forgiven too */
        if (strcmp(argv[i], "--audit") == 0) h.audit = 1;
    enum outcome r = parse_args(&h, argc, argv);
    if (r != OK) return finish(&h, r);
    size_t cap = MAX_MESSAGE_BYTES + 128;
    char *request = malloc(cap);
    char *answer = malloc(MAX_MESSAGE_BYTES + 1);
    if (request == NULL || answer == NULL) {
        free(request);
        free(answer);
        return finish(&h, fail(&h, UNAVAILABLE, "out of memory"));
    }
    size_t request_len = 0, answer_len = 0;
    r = read_request(&h, request, cap, &request_len);
    if (r == OK)
        r = exchange(&h, request, request_len, answer, MAX_MESSAGE_BYTES + 1, &answer_len);
    if (r == OK) r = judge(&h, answer, answer_len);
    free(request);
    free(answer);
    return finish(&h, r);
}
