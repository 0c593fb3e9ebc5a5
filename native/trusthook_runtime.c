/* trusthook-runtime: the OCI runtime shim engines run in place of runc or crun (Docker's
 * daemon.json "runtimes", containerd's BinaryName, a Kubernetes RuntimeClass).
 *
 * It reads the command line exactly as runc 1.1 and crun 1.8 read it and refuses anything it
 * cannot classify (a subcommand misread as an argument would run unmeasured). Every
 * subcommand but create, run, delete, checkpoint and restore is an execv of the real runtime
 * with the identical arguments, without asking the agent. For create, run, checkpoint and
 * restore it asks the trusthook agent to prepare the bundle ("prepare", docs/api.md §3.4):
 * the agent writes trusthook's hook into config.json, mounts a tmpfs root for a container from
 * an encrypted image, and decides checkpoints and restores; then the shim execs the runtime.
 * When the agent made a tmpfs root, the runtime runs as a child instead (signals forwarded)
 * and the shim removes the root when the container is gone: after a create or run that
 * failed, after an attached run. A delete of a container with a root runs as a child too,
 * and the root goes after the delete succeeds; a delete of any other container is an execv.
 *
 * Where things are: the agent's socket is $TRUSTHOOK_AGENT_SOCKET, else /run/trusthook/agent.sock;
 * beside it the agent writes, at every start, SOCKET.runtime: the real runtime's absolute
 * path, the tmpfs roots' directory and the seconds to wait for an answer. The shim reads no
 * trusthook config file. Fails closed: every failure is one line on stderr (and in the
 * runtime's --log, in runc's format) and exit status 1, and the runtime does not run.
 *
 * Compiled with trusthook_client.c by the package build (setup.py) and by scripts/build-deb;
 * no library beyond libc.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "trusthook_client.h"

#define DEFAULT_SOCKET "/run/trusthook/agent.sock"
#define SOCKET_ENV "TRUSTHOOK_AGENT_SOCKET"
#define CONFIG_ENV "TRUSTHOOK_CONFIG"
#define RUNTIME_SUFFIX ".runtime"
#define RUNTIME_FILE_VERSION "1"
#define USAGE "usage: trusthook-runtime [RUNTIME GLOBAL FLAGS] SUBCOMMAND [ARGUMENTS]"
#define NAME_BYTES 64

/* The message of a refusal: set by fail(), printed by report(). */
static char message[2 * LINE_MAX_BYTES];
/* The child runtime, for the signal handler that forwards termination signals to it. */
static volatile pid_t child_pid = 0;

static int fail(const char *format, ...) __attribute__((format(printf, 1, 2)));

static int fail(const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    return -1;
}

/* ``value`` as Python's repr() shows a str (the messages are the Python shim's). */
static const char *repr(const char *value, char *out, size_t cap) {
    char quote = strchr(value, '\'') && !strchr(value, '"') ? '"' : '\'';
    size_t u = 0;
    out[u++] = quote;
    for (const unsigned char *p = (const unsigned char *)value; *p && u + 8 < cap; p++) {
        if (*p == '\\' || *p == (unsigned char)quote) {
            out[u++] = '\\';
            out[u++] = (char)*p;
        } else if (*p == '\n') {
            out[u++] = '\\', out[u++] = 'n';
        } else if (*p == '\t') {
            out[u++] = '\\', out[u++] = 't';
        } else if (*p == '\r') {
            out[u++] = '\\', out[u++] = 'r';
        } else if (*p < 0x20 || *p == 0x7F) {
            u += (size_t)snprintf(out + u, cap - u, "\\x%02x", *p);
        } else {
            out[u++] = (char)*p;
        }
    }
    out[u++] = quote;
    out[u] = '\0';
    return out;
}

/* --- the command line, as runc and crun read it ---------------------------------------- */

struct flag_name {
    const char *name;
    const char *canonical; /* NULL: refused, ``reason`` says why */
    const char *reason;
};

static const char *const GLOBAL_VALUES[] = {"log",      "log-format", "log-level",     "root",
                                            "criu",     "rootless",   "cgroup-manager", NULL};
