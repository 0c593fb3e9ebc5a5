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
 * Compiled with trusthook_client.c (the socket client it shares with trusthook-runtime) by the
 * package build (setup.py) and by scripts/build-deb; no library beyond libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "trusthook_client.h"

#define DEFAULT_SOCKET "/run/trusthook/agent.sock"
#define DEFAULT_TIMEOUT 30.0
#define USAGE "usage: trusthook-hook [--socket PATH] [--timeout SECONDS] [--stage STAGE] [--audit]"
#define UNMEASURED "{\"unmeasured\":\""

struct hook {
    struct client client; /* the socket, the timeout, the one line a failure prints */
    const char *stage;
    int audit;
};

#define fail(h, kind, ...) client_fail(&(h)->client, kind, __VA_ARGS__)
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
            h->client.socket = value;
        } else if (which == 2) {
            if (strcmp(value, "createRuntime") != 0 && strcmp(value, "prestart") != 0)
                return fail(h, UNAVAILABLE,
                            "--stage must be one of createRuntime, prestart, got '%.200s'", value);
            h->stage = value;
        } else if (parse_timeout(value, &h->client.timeout) != 0) {
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
    const char *result;
    size_t result_len;
    enum outcome r = client_judge(&h->client, answer, len, &result, &result_len);
    size_t prefix = strlen(UNMEASURED);
    if (r == OK && result_len >= prefix && memcmp(result, UNMEASURED, prefix) == 0) {
        char reason[LINE_MAX_BYTES];
        const char *p = result + prefix;
        if (client_json_string(&p, answer + len, reason, sizeof reason) != 0)
            snprintf(reason, sizeof reason, "(the agent's reason is malformed)");
        unmeasured(reason);
    }
    return r;
}

static int finish(struct hook *h, enum outcome r) {
    if (r == OK) return 0;
    if (r == UNAVAILABLE && h->audit) {
        unmeasured(h->client.message);
        return 0;
    }
    fprintf(stderr, "trusthook-hook: %s\n", h->client.message);
    return 1;
}

int main(int argc, char **argv) {
    struct hook h = {.client = {.socket = DEFAULT_SOCKET, .timeout = DEFAULT_TIMEOUT},
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
        r = client_exchange(&h.client, request, request_len, answer, MAX_MESSAGE_BYTES + 1,
                            &answer_len);
    if (r == OK) r = judge(&h, answer, answer_len);
    free(request);
    free(answer);
    return finish(&h, r);
}
