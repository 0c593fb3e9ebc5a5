/* The socket client the per-start programs share (trusthook-hook, trusthook-runtime): one
 * request to the trusthook agent on its unix socket, and its answer (docs/api.md, §1 and §2).
 *
 * The agent is asked only if the socket's directory is root's alone and the process listening
 * on it runs as root (SO_PEERCRED). A request is a header line and a body; the client shuts
 * down its side and reads the answer, "ok\n" and a result or "error REASON", to the end. No
 * library beyond libc.
 */
#ifndef TRUSTHOOK_CLIENT_H
#define TRUSTHOOK_CLIENT_H

#include <stddef.h>

#define MAX_MESSAGE_BYTES (1 << 20)
#define LINE_MAX_BYTES 4096

/* How a failure ends: the agent refused, or there was no agent to ask. */
enum outcome { OK = 0, REFUSED, UNAVAILABLE };

struct client {
    const char *socket;
    double timeout;               /* seconds, for the whole exchange */
    char message[LINE_MAX_BYTES]; /* the one line a failure prints */
};

/* Set ``c->message`` and return ``kind``. */
enum outcome client_fail(struct client *c, enum outcome kind, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

/* Refuse a socket (or a file beside it) whose directory someone other than root could have
 * put there. */
enum outcome client_check_directory(struct client *c);

/* Send ``request`` and read the whole answer into ``answer`` (``cap`` = MAX_MESSAGE_BYTES + 1:
 * one byte more than the largest answer). */
enum outcome client_exchange(struct client *c, const char *request, size_t request_len,
                             char *answer, size_t cap, size_t *answer_len);

/* The agent's answer: OK with ``*result`` the bytes after "ok\n", or REFUSED with the reason
 * of "error REASON" (or a malformed answer) in ``c->message``. */
enum outcome client_judge(struct client *c, const char *answer, size_t len, const char **result,
                          size_t *result_len);

/* The JSON string starting at ``*p`` (after its opening quote), decoded into ``out`` (cut to
 * fit, control characters shown as '?'); ``*p`` moves past its closing quote. 0, or -1 if it
 * is not a JSON string. */
int client_json_string(const char **p, const char *end, char *out, size_t cap);

/* Append ``value`` to ``out`` (``*used`` of ``cap`` bytes) as a JSON string; -1 if it does not
 * fit. Bytes >= 0x80 are copied: the agent refuses what is not UTF-8. */
int client_json_append(char *out, size_t cap, size_t *used, const char *value);

#endif