static const char *const GLOBAL_BOOLS[] = {"debug", "systemd-cgroup", NULL};
static const char *const INFO_FLAGS[] = {"help", "h", "version", "v", "V", "?", "usage", NULL};

#define OTHER_CONFIG "crun's --config names another file than the bundle's config.json"
#define REGEX "crun's delete --regex names containers the shim cannot know"
#define PAGE_SERVER "--page-server sends the container's memory over the network, in plaintext"

/* Per subcommand: its value flags, its boolean flags, its refused flags. */
static const struct flag_name CREATE_VALUES[] = {
    {"bundle", "bundle", NULL},
    {"b", "bundle", NULL},
    {"console-socket", "console-socket", NULL},
    {"pid-file", "pid-file", NULL},
    {"preserve-fds", "preserve-fds", NULL},
    {NULL, NULL, NULL}};
static const struct flag_name CREATE_BOOLS[] = {{"no-pivot", "no-pivot", NULL},
                                                {"no-new-keyring", "no-new-keyring", NULL},
                                                {"no-subreaper", "no-subreaper", NULL},
                                                {NULL, NULL, NULL}};
static const struct flag_name RUN_BOOLS[] = {{"no-pivot", "no-pivot", NULL},
                                             {"no-new-keyring", "no-new-keyring", NULL},
                                             {"detach", "detach", NULL},
                                             {"d", "detach", NULL},
                                             {"keep", "keep", NULL},
                                             {"no-subreaper", "no-subreaper", NULL},
                                             {NULL, NULL, NULL}};
static const struct flag_name CREATE_REFUSED[] = {
    {"config", NULL, OTHER_CONFIG}, {"f", NULL, OTHER_CONFIG}, {NULL, NULL, NULL}};
static const struct flag_name NONE[] = {{NULL, NULL, NULL}};
static const struct flag_name DELETE_BOOLS[] = {
    {"force", "force", NULL}, {"f", "force", NULL}, {NULL, NULL, NULL}};
static const struct flag_name DELETE_REFUSED[] = {
    {"regex", NULL, REGEX}, {"r", NULL, REGEX}, {NULL, NULL, NULL}};
#define CRIU_VALUES                                                                            \
    {"image-path", "image-path", NULL}, {"work-path", "work-path", NULL},                      \
        {"manage-cgroups-mode", "manage-cgroups-mode", NULL}, {"empty-ns", "empty-ns", NULL}
#define CRIU_BOOLS                                                                             \
    {"tcp-established", "tcp-established", NULL}, {"ext-unix-sk", "ext-unix-sk", NULL},        \
        {"shell-job", "shell-job", NULL}, {"file-locks", "file-locks", NULL},                  \
        {"auto-dedup", "auto-dedup", NULL}, {"lazy-pages", "lazy-pages", NULL}
static const struct flag_name CHECKPOINT_VALUES[] = {CRIU_VALUES,
                                                     {"parent-path", "parent-path", NULL},
                                                     {"status-fd", "status-fd", NULL},
                                                     {NULL, NULL, NULL}};
static const struct flag_name CHECKPOINT_BOOLS[] = {CRIU_BOOLS,
                                                    {"leave-running", "leave-running", NULL},
                                                    {"pre-dump", "pre-dump", NULL},
                                                    {NULL, NULL, NULL}};
static const struct flag_name CHECKPOINT_REFUSED[] = {{"page-server", NULL, PAGE_SERVER},
                                                      {NULL, NULL, NULL}};
static const struct flag_name RESTORE_VALUES[] = {CRIU_VALUES,
                                                  {"bundle", "bundle", NULL},
                                                  {"b", "bundle", NULL},
                                                  {"console-socket", "console-socket", NULL},
                                                  {"pid-file", "pid-file", NULL},
                                                  {"lsm-profile", "lsm-profile", NULL},
                                                  {"lsm-mount-context", "lsm-mount-context", NULL},
                                                  {NULL, NULL, NULL}};
