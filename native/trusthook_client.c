/* The socket client of trusthook-hook and trusthook-runtime (trusthook_client.h). */
#define _GNU_SOURCE
#include "trusthook_client.h"

#include <errno.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

enum outcome client_fail(struct client *c, enum outcome kind, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(c->message, sizeof c->message, format, args);
    va_end(args);
    return kind;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

enum outcome client_check_directory(struct client *c) {
    char directory[sizeof(((struct sockaddr_un *)0)->sun_path) + 1];
    const char *slash = strrchr(c->socket, '/');
    if (slash == NULL)
        snprintf(directory, sizeof directory, ".");
    else if (slash == c->socket)
        snprintf(directory, sizeof directory, "/");
    else
        snprintf(directory, sizeof directory, "%.*s", (int)(slash - c->socket), c->socket);
    struct stat st;
    if (stat(directory, &st) != 0)
        return client_fail(c, UNAVAILABLE, "agent socket directory %s: %s", directory,
                           strerror(errno));
    if (st.st_uid != 0 || (st.st_mode & 022))
        return client_fail(c, UNAVAILABLE,
                           "agent socket directory %s is not root's alone (owner uid %u, mode %o);"
                           " refusing to talk to an agent there",
                           directory, (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
    return OK;
}

static enum outcome timed_out(struct client *c) {
    return client_fail(c, UNAVAILABLE, "trusthook agent on %s did not answer within %gs",
                       c->socket, c->timeout);
}

static enum outcome io_error(struct client *c, int error) {
    if (error == ENOENT)
        return client_fail(c, UNAVAILABLE,
                           "agent socket %s does not exist; is the trusthook agent running?",
                           c->socket);
    if (error == ECONNREFUSED)
        return client_fail(c, UNAVAILABLE,
                           "nothing listens on agent socket %s; is the trusthook agent running?",
                           c->socket);
    return client_fail(c, UNAVAILABLE, "cannot talk to the trusthook agent on %s: %s", c->socket,
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

enum outcome client_exchange(struct client *c, const char *request, size_t request_len,
                             char *answer, size_t cap, size_t *answer_len) {
    enum outcome r = client_check_directory(c);
    if (r != OK) return r;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(c->socket) >= sizeof addr.sun_path)
        return client_fail(c, UNAVAILABLE, "agent socket path %.200s is too long", c->socket);
    strcpy(addr.sun_path, c->socket);
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return io_error(c, errno);
    double deadline = now() + c->timeout;
    r = OK;
    /* a full listen backlog answers EAGAIN on unix sockets: wait and try again */
    while (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN) {
            r = io_error(c, errno);
            goto out;
        }
        if (now() >= deadline) {
            r = timed_out(c);
            goto out;
        }
        usleep(2000);
    }
    struct ucred peer;
    socklen_t peer_len = sizeof peer;
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &peer, &peer_len) != 0) {
        r = io_error(c, errno);
        goto out;
    }
    if (peer.uid != 0) {
        r = client_fail(c, REFUSED,
                        "the process listening on agent socket %s runs as uid %u, not root;"
                        " refusing to talk to it",
                        c->socket, (unsigned)peer.uid);
        goto out;
    }
    for (size_t sent = 0; sent < request_len;) {
        ssize_t n = send(fd, request + sent, request_len - sent, MSG_NOSIGNAL);
        if (n >= 0) {
            sent += (size_t)n;
        } else if (errno == EAGAIN) {
            if (wait_for(fd, POLLOUT, deadline) != 0) {
                r = timed_out(c);
                goto out;
            }
        } else if (errno != EINTR) {
            r = io_error(c, errno);
            goto out;
        }
    }
    shutdown(fd, SHUT_WR);
    size_t used = 0;
    for (;;) { /* ``answer`` holds cap = MAX_MESSAGE_BYTES + 1 bytes: one more is too many */
        if (used == cap) {
            r = client_fail(c, REFUSED, "trusthook agent's answer is larger than %d bytes",
                            MAX_MESSAGE_BYTES);
            goto out;
        }
        ssize_t n = recv(fd, answer + used, cap - used, 0);
        if (n == 0) break;
        if (n > 0) {
            used += (size_t)n;
        } else if (errno == EAGAIN) {
            if (wait_for(fd, POLLIN, deadline) != 0) {
                r = timed_out(c);
                goto out;
            }
        } else if (errno != EINTR) {
            r = io_error(c, errno);
            goto out;
        }
    }
    *answer_len = used;
out:
    close(fd);
    return r;
}

enum outcome client_judge(struct client *c, const char *answer, size_t len, const char **result,
                          size_t *result_len) {
    const char *newline = memchr(answer, '\n', len);
    size_t status_len = newline ? (size_t)(newline - answer) : len;
    if (len == 0)
        return client_fail(c, UNAVAILABLE,
                           "trusthook agent on %s closed the connection unanswered", c->socket);
    if (status_len == 2 && memcmp(answer, "ok", 2) == 0) {
        *result = newline ? newline + 1 : answer + len;
        *result_len = (size_t)(answer + len - *result);
        return OK;
    }
    if (status_len >= 6 && memcmp(answer, "error ", 6) == 0) {
        int shown = (int)(status_len - 6 < 2048 ? status_len - 6 : 2048);
        return client_fail(c, REFUSED, "%.*s", shown, answer + 6);
    }
    return client_fail(c, REFUSED, "trusthook agent on %s sent a malformed answer", c->socket);
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

int client_json_string(const char **pp, const char *end, char *out, size_t cap) {
    const char *p = *pp;
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
    *pp = p + 1;
    return 0;
}

int client_json_append(char *out, size_t cap, size_t *used, const char *value) {
    size_t u = *used;
    if (u + 1 >= cap) return -1;
    out[u++] = '"';
    for (const unsigned char *p = (const unsigned char *)value; *p; p++) {
        if (u + 7 >= cap) return -1;
        if (*p == '"' || *p == '\\') {
            out[u++] = '\\';
            out[u++] = (char)*p;
        } else if (*p < 0x20 || *p == 0x7F) {
            u += (size_t)snprintf(out + u, cap - u, "\\u%04x", *p);
        } else {
            out[u++] = (char)*p;
        }
    }
    if (u + 2 >= cap) return -1;
    out[u++] = '"';
    out[u] = '\0';
    *used = u;
    return 0;
}