static const struct flag_name RESTORE_BOOLS[] = {CRIU_BOOLS,
                                                 {"detach", "detach", NULL},
                                                 {"d", "detach", NULL},
                                                 {"no-subreaper", "no-subreaper", NULL},
                                                 {"no-pivot", "no-pivot", NULL},
                                                 {NULL, NULL, NULL}};

struct subcommand_flags {
    const char *command;
    const struct flag_name *values, *bools, *refused;
};

static const struct subcommand_flags SUBCOMMANDS[] = {
    {"create", CREATE_VALUES, CREATE_BOOLS, CREATE_REFUSED},
    {"run", CREATE_VALUES, RUN_BOOLS, CREATE_REFUSED},
    {"delete", NONE, DELETE_BOOLS, DELETE_REFUSED},
    {"checkpoint", CHECKPOINT_VALUES, CHECKPOINT_BOOLS, CHECKPOINT_REFUSED},
    {"restore", RESTORE_VALUES, RESTORE_BOOLS, CREATE_REFUSED},
    {NULL, NULL, NULL, NULL}};

struct invocation {
    const char *log, *log_format; /* --log and --log-format: where a refusal is also written */
    int parsed;                   /* the global flags were read: report() may use the log */
    int info;                     /* --help or --version: no subcommand runs */
    int command;                  /* the index of the subcommand in argv, 0 if none */
    /* of a subcommand in SUBCOMMANDS */
    const char *container_id;
    const char *bundle; /* --bundle/-b, NULL if not given */
    int detached;
};

static int in_list(const char *const *list, const char *name, size_t len) {
    for (; *list; list++)
        if (strlen(*list) == len && strncmp(*list, name, len) == 0) return 1;
    return 0;
}

static const struct flag_name *find(const struct flag_name *table, const char *name, size_t len) {
    for (; table->name; table++)
        if (strlen(table->name) == len && strncmp(table->name, name, len) == 0) return table;
    return NULL;
}

/* A flag argument's name (dashes removed: ``*name``, ``*len``) and its ``=value`` (NULL if
 * none). */
static int split(const char *arg, const char **name, size_t *len, const char **value) {
    const char *body = strncmp(arg, "--", 2) == 0 ? arg + 2 : arg + 1;
    char shown[LINE_MAX_BYTES];
    if (!*body || *body == '-') return fail("bad flag syntax %s", repr(arg, shown, sizeof shown));
    const char *eq = strchr(body, '=');
    *name = body;
    *len = eq ? (size_t)(eq - body) : strlen(body);
    *value = eq ? eq + 1 : NULL;
    return 0;
}

/* Go's strconv.ParseBool: 1 true, 0 false, -1 not a boolean. */
static int boolean(const char *value) {
    static const char *const yes[] = {"1", "t", "T", "true", "TRUE", "True", NULL};
    static const char *const no[] = {"0", "f", "F", "false", "FALSE", "False", NULL};
    for (int i = 0; yes[i]; i++)
        if (strcmp(value, yes[i]) == 0) return 1;
    for (int i = 0; no[i]; i++)
        if (strcmp(value, no[i]) == 0) return 0;
    return -1;
}

static int check_boolean(const char *arg, const char *value) {
    char a[LINE_MAX_BYTES], v[LINE_MAX_BYTES];
    if (value == NULL || boolean(value) >= 0) return 0;
    return fail("flag %s: expected a boolean value, got %s", repr(arg, a, sizeof a),
                repr(value, v, sizeof v));
}

/* The global flags and the subcommand. */
static int parse_globals(struct invocation *inv, int argc, char **argv) {
    int i = 1;
    char shown[LINE_MAX_BYTES];
    for (; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--") == 0) {
            i++;
            break;
        }
        if (arg[0] != '-' || strcmp(arg, "-") == 0) break;
        const char *name, *value;
        size_t len;
        if (split(arg, &name, &len, &value) != 0) return -1;
        if (in_list(INFO_FLAGS, name, len)) {
            inv->info = 1;
            return 0;
        }
        if (in_list(GLOBAL_VALUES, name, len)) {
            if (value == NULL) {
                if (i + 1 >= argc)
                    return fail("global flag %s has no value", repr(arg, shown, sizeof shown));
                value = argv[++i];
            }
            if (len == 3 && strncmp(name, "log", 3) == 0) inv->log = value;
            if (len == 10 && strncmp(name, "log-format", 10) == 0) inv->log_format = value;
        } else if (in_list(GLOBAL_BOOLS, name, len)) {
            if (check_boolean(arg, value) != 0) return -1;
        } else {
            return fail("unknown global flag %s; trusthook-runtime refuses to guess which"
                        " subcommand it would run",
                        repr(arg, shown, sizeof shown));
        }
    }
    inv->command = i < argc ? i : 0;
    return 0;
}

/* The flags and the one container id of a subcommand of SUBCOMMANDS; runc also takes flags
 * after the container id (urfave/cli moves flags first), so they may come in any order. */
static int parse_subcommand(struct invocation *inv, const struct subcommand_flags *sub, int argc,
                            char **argv) {
    const char *command = sub->command;
    int positional = 0;
    char shown[LINE_MAX_BYTES];
    for (int i = inv->command + 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--") == 0) {
            for (i++; i < argc; i++, positional++) inv->container_id = argv[i];
            break;
        }
        if (arg[0] != '-' || strcmp(arg, "-") == 0) {
            inv->container_id = arg;
            positional++;
            continue;
        }
        const char *name, *value;
        size_t len;
        if (split(arg, &name, &len, &value) != 0) return -1;
        const struct flag_name *f;
        if ((f = find(sub->values, name, len)) != NULL) {
            if (value == NULL) {
                if (i + 1 >= argc)
                    return fail("%s flag %s has no value", command, repr(arg, shown, sizeof shown));
                value = argv[++i];
            }
            if (strcmp(f->canonical, "bundle") == 0) inv->bundle = value;
        } else if ((f = find(sub->bools, name, len)) != NULL) {
            if (check_boolean(arg, value) != 0) return -1;
            if (strcmp(f->canonical, "detach") == 0)
                inv->detached = value == NULL || boolean(value) == 1;
        } else if ((f = find(sub->refused, name, len)) != NULL) {
            return fail("%s %s is refused: %s", command, arg, f->reason);
        } else {
            return fail("unknown %s flag %s; refusing to guess", command,
                        repr(arg, shown, sizeof shown));
        }
    }
    if (positional != 1)
        return fail("%s needs exactly one container id, got %d arguments", command, positional);
    return 0;
}

/* --- where the agent and the runtime are ------------------------------------------------ */

struct host {
    struct client client;
    char runtime[PATH_MAX];
    char roots[PATH_MAX];
};

static int read_value(const char *path, int line, const char *text, const char *key,
                      char *out, size_t cap) {
    size_t key_len = strlen(key);
    const char *end = strchr(text, '\n');
    size_t len = end ? (size_t)(end - text) : strlen(text);
    if (len <= key_len + 1 || strncmp(text, key, key_len) != 0 || text[key_len] != ' ' ||
        len - key_len - 1 >= cap)
        return fail("%s line %d: expected '%s VALUE'; restart the trusthook agent, which"
                    " writes it",
                    path, line, key);
    memcpy(out, text + key_len + 1, len - key_len - 1);
    out[len - key_len - 1] = '\0';
    return 0;
}

/* SOCKET.runtime, which the agent writes at every start (agent/main.py ``shim_file``):
 *   version 1\n runtime PATH\n roots PATH\n timeout SECONDS\n
 * read only if it, and its directory, are root's alone. */
static int read_host(struct host *h) {
    char path[PATH_MAX];
    if (snprintf(path, sizeof path, "%s%s", h->client.socket, RUNTIME_SUFFIX) >= (int)sizeof path)
        return fail("agent socket path %.200s is too long", h->client.socket);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC); /* read only after the checks */
    if (fd < 0 && errno == ENOENT)
        return fail("%s does not exist: the trusthook agent writes it as it starts (the real"
                    " runtime's path); is the agent running, with its socket at %s?",
                    path, h->client.socket);
    if (fd < 0) return fail("cannot read %s: %s", path, strerror(errno));
    if (client_check_directory(&h->client) != OK) {
        close(fd);
        return fail("%s", h->client.message);
    }
    struct stat st;
    char text[4097];
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != 0 || (st.st_mode & 022)) {
        close(fd);
        return fail("%s is not a file of root's alone (owner uid %u, mode %o); refusing it",
                    path, (unsigned)st.st_uid, (unsigned)(st.st_mode & 07777));
    }
    ssize_t got = read(fd, text, sizeof text - 1);
    int error = errno;
    close(fd);
    if (got < 0) return fail("cannot read %s: %s", path, strerror(error));
    if (got == (ssize_t)sizeof text - 1) return fail("%s is larger than 4096 bytes", path);
    text[got] = '\0';
    if (memchr(text, '\0', (size_t)got) != NULL) return fail("%s holds a NUL byte", path);
    char version[16], timeout[32];
    const char *lines[4] = {text, NULL, NULL, NULL};
    for (int i = 1; i < 4; i++) {
        const char *nl = strchr(lines[i - 1], '\n');
        if (nl == NULL) return fail("%s has %d lines, expected 4; restart the trusthook agent",
                                    path, i);
        lines[i] = nl + 1;
    }
    if (read_value(path, 1, lines[0], "version", version, sizeof version) != 0) return -1;
    if (strcmp(version, RUNTIME_FILE_VERSION) != 0)
        return fail("%s is version %s, expected %s; restart the trusthook agent", path, version,
                    RUNTIME_FILE_VERSION);
    if (read_value(path, 2, lines[1], "runtime", h->runtime, sizeof h->runtime) != 0 ||
        read_value(path, 3, lines[2], "roots", h->roots, sizeof h->roots) != 0 ||
        read_value(path, 4, lines[3], "timeout", timeout, sizeof timeout) != 0)
        return -1;
    const char *after = strchr(lines[3], '\n');
    if (after == NULL || after[1] != '\0')
        return fail("%s has more than 4 lines; restart the trusthook agent", path);
    char *end = NULL;
    errno = 0;
    double seconds = strtod(timeout, &end);
    if (end == timeout || *end || errno || isnan(seconds) || !(seconds > 0) || !(seconds < 1e9))
        return fail("%s: timeout must be a number of seconds > 0, got '%s'", path, timeout);
    if (h->roots[0] != '/') return fail("%s: roots must be an absolute path", path);
    h->client.timeout = seconds;
    return 0;
}

/* Python's "not found or not executable", for a runtime the agent could not find. */
static int check_runtime(const struct host *h) {
    struct stat st;
    char shown[PATH_MAX + 16];
    if (h->runtime[0] != '/' || stat(h->runtime, &st) != 0 || !S_ISREG(st.st_mode) ||
        access(h->runtime, X_OK) != 0)
        return fail("runtime %s not found or not executable",
                    repr(h->runtime, shown, sizeof shown));
    return 0;
}

/* --- refusals --------------------------------------------------------------------------- */

/* The one line: stderr, and the runtime's --log in runc's format (text or json). */
static void report(const struct invocation *inv) {
    fprintf(stderr, "trusthook-runtime: %s\n", message);
    if (!inv->parsed || inv->log == NULL || !*inv->log) return;
    char line[4 * sizeof message], text[2 * sizeof message + 32], now[40];
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    size_t n = strftime(now, sizeof now, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(now + n, sizeof now - n, ".%06ldZ", (long)tv.tv_usec);
    snprintf(text, sizeof text, "trusthook-runtime: %s", message);
    if (inv->log_format && strcmp(inv->log_format, "json") == 0) {
        size_t used = 0;
        int ok = snprintf(line, sizeof line, "{\"level\": \"error\", \"msg\": ") > 0;
        used = strlen(line);
        ok = ok && client_json_append(line, sizeof line, &used, text) == 0;
        if (!ok) return;
        snprintf(line + used, sizeof line - used, ", \"time\": \"%s\"}\n", now);
    } else {
        snprintf(line, sizeof line, "time=\"%s\" level=error msg=\"%s\"\n", now, text);
    }
    int fd = open(inv->log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0666);
    if (fd < 0) return; /* stderr already carries the message */
    ssize_t ignored = write(fd, line, strlen(line));
    (void)ignored;
    close(fd);
}

/* --- the agent's part ------------------------------------------------------------------- */

/* The bundle directory: --bundle taken from the working directory, else the working
 * directory (runtime-spec); as Python's os.path.join(cwd, bundle). */
static int bundle_path(const struct invocation *inv, char *out, size_t cap) {
    if (inv->bundle && inv->bundle[0] == '/') {
        if (snprintf(out, cap, "%s", inv->bundle) >= (int)cap)
            return fail("bundle path is too long");
        return 0;
    }
    char cwd[PATH_MAX];
    if (getcwd(cwd, sizeof cwd) == NULL)
        return fail("cannot find the working directory (the bundle): %s", strerror(errno));
    if (inv->bundle == NULL)
        return snprintf(out, cap, "%s", cwd) >= (int)cap ? fail("bundle path is too long") : 0;
    size_t len = strlen(cwd);
    const char *sep = len && cwd[len - 1] == '/' ? "" : "/";
    if (snprintf(out, cap, "%s%s%s", cwd, sep, inv->bundle) >= (int)cap)
        return fail("bundle path is too long");
    return 0;
}

/* Ask the agent to prepare ``command``; the tmpfs root it made (``root``, empty if none). */
static int prepare(struct host *h, const struct invocation *inv, const char *command, char *root,
                   size_t root_cap) {
    char bundle[PATH_MAX + 1] = "";
    int with_bundle = strcmp(command, "checkpoint") != 0;
    if (with_bundle && bundle_path(inv, bundle, sizeof bundle) != 0) return -1;
    size_t cap = 6 * (strlen(bundle) + strlen(inv->container_id)) + 256; /* \u00XX: 6 */
    char *request = malloc(cap), *answer = malloc(MAX_MESSAGE_BYTES + 1);
    int r = -1;
    size_t used = 0, answer_len = 0;
    if (request == NULL || answer == NULL) {
        fail("out of memory");
        goto out;
    }
    used = (size_t)snprintf(request, cap, "{\"op\":\"prepare\",\"params\":{\"bundle\":");
    int unfit = 0;
    if (with_bundle)
        unfit |= client_json_append(request, cap, &used, bundle);
    else
        used += (size_t)snprintf(request + used, cap - used, "null");
    used += (size_t)snprintf(request + used, cap - used, ",\"command\":\"%s\",\"container_id\":",
                             command);
    unfit |= client_json_append(request, cap, &used, inv->container_id);
    if (unfit) goto too_long;
    used += (size_t)snprintf(request + used, cap - used, "},\"version\":1}\n");
    const char *result = NULL;
    size_t result_len = 0;
    enum outcome o = client_exchange(&h->client, request, used, answer, MAX_MESSAGE_BYTES + 1,
                                     &answer_len);
    if (o == OK) o = client_judge(&h->client, answer, answer_len, &result, &result_len);
    if (o != OK) {
        fail("%s of container %s is refused: %s", command, inv->container_id, h->client.message);
        goto out;
    }
    /* the result: exactly {"root":null} or {"root":"ROOTS/ID"} */
    const char *end = result + result_len, *p = result;
    static const char prefix[] = "{\"root\":";
    root[0] = '\0';
    if ((size_t)(end - p) < sizeof prefix - 1 || memcmp(p, prefix, sizeof prefix - 1) != 0)
        goto malformed;
    p += sizeof prefix - 1;
    if (end - p == 5 && memcmp(p, "null}", 5) == 0) {
        r = 0;
        goto out;
    }
    if (p >= end || *p != '"') goto malformed;
    p++;
    if (client_json_string(&p, end, root, root_cap) != 0 || end - p != 1 || *p != '}')
        goto malformed;
    char expected[2 * PATH_MAX];
    snprintf(expected, sizeof expected, "%s/%s", h->roots, inv->container_id);
    if (strcmp(root, expected) != 0) goto malformed;
    r = 0;
    goto out;
malformed:
    fail("%s of container %s is refused: trusthook agent on %s sent a malformed answer", command,
         inv->container_id, h->client.socket);
    goto out;
too_long:
    fail("%s of container %.64s is refused: its request does not fit", command, inv->container_id);
out:
    free(request);
    free(answer);
    return r;
}

/* Unmount (detached: a running container keeps its own view) and remove a tmpfs root; a mount
 * that appears meanwhile (an agent that answered too late) is unmounted too. */
static int release(const char *root) {
    for (int attempt = 0;; attempt++) {
        if (umount2(root, MNT_DETACH | UMOUNT_NOFOLLOW) != 0 && errno != EINVAL && errno != ENOENT)
            return fail("cannot unmount %s: %s", root, strerror(errno));
        if (rmdir(root) == 0 || errno == ENOENT) return 0;
        if (errno != EBUSY || attempt == 10)
            return fail("cannot remove %s: %s", root, strerror(errno));
    }
}

/* Whether ``id`` could name a directory under the roots (as the agent's check_container_name). */
static int plain_name(const char *id) {
    size_t len = strlen(id);
    if (len == 0 || len > 1024 || strcmp(id, ".") == 0 || strcmp(id, "..") == 0) return 0;
    for (const unsigned char *p = (const unsigned char *)id; *p; p++)
        if (*p < 0x20 || *p == 0x7F || *p == '/') return 0;
    return 1;
}

static void forward(int signum) {
    if (child_pid > 0) kill(child_pid, signum);
}

/* Run the runtime as a child (every file descriptor passed through, termination signals
 * forwarded); its exit status, or -1. */
static int run_child(const char *runtime, char **argv) {
    static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT};
    struct sigaction action = {.sa_handler = forward}, previous[4];
    sigemptyset(&action.sa_mask);
    sigset_t block, old;
    sigemptyset(&block);
    for (int i = 0; i < 4; i++) sigaddset(&block, forwarded[i]);
    sigprocmask(SIG_BLOCK, &block, &old);
    pid_t pid = fork();
    if (pid < 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        return fail("cannot start the runtime %s: %s", runtime, strerror(errno));
    }
    if (pid == 0) {
        sigprocmask(SIG_SETMASK, &old, NULL);
        execv(runtime, argv);
        fprintf(stderr, "trusthook-runtime: cannot run the runtime %s: %s\n", runtime,
                strerror(errno));
        _exit(127);
    }
    child_pid = pid;
    for (int i = 0; i < 4; i++) sigaction(forwarded[i], &action, &previous[i]);
    sigprocmask(SIG_SETMASK, &old, NULL);
    int status;
    while (waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return fail("cannot wait for the runtime: %s", strerror(errno));
    for (int i = 0; i < 4; i++) sigaction(forwarded[i], &previous[i], NULL);
    child_pid = 0;
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static int exec_runtime(const struct host *h, char **argv) {
    execv(h->runtime, argv);
    return fail("cannot run the runtime %s: %s", h->runtime, strerror(errno));
}

static void help(void) {
    printf("%s\n"
           "The OCI runtime shim that puts trusthook in front of runc or crun.\n\n"
           "Engines run it in place of the real runtime, with the real runtime's arguments.\n"
           "For create, run, checkpoint and restore it asks the trusthook agent to prepare\n"
           "the bundle (the agent adds trusthook's hook, mounts a tmpfs root for an\n"
           "encrypted image, decides checkpoints and restores); every other subcommand goes\n"
           "straight to the real runtime. The agent's socket is $%s, else\n"
           "%s; beside it, SOCKET%s (written by the agent as it starts)\n"
           "names the real runtime. A command line the shim cannot classify, or any failure,\n"
           "is one line on stderr (and in --log) and exit status 1: the runtime does not run.\n"
           "The real runtime's own help: RUNTIME --help.\n",
           USAGE, SOCKET_ENV, DEFAULT_SOCKET, RUNTIME_SUFFIX);
}

static int shim(struct invocation *inv, struct host *h, int argc, char **argv) {
    if (parse_globals(inv, argc, argv) != 0) return -1;
    inv->parsed = 1;
    const char *socket = getenv(SOCKET_ENV);
    if (socket == NULL || !*socket) {
        if (getenv(CONFIG_ENV) && *getenv(CONFIG_ENV))
            return fail("%s is set, and trusthook-runtime reads no config file: set %s to that"
                        " config's [agent] socket as well",
                        CONFIG_ENV, SOCKET_ENV);
        socket = DEFAULT_SOCKET;
    }
    h->client.socket = socket;
    if (read_host(h) != 0 || check_runtime(h) != 0) return -1;
    argv[0] = h->runtime;
    const char *command = inv->command ? argv[inv->command] : NULL;
    const struct subcommand_flags *sub = NULL;
    for (int i = 0; command && SUBCOMMANDS[i].command; i++)
        if (strcmp(command, SUBCOMMANDS[i].command) == 0) sub = &SUBCOMMANDS[i];
    if (inv->info || sub == NULL) return exec_runtime(h, argv);
    if (parse_subcommand(inv, sub, argc, argv) != 0) return -1;
    char root[PATH_MAX + 1] = "";
    int is_delete = strcmp(command, "delete") == 0;
    if (is_delete) {
        struct stat st;
        if (snprintf(root, sizeof root, "%s/%s", h->roots, inv->container_id) >= (int)sizeof root)
            return fail("container id %.64s is too long", inv->container_id);
        if (lstat(root, &st) != 0) return exec_runtime(h, argv); /* no tmpfs root */
        const char *id = inv->container_id;
        char shown[LINE_MAX_BYTES];
        if (!*id || strchr(id, '/') || strcmp(id, ".") == 0 || strcmp(id, "..") == 0)
            return fail("container id %s is not a valid name", repr(id, shown, sizeof shown));
    } else {
        /* For a create or a run, the shim makes ROOTS/ID itself, exclusively, before it asks: a
         * root the agent mounts there is then the shim's to remove, also when no answer comes
         * (an agent killed or stuck while it prepared). */
        char made[PATH_MAX + 1] = "";
        int creates = strcmp(command, "create") == 0 || strcmp(command, "run") == 0;
        if (creates && plain_name(inv->container_id)) {
            char shown[LINE_MAX_BYTES];
            if (snprintf(made, sizeof made, "%s/%s", h->roots, inv->container_id) >=
                (int)sizeof made)
                return fail("container id %.64s is too long", inv->container_id);
            if (mkdir(made, 0700) != 0) {
                if (errno == EEXIST)
                    return fail("%s already exists: another container with id %s?", made,
                                repr(inv->container_id, shown, sizeof shown));
                return fail("cannot make %s: %s", made, strerror(errno));
            }
        }
        if (prepare(h, inv, command, root, sizeof root) != 0) {
            if (made[0]) {
                char refusal[sizeof message];
                memcpy(refusal, message, sizeof message);
                if (release(made) != 0) report(inv); /* that line first, the refusal's last */
                memcpy(message, refusal, sizeof message);
            }
            return -1;
        }
        if (made[0] && !root[0] && release(made) != 0) return -1; /* not an encrypted image */
    }
    if (!root[0]) return exec_runtime(h, argv);
    int code = run_child(h->runtime, argv);
    if (code < 0) { /* no runtime ran, or it cannot be waited for: the root goes */
        report(inv);
        if (!is_delete) release(root);
        return 1;
    }
    /* no container, no plaintext: after a delete, a failed create or run, an attached run */
    int attached_run = strcmp(command, "run") == 0 && !inv->detached;
    int gone = is_delete ? code == 0 : code != 0 || attached_run;
    if (gone && release(root) != 0) {
        report(inv);
        return code ? code : 1;
    }
    return code;
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--help") == 0) {
        help();
        return 0;
    }
    struct invocation inv = {0};
    struct host h = {.client = {.socket = DEFAULT_SOCKET}};
    int code = shim(&inv, &h, argc, argv);
    if (code < 0) {
        report(&inv);
        return 1;
    }
    return code;
}
