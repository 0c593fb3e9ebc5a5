/* trusthook native hasher. See trusthook_hash.h and docs/measurement.md.
 *
 * Tree digest: the calling thread walks (getdents64 relative to open directory fds, O_NOFOLLOW,
 * d_type to skip a stat for regular files and directories) and queues every regular file;
 * meanwhile nthreads - 1 workers, and the caller once the walk is done, open each queued file with
 * openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS) from the root fd, fstat it, read its xattrs and
 * hash it in 64 KiB reads. Then the entries are sorted by raw path, hard links marked, and the
 * canonical records streamed into one SHA-256. Nothing calls back into Python.
 *
 * Digest cache (th_cache_*): a set-associative table of fixed size, CACHE_WAYS entries per set,
 * each set under one of CACHE_LOCKS striped mutexes, CLOCK replacement within a set. A worker
 * looks a file up after its first fstat and, on a miss, stores the digest only after the
 * second fstat matched the first and only if the file's ctime is old enough (see admit()). */
#define _GNU_SOURCE
#include <stddef.h>

#include "trusthook_hash.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/random.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/vfs.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64 * 1024)
#define MAGIC "trusthook-rootfs-v1\n"
#define SLAB 4096            /* entries per slab: entries never move once made */
#define BATCH 32             /* queued files a worker takes at once */
#define INLINE_PATH_LEN 4000 /* longer paths may not fit one openat2: hashed by the walker */
#define FILE_FLAGS (O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)

struct xattr {
    char *name; /* NUL-terminated, as the kernel lists it */
    size_t nlen;
    unsigned char *value;
    size_t vlen;
};

struct entry {
    char *path; /* relative, '/'-joined, no leading slash; "" is the root */
    size_t plen;
    char kind;
    uint32_t mode, uid, gid;
    uint64_t size;
    dev_t dev;
    ino_t ino;
    nlink_t nlink;
    uint32_t rmaj, rmin;
    char *target; /* symlink target (owned) or hard-link primary path (borrowed) */
    size_t tlen;
    struct xattr *xattrs;
    size_t nx;
    unsigned char sha[32];
    int has_stat; /* the walker stat'ed it (d_type unknown): the worker checks identity */
};

struct slab {
    struct slab *next;
    size_t used;
    struct entry items[SLAB];
};

/* What a cached digest is keyed by: everything the kernel changes when the content changes. */
struct cache_key {
    uint64_t dev, ino, size;
    int64_t mtime_s, ctime_s;
    uint32_t mtime_ns, ctime_ns;
};

#define CACHE_WAYS 16
#define CACHE_LOCKS 64
#define CACHE_MAX_ENTRIES (1ULL << 30)

struct cache_slot {
    struct cache_key key;
    unsigned char sha[32];
    unsigned char used, ref; /* ref: the CLOCK bit, set on every hit */
};

struct th_cache {
    struct cache_slot *slots; /* nsets * ways, set s at slots + s * ways */
    unsigned char *hands;     /* per set: the next way CLOCK looks at */
    uint64_t nsets, ways, seed;
    long long min_age_ns;
    pthread_mutex_t locks[CACHE_LOCKS];
    unsigned long long hits, misses, entries; /* atomics */
};

struct tree {
    int root_fd;
    const EVP_MD *md;
    struct th_cache *cache; /* NULL: no cache */
    int cache_fs;           /* the root's filesystem is one whose ctime the cache may rely on */
    dev_t root_dev;
    struct timespec admit_before; /* a file changed at or after this is not admitted */
    struct slab *slabs;
    struct entry **v; /* every entry, in walk order, then sorted */
    size_t n, cap;
    /* the queue of regular files: the walker appends, workers take; all under lock */
    pthread_mutex_t lock;
    pthread_cond_t more;
    struct entry **queue;
    size_t queued, taken, qcap;
    int walk_done;
    int no_listxattrat; /* the kernel predates listxattrat(2) (Linux 6.13) */
    int failed; /* set once (atomic); the first error message wins */
    int status;
    char *errbuf;
    size_t errlen;
    unsigned long long bytes;
};

int th_version(void) { return TH_NATIVE_VERSION; }

int th_cache_new(unsigned long long max_entries, long long min_age_ns, th_cache **cache_out,
                 char *errbuf, size_t errlen) {
    *cache_out = NULL;
    if (max_entries < 1 || max_entries > CACHE_MAX_ENTRIES) {
        snprintf(errbuf, errlen, "cache max_entries must be 1..%llu, got %llu", CACHE_MAX_ENTRIES, max_entries);
        return TH_ERR_ARG;
    }
    if (min_age_ns < 0) {
        snprintf(errbuf, errlen, "cache min_age_ns must be >= 0, got %lld", min_age_ns);
        return TH_ERR_ARG;
    }
    struct th_cache *c = calloc(1, sizeof *c);
    if (!c) goto nomem;
    c->ways = max_entries < CACHE_WAYS ? max_entries : CACHE_WAYS;
    c->nsets = max_entries / c->ways;
    c->min_age_ns = min_age_ns;
    /* calloc of a large table maps zero pages: memory becomes resident as entries fill it */
    c->slots = calloc(c->nsets * c->ways, sizeof *c->slots);
    c->hands = calloc(c->nsets, 1);
    if (!c->slots || !c->hands) goto nomem;
    /* the seed spreads keys over sets; a guessable one only lets a writer cause misses */
    if (getrandom(&c->seed, sizeof c->seed, GRND_NONBLOCK) != (ssize_t)sizeof c->seed)
        c->seed = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)c;
    for (int i = 0; i < CACHE_LOCKS; i++) pthread_mutex_init(&c->locks[i], NULL);
    *cache_out = c;
    return TH_OK;
nomem:
    if (c) {
        free(c->slots);
        free(c->hands);
        free(c);
    }
    snprintf(errbuf, errlen, "out of memory for a digest cache of %llu entries", max_entries);
    return TH_ERR_NOMEM;
}

void th_cache_free(th_cache *c) {
    if (!c) return;
    for (int i = 0; i < CACHE_LOCKS; i++) pthread_mutex_destroy(&c->locks[i]);
    free(c->slots);
    free(c->hands);
    free(c);
}

void th_cache_stats(th_cache *c, unsigned long long *hits, unsigned long long *misses,
                    unsigned long long *entries, unsigned long long *capacity) {
    *hits = __atomic_load_n(&c->hits, __ATOMIC_RELAXED);
    *misses = __atomic_load_n(&c->misses, __ATOMIC_RELAXED);
    *entries = __atomic_load_n(&c->entries, __ATOMIC_RELAXED);
    *capacity = c->nsets * c->ways;
}

static uint64_t mix(uint64_t h, uint64_t v) {
    h ^= v + 0x9E3779B97F4A7C15ULL + (h << 6) + (h >> 2);
    h ^= h >> 31;
    h *= 0xBF58476D1CE4E5B9ULL;
    return h ^ (h >> 29);
}

static uint64_t cache_set(const struct th_cache *c, const struct cache_key *k) {
    uint64_t h = mix(c->seed, k->dev);
    h = mix(h, k->ino);
    h = mix(h, k->size);
    h = mix(h, (uint64_t)k->mtime_s ^ ((uint64_t)k->mtime_ns << 34));
    h = mix(h, (uint64_t)k->ctime_s ^ ((uint64_t)k->ctime_ns << 34));
    return h % c->nsets;
}

static int key_eq(const struct cache_key *a, const struct cache_key *b) {
    return a->dev == b->dev && a->ino == b->ino && a->size == b->size && a->mtime_s == b->mtime_s &&
           a->mtime_ns == b->mtime_ns && a->ctime_s == b->ctime_s && a->ctime_ns == b->ctime_ns;
}

static void make_key(struct cache_key *k, const struct stat *st) {
    memset(k, 0, sizeof *k);
    k->dev = (uint64_t)st->st_dev;
    k->ino = (uint64_t)st->st_ino;
    k->size = (uint64_t)st->st_size;
    k->mtime_s = (int64_t)st->st_mtim.tv_sec;
    k->mtime_ns = (uint32_t)st->st_mtim.tv_nsec;
    k->ctime_s = (int64_t)st->st_ctim.tv_sec;
    k->ctime_ns = (uint32_t)st->st_ctim.tv_nsec;
}

/* Copy the cached digest of k to sha; 1 on a hit, 0 on a miss. */
static int cache_lookup(struct th_cache *c, const struct cache_key *k, unsigned char *sha) {
    uint64_t set = cache_set(c, k);
    struct cache_slot *s = c->slots + set * c->ways;
    int hit = 0;
    pthread_mutex_t *lock = &c->locks[set % CACHE_LOCKS];
    pthread_mutex_lock(lock);
    for (uint64_t w = 0; w < c->ways; w++) {
        if (s[w].used && key_eq(&s[w].key, k)) {
            memcpy(sha, s[w].sha, 32);
            s[w].ref = 1;
            hit = 1;
            break;
        }
    }
    pthread_mutex_unlock(lock);
    __atomic_fetch_add(hit ? &c->hits : &c->misses, 1, __ATOMIC_RELAXED);
    return hit;
}

/* Store sha under k: in the slot already holding k, else a free way of its set, else the way
 * CLOCK picks (the first from the hand without its ref bit, clearing the bits it passes). */
static void cache_insert(struct th_cache *c, const struct cache_key *k, const unsigned char *sha) {
    uint64_t set = cache_set(c, k);
    struct cache_slot *s = c->slots + set * c->ways, *victim = NULL;
    pthread_mutex_t *lock = &c->locks[set % CACHE_LOCKS];
    pthread_mutex_lock(lock);
    for (uint64_t w = 0; w < c->ways && !victim; w++)
        if (s[w].used && key_eq(&s[w].key, k)) victim = &s[w];
    for (uint64_t w = 0; w < c->ways && !victim; w++)
        if (!s[w].used) {
            victim = &s[w];
            __atomic_fetch_add(&c->entries, 1, __ATOMIC_RELAXED);
        }
    while (!victim) {
        struct cache_slot *at = &s[c->hands[set]];
        c->hands[set] = (unsigned char)((c->hands[set] + 1) % c->ways);
        if (at->ref)
            at->ref = 0;
        else
            victim = at;
    }
    victim->key = *k;
    memcpy(victim->sha, sha, 32);
    victim->used = 1;
    victim->ref = 0;
    pthread_mutex_unlock(lock);
}

/* The filesystems whose ctime the kernel keeps itself, on every change, in memory: a file
 * server (NFS, CIFS, 9p), a FUSE daemon (virtiofs too) or anything unknown reports what it
 * likes, so files there are always hashed. */
static int cacheable_fs(int fd) {
    struct statfs sf;
    if (fstatfs(fd, &sf) < 0) return 0;
    switch ((unsigned long)sf.f_type) {
    case 0xEF53UL:     /* ext2, ext3, ext4 */
    case 0x58465342UL: /* xfs */
    case 0x9123683EUL: /* btrfs */
    case 0x01021994UL: /* tmpfs */
    case 0x794C7630UL: /* overlayfs: the real inode's times */
    case 0xF2F52010UL: /* f2fs */
    case 0x73717368UL: /* squashfs (read-only) */
    case 0xE0F5E1E2UL: /* erofs (read-only) */
        return 1;
    default: return 0;
    }
}

/* A hashed file may be cached only if its ctime is before admit_before (the start of the
 * measurement less the cache's min_age): a change after our stat then gets a later ctime even
 * where timestamps are coarse, unless the clock is set back. */
static int admit(const struct tree *t, const struct stat *st) {
    if (st->st_ctim.tv_sec != t->admit_before.tv_sec) return st->st_ctim.tv_sec < t->admit_before.tv_sec;
    return st->st_ctim.tv_nsec < t->admit_before.tv_nsec;
}

/* Write "/path" with bytes outside printable ASCII as \xNN. */
static void show_path(char *out, size_t outlen, const char *path, size_t plen) {
    size_t o = 0;
    out[o++] = '/';
    for (size_t i = 0; i < plen && o + 5 < outlen; i++) {
        unsigned char c = (unsigned char)path[i];
        if (c >= 0x20 && c < 0x7f && c != '\\')
            out[o++] = (char)c;
        else
            o += (size_t)snprintf(out + o, outlen - o, "\\x%02x", c);
    }
    out[o] = '\0';
}

static int failed(struct tree *t) { return __atomic_load_n(&t->failed, __ATOMIC_SEQ_CST); }

static int fail(struct tree *t, int status, const struct entry *e, const char *fmt, ...) {
    pthread_mutex_lock(&t->lock);
    if (!t->failed) {
        char shown[1024];
        char msg[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof msg, fmt, ap);
        va_end(ap);
        if (e) {
            show_path(shown, sizeof shown, e->path, e->plen);
            snprintf(t->errbuf, t->errlen, "%s %s", shown, msg);
        } else {
            snprintf(t->errbuf, t->errlen, "%s", msg);
        }
        t->status = status;
        __atomic_store_n(&t->failed, 1, __ATOMIC_SEQ_CST);
        pthread_cond_broadcast(&t->more); /* wake idle workers so they stop */
    }
    pthread_mutex_unlock(&t->lock);
    return status;
}

static int oom(struct tree *t) { return fail(t, TH_ERR_NOMEM, NULL, "out of memory"); }

/* A new entry for dir/name (dir "" is the root); NULL when out of memory. */
static struct entry *add_entry(struct tree *t, const char *dir, size_t dlen, const char *name) {
    if (!t->slabs || t->slabs->used == SLAB) {
        struct slab *s = malloc(sizeof *s);
        if (!s) return NULL;
        s->next = t->slabs;
        s->used = 0;
        t->slabs = s;
    }
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 4096;
        struct entry **v = realloc(t->v, cap * sizeof *v);
        if (!v) return NULL;
        t->v = v;
        t->cap = cap;
    }
    size_t nlen = strlen(name);
    size_t plen = dlen ? dlen + 1 + nlen : nlen;
    char *path = malloc(plen + 1);
    if (!path) return NULL;
    if (dlen) {
        memcpy(path, dir, dlen);
        path[dlen] = '/';
    }
    memcpy(path + plen - nlen, name, nlen + 1);
    struct entry *e = &t->slabs->items[t->slabs->used++];
    memset(e, 0, sizeof *e);
    e->path = path;
    e->plen = plen;
    t->v[t->n++] = e;
    return e;
}

static void fill_stat(struct entry *e, const struct stat *st) {
    e->mode = st->st_mode & 07777;
    e->uid = st->st_uid;
    e->gid = st->st_gid;
    e->dev = st->st_dev;
    e->ino = st->st_ino;
    e->nlink = st->st_nlink;
}

static int xattr_measured(const char *name) {
    if (!strncmp(name, "trusted.overlay.", 16) || !strncmp(name, "user.overlay.", 13)) return 0;
    if (!strcmp(name, "system.posix_acl_access") || !strcmp(name, "system.posix_acl_default"))
        return 1;
    if (!strncmp(name, "security.", 9)) return !strcmp(name, "security.capability");
    return !strncmp(name, "user.", 5) || !strncmp(name, "trusted.", 8);
}

static int xattr_cmp(const void *a, const void *b) {
    return strcmp(((const struct xattr *)a)->name, ((const struct xattr *)b)->name);
}

static ssize_t list_x(int fd, const char *path, char *buf, size_t len) {
    return fd >= 0 ? flistxattr(fd, buf, len) : llistxattr(path, buf, len);
}

static ssize_t get_x(int fd, const char *path, const char *name, void *buf, size_t len) {
    return fd >= 0 ? fgetxattr(fd, name, buf, len) : lgetxattr(path, name, buf, len);
}

/* One xattr value, sized by the kernel; NULL with errno set on failure. */
static unsigned char *get_value(int fd, const char *path, const char *name, size_t *len) {
    for (;;) {
        ssize_t size = get_x(fd, path, name, NULL, 0);
        if (size < 0) return NULL;
        unsigned char *value = malloc(size ? (size_t)size : 1);
        if (!value) return NULL;
        ssize_t got = get_x(fd, path, name, value, (size_t)size);
        if (got >= 0) {
            *len = (size_t)got;
            return value;
        }
        int err = errno;
        free(value);
        errno = err;
        if (err != ERANGE) return NULL;
    }
}

/* Read the measured xattrs of fd (fd >= 0) or of path, never following a symlink. */
static int read_xattrs(struct tree *t, struct entry *e, int fd, const char *path) {
    char small[256];
    char *names = small;
    ssize_t len = list_x(fd, path, small, sizeof small);
    while (len < 0 && errno == ERANGE) { /* the list is longer than the stack buffer */
        if (names != small) free(names);
        names = small;
        ssize_t want = list_x(fd, path, NULL, 0);
        if (want <= 0) { /* an error (reported below), or the list emptied meanwhile */
            len = want;
            break;
        }
        if (!(names = malloc((size_t)want))) return oom(t);
        len = list_x(fd, path, names, (size_t)want);
    }
    int rc = TH_OK;
    if (len < 0) {
        if (errno != ENOTSUP && errno != EPERM)
            rc = fail(t, TH_ERR_MEASURE, e, "cannot list xattrs: %s", strerror(errno));
        len = 0;
    }
    for (char *p = names; rc == TH_OK && p < names + len; p += strlen(p) + 1) {
        if (!xattr_measured(p)) continue;
        size_t vlen = 0;
        unsigned char *value = get_value(fd, path, p, &vlen);
        if (!value) {
            rc = errno == ENOMEM  ? oom(t)
                 : errno == ENODATA ? fail(t, TH_ERR_MEASURE, e, "lost xattr %s while measuring (vanished)", p)
                                    : fail(t, TH_ERR_MEASURE, e, "cannot read xattr %s: %s", p, strerror(errno));
            break;
        }
        struct xattr *x = realloc(e->xattrs, (e->nx + 1) * sizeof *x);
        char *name = x ? strdup(p) : NULL;
        if (x) e->xattrs = x;
        if (!name) {
            free(value);
            rc = oom(t);
            break;
        }
        x[e->nx++] = (struct xattr){name, strlen(name), value, vlen};
    }
    if (names != small) free(names);
    if (rc == TH_OK && e->nx > 1) qsort(e->xattrs, e->nx, sizeof *e->xattrs, xattr_cmp);
    return rc;
}

static int read_symlink(struct tree *t, struct entry *e, int dir_fd, const char *name, size_t hint) {
    for (size_t cap = hint + 2;; cap *= 2) {
        char *buf = malloc(cap);
        if (!buf) return oom(t);
        ssize_t n = readlinkat(dir_fd, name, buf, cap);
        if (n < 0) {
            int err = errno;
            free(buf);
            if (err == ENOENT) return fail(t, TH_ERR_MEASURE, e, "vanished while measuring");
            return fail(t, TH_ERR_MEASURE, e, "cannot read symlink: %s", strerror(err));
        }
        if ((size_t)n < cap) {
            e->target = buf;
            e->tlen = (size_t)n;
            return TH_OK;
        }
        free(buf);
    }
}

#ifndef SYS_listxattrat
#define SYS_listxattrat 465
#endif

/* False only when listxattrat(2) says dir_fd/name has no xattrs at all: the common case, four
 * times cheaper than listing through /proc. Anything else (some xattrs, an error, an older
 * kernel) sends the caller down the /proc path, which reports errors. */
static int has_xattrs_at(struct tree *t, int dir_fd, const char *name) {
    if (t->no_listxattrat) return 1;
    long size = syscall(SYS_listxattrat, dir_fd, name, AT_SYMLINK_NOFOLLOW, NULL, 0);
    if (size < 0 && errno == ENOSYS) t->no_listxattrat = 1;
    return size != 0;
}

/* An entry whose d_type is not DT_REG or DT_DIR: fstatat and fill; *is_dir when a directory. */
static int stat_entry(struct tree *t, struct entry *e, int dir_fd, const char *name, int *is_dir) {
    struct stat st;
    if (fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
        if (errno == ENOENT) return fail(t, TH_ERR_MEASURE, e, "vanished while measuring");
        return fail(t, TH_ERR_MEASURE, e, "cannot stat: %s", strerror(errno));
    }
    fill_stat(e, &st);
    switch (st.st_mode & S_IFMT) {
    case S_IFDIR: *is_dir = 1; return TH_OK;
    case S_IFREG: e->kind = 'f'; e->has_stat = 1; return TH_OK;
    case S_IFLNK: e->kind = 'l'; break;
    case S_IFCHR: e->kind = 'c'; break;
    case S_IFBLK: e->kind = 'b'; break;
    case S_IFIFO: e->kind = 'p'; break;
    case S_IFSOCK: e->kind = 's'; break;
    default: return fail(t, TH_ERR_MEASURE, e, "has an unknown file type %o", (unsigned)st.st_mode);
    }
    if (e->kind == 'c' || e->kind == 'b') {
        e->rmaj = major(st.st_rdev);
        e->rmin = minor(st.st_rdev);
    }
    int rc = TH_OK;
    if (has_xattrs_at(t, dir_fd, name)) {
        /* xattrs of an object that must not be opened: through the directory fd's /proc link */
        char *path;
        if (asprintf(&path, "/proc/self/fd/%d/%s", dir_fd, name) < 0) return oom(t);
        rc = read_xattrs(t, e, -1, path);
        free(path);
    }
    if (rc == TH_OK && e->kind == 'l') rc = read_symlink(t, e, dir_fd, name, (size_t)st.st_size);
    return rc;
}

static int open_dir(struct tree *t, struct entry *e, int parent_fd, const char *name, int *out_fd) {
    int fd = openat(parent_fd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT) return fail(t, TH_ERR_MEASURE, e, "vanished while measuring");
        if (errno == ELOOP || errno == ENOTDIR) return fail(t, TH_ERR_MEASURE, e, "was replaced while measuring");
        return fail(t, TH_ERR_MEASURE, e, "cannot open directory: %s", strerror(errno));
    }
    struct stat st;
    if (fstat(fd, &st) < 0 || (e->has_stat && (st.st_dev != e->dev || st.st_ino != e->ino))) {
        close(fd);
        return fail(t, TH_ERR_MEASURE, e, "was replaced while measuring");
    }
    e->kind = 'd';
    fill_stat(e, &st);
    int rc = read_xattrs(t, e, fd, NULL);
    if (rc != TH_OK) {
        close(fd);
        return rc;
    }
    *out_fd = fd;
    return TH_OK;
}

/* Hash fd to its end (expect >= 0: stop after that many bytes; the caller's fstat after the
 * read catches a file that grew or shrank). -1: read error (errno), -2: OpenSSL failed. */
static int hash_fd(int fd, EVP_MD_CTX *ctx, const EVP_MD *md, unsigned char *buf, unsigned char *out,
                   long long expect) {
    if (!EVP_DigestInit_ex2(ctx, md, NULL)) return -2;
    long long total = 0;
    while (expect < 0 || total < expect) {
        ssize_t n = read(fd, buf, CHUNK);
        if (n < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        if (n == 0) break;
        total += n;
        if (!EVP_DigestUpdate(ctx, buf, (size_t)n)) return -2;
    }
    unsigned int len = 0;
    return EVP_DigestFinal_ex(ctx, out, &len) && len == 32 ? 0 : -2;
}

/* The re-stat rule: size, mtime and ctime (everything in the cache key that can move on an
 * open file) are unchanged from before the read to after it. */
static int same_times(const struct stat *a, const struct stat *b) {
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
           a->st_mtim.tv_nsec == b->st_mtim.tv_nsec && a->st_ctim.tv_sec == b->st_ctim.tv_sec &&
           a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* Open, check, xattr and hash one regular file: by its whole path beneath the root (workers),
 * or by name in its open directory (dir_fd >= 0: the walker, for paths beyond PATH_MAX). */
static int hash_regular(struct tree *t, struct entry *e, int dir_fd, const char *name, EVP_MD_CTX *ctx,
                        unsigned char *buf) {
    int fd;
    if (dir_fd >= 0) {
        fd = openat(dir_fd, name, FILE_FLAGS);
    } else {
        struct open_how how = {.flags = FILE_FLAGS,
                               .resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS};
        fd = (int)syscall(SYS_openat2, t->root_fd, e->path, &how, sizeof how);
    }
    if (fd < 0) {
        if (errno == ENOENT) return fail(t, TH_ERR_MEASURE, e, "vanished while measuring");
        if (errno == ELOOP || errno == EXDEV || errno == ENOTDIR)
            return fail(t, TH_ERR_MEASURE, e, "was replaced while measuring");
        return fail(t, TH_ERR_MEASURE, e, "cannot open: %s", strerror(errno));
    }
    struct stat before, after;
    int rc = TH_OK;
    if (fstat(fd, &before) < 0 || !S_ISREG(before.st_mode) ||
        (e->has_stat && (before.st_dev != e->dev || before.st_ino != e->ino))) {
        rc = fail(t, TH_ERR_MEASURE, e, "was replaced while measuring");
    } else {
        fill_stat(e, &before);
        e->size = (uint64_t)before.st_size;
        rc = read_xattrs(t, e, fd, NULL);
    }
    if (rc != TH_OK) {
        close(fd);
        return rc;
    }
    /* only files on the root's own filesystem, and that one of cacheable_fs's */
    int cached = t->cache && t->cache_fs && before.st_dev == t->root_dev;
    struct cache_key key;
    if (cached) {
        make_key(&key, &before);
        if (cache_lookup(t->cache, &key, e->sha)) {
            __atomic_fetch_add(&t->bytes, (unsigned long long)before.st_size, __ATOMIC_RELAXED);
            close(fd);
            return TH_OK;
        }
    }
    int h = hash_fd(fd, ctx, t->md, buf, e->sha, (long long)before.st_size);
    if (h == -1)
        rc = fail(t, TH_ERR_MEASURE, e, "cannot read: %s", strerror(errno));
    else if (h == -2)
        rc = fail(t, TH_ERR_CRYPTO, NULL, "OpenSSL SHA-256 failed");
    else if (fstat(fd, &after) < 0 || !same_times(&before, &after))
        rc = fail(t, TH_ERR_MEASURE, e, "changed while it was being hashed"); /* never cached */
    else
        __atomic_fetch_add(&t->bytes, (unsigned long long)before.st_size, __ATOMIC_RELAXED);
    /* the key is the first fstat's, equal to the second's (same_times) */
    if (rc == TH_OK && cached && admit(t, &after)) cache_insert(t->cache, &key, e->sha);
    close(fd);
    return rc;
}

struct hasher {
    EVP_MD_CTX *ctx;
    unsigned char *buf;
};

static int hasher_init(struct hasher *h) {
    h->ctx = EVP_MD_CTX_new();
    h->buf = malloc(CHUNK);
    return h->ctx && h->buf;
}

static void hasher_free(struct hasher *h) {
    free(h->buf);
    EVP_MD_CTX_free(h->ctx);
}

/* Queue regular files for the workers (the walker flushes its batch here). */
static int enqueue(struct tree *t, struct entry **items, size_t n) {
    pthread_mutex_lock(&t->lock);
    if (t->queued + n > t->qcap) {
        size_t cap = t->qcap ? t->qcap : 4096;
        while (cap < t->queued + n) cap *= 2;
        struct entry **q = realloc(t->queue, cap * sizeof *q);
        if (!q) {
            pthread_mutex_unlock(&t->lock);
            return oom(t);
        }
        t->queue = q;
        t->qcap = cap;
    }
    memcpy(t->queue + t->queued, items, n * sizeof *items);
    t->queued += n;
    pthread_cond_broadcast(&t->more);
    pthread_mutex_unlock(&t->lock);
    return TH_OK;
}

static void *worker(void *arg) {
    struct tree *t = arg;
    struct hasher h;
    struct entry *mine[BATCH];
    if (!hasher_init(&h)) {
        oom(t);
        hasher_free(&h);
        return NULL;
    }
    for (;;) {
        pthread_mutex_lock(&t->lock);
        while (t->taken == t->queued && !t->walk_done && !t->failed) pthread_cond_wait(&t->more, &t->lock);
        size_t n = t->queued - t->taken;
        if (n > BATCH) n = BATCH;
        if (t->failed) n = 0;
        if (n) memcpy(mine, t->queue + t->taken, n * sizeof *mine);
        t->taken += n;
        pthread_mutex_unlock(&t->lock);
        if (n == 0) break; /* walk done and queue empty, or failed */
        for (size_t i = 0; i < n && !failed(t); i++) hash_regular(t, mine[i], -1, NULL, h.ctx, h.buf);
    }
    hasher_free(&h);
    return NULL;
}

struct linux_dirent64 {
    uint64_t d_ino;
    int64_t d_off;
    unsigned short d_reclen;
    unsigned char d_type;
    char d_name[];
};

struct dirref {
    int fd;
    struct entry *e;
};

/* One directory entry: make it, classify it, queue or recurse. */
static int visit(struct tree *t, struct dirref dir, const char *name, unsigned char d_type, struct hasher *inline_h,
                 struct entry **batch, size_t *nbatch, struct dirref **stack, size_t *depth, size_t *cap) {
    struct entry *e = add_entry(t, dir.e->path, dir.e->plen, name);
    if (!e) return oom(t);
    int is_dir = d_type == DT_DIR, rc = TH_OK;
    if (d_type == DT_REG)
        e->kind = 'f';
    else if (!is_dir)
        rc = stat_entry(t, e, dir.fd, name, &is_dir);
    if (rc != TH_OK) return rc;
    if (is_dir) {
        int child = -1;
        if ((rc = open_dir(t, e, dir.fd, name, &child)) != TH_OK) return rc;
        if (*depth == *cap) {
            struct dirref *s = realloc(*stack, sizeof *s * *cap * 2);
            if (!s) {
                close(child);
                return oom(t);
            }
            *stack = s;
            *cap *= 2;
        }
        (*stack)[(*depth)++] = (struct dirref){child, e};
        return TH_OK;
    }
    if (e->kind != 'f') return TH_OK;
    if (e->plen >= INLINE_PATH_LEN) {
        if (!inline_h->ctx && !hasher_init(inline_h)) return oom(t);
        return hash_regular(t, e, dir.fd, name, inline_h->ctx, inline_h->buf);
    }
    batch[(*nbatch)++] = e;
    if (*nbatch == BATCH) {
        *nbatch = 0;
        return enqueue(t, batch, BATCH);
    }
    return TH_OK;
}

static int walk(struct tree *t, struct entry *root) {
    size_t depth = 0, cap = 16, nbatch = 0;
    struct entry *batch[BATCH];
    struct hasher inline_h = {NULL, NULL};
    struct dirref *stack = malloc(sizeof *stack * cap);
    char *buf = malloc(CHUNK);
    int fd = dup(t->root_fd);
    int rc = !stack || !buf ? oom(t)
             : fd < 0       ? fail(t, TH_ERR_MEASURE, NULL, "cannot dup the root fd: %s", strerror(errno))
                            : TH_OK;
    if (rc == TH_OK) stack[depth++] = (struct dirref){fd, root};
    else if (fd >= 0) close(fd);
    while (depth && rc == TH_OK && !failed(t)) {
        struct dirref dir = stack[--depth];
        for (;;) {
            long got = syscall(SYS_getdents64, dir.fd, buf, CHUNK);
            if (got < 0) rc = fail(t, TH_ERR_MEASURE, dir.e, "cannot list: %s", strerror(errno));
            if (got <= 0) break;
            for (long off = 0; off < got && rc == TH_OK;) {
                struct linux_dirent64 *d = (struct linux_dirent64 *)(buf + off);
                off += d->d_reclen;
                const char *name = d->d_name;
                if (name[0] == '.' && (!name[1] || (name[1] == '.' && !name[2]))) continue;
                rc = visit(t, dir, name, d->d_type, &inline_h, batch, &nbatch, &stack, &depth, &cap);
            }
            if (rc != TH_OK) break;
        }
        close(dir.fd);
    }
    while (depth) close(stack[--depth].fd);
    if (rc == TH_OK && nbatch) rc = enqueue(t, batch, nbatch);
    hasher_free(&inline_h);
    free(stack);
    free(buf);
    return rc;
}

static int path_cmp(const void *a, const void *b) {
    const struct entry *x = *(struct entry *const *)a, *y = *(struct entry *const *)b;
    size_t n = x->plen < y->plen ? x->plen : y->plen;
    int c = memcmp(x->path, y->path, n);
    return c ? c : (x->plen > y->plen) - (x->plen < y->plen);
}

/* After sorting: every later path of a shared non-directory inode becomes a hard link. */
static int mark_hardlinks(struct tree *t) {
    size_t cap = 16;
    while (cap < t->n * 2) cap *= 2;
    struct entry **table = calloc(cap, sizeof *table);
    if (!table) return oom(t);
    for (size_t i = 0; i < t->n; i++) {
        struct entry *e = t->v[i];
        if (e->kind == 'd' || e->nlink <= 1) continue;
        uint64_t h = ((uint64_t)e->ino * 0x9E3779B97F4A7C15ULL) ^ (uint64_t)e->dev;
        for (size_t slot = (size_t)(h ^ (h >> 29)) & (cap - 1);; slot = (slot + 1) & (cap - 1)) {
            struct entry *p = table[slot];
            if (!p) {
                table[slot] = e;
                break;
            }
            if (p->dev == e->dev && p->ino == e->ino) {
                if (e->kind == 'l') free(e->target);
                e->kind = 'h';
                e->target = p->path;
                e->tlen = p->plen;
                e->size = 0;
                memset(e->sha, 0, sizeof e->sha);
                e->rmaj = e->rmin = 0;
                break;
            }
        }
    }
    free(table);
    return TH_OK;
}

struct out {
    unsigned char *buf;
    size_t len, cap;
};

static int put(struct out *o, const void *data, size_t n) {
    if (o->len + n > o->cap) {
        size_t cap = o->cap ? o->cap : 4096;
        while (cap < o->len + n) cap *= 2;
        unsigned char *b = realloc(o->buf, cap);
        if (!b) return -1;
        o->buf = b;
        o->cap = cap;
    }
    memcpy(o->buf + o->len, data, n);
    o->len += n;
    return 0;
}

static int put32(struct out *o, uint32_t v) {
    unsigned char b[4] = {(unsigned char)(v >> 24), (unsigned char)(v >> 16), (unsigned char)(v >> 8),
                          (unsigned char)v};
    return put(o, b, 4);
}

static int put64(struct out *o, uint64_t v) { return put32(o, (uint32_t)(v >> 32)) || put32(o, (uint32_t)v); }

/* The canonical record of one entry (docs/measurement.md), appended to o. */
static int encode(struct out *o, const struct entry *e) {
    int bad = put32(o, (uint32_t)e->plen) || put(o, e->path, e->plen) || put(o, &e->kind, 1) ||
              put32(o, e->mode) || put32(o, e->uid) || put32(o, e->gid) || put32(o, (uint32_t)e->nx);
    for (size_t i = 0; !bad && i < e->nx; i++)
        bad = put32(o, (uint32_t)e->xattrs[i].nlen) || put(o, e->xattrs[i].name, e->xattrs[i].nlen) ||
              put32(o, (uint32_t)e->xattrs[i].vlen) || put(o, e->xattrs[i].value, e->xattrs[i].vlen);
    if (bad) return -1;
    switch (e->kind) {
    case 'f': return put64(o, e->size) || put(o, e->sha, 32);
    case 'l':
    case 'h': return put32(o, (uint32_t)e->tlen) || put(o, e->target, e->tlen);
    case 'c':
    case 'b': return put32(o, e->rmaj) || put32(o, e->rmin);
    default: return 0;
    }
}

static void free_tree(struct tree *t) {
    for (size_t i = 0; i < t->n; i++) {
        struct entry *e = t->v[i];
        for (size_t x = 0; x < e->nx; x++) {
            free(e->xattrs[x].name);
            free(e->xattrs[x].value);
        }
        free(e->xattrs);
        if (e->kind == 'l') free(e->target);
    }
    for (size_t i = 0; i < t->n; i++) free(t->v[i]->path);
    while (t->slabs) {
        struct slab *next = t->slabs->next;
        free(t->slabs);
        t->slabs = next;
    }
    free(t->v);
    free(t->queue);
}

static int open_root(struct tree *t, const char *root_path) {
    t->root_fd = open(root_path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (t->root_fd >= 0) return TH_OK;
    struct stat st;
    if ((errno == ELOOP || errno == ENOTDIR) && lstat(root_path, &st) == 0 && S_ISLNK(st.st_mode))
        return fail(t, TH_ERR_MEASURE, NULL, "rootfs %s is a symlink; refusing to follow it out of the bundle",
                    root_path);
    return fail(t, TH_ERR_MEASURE, NULL, "cannot open rootfs %s: %s", root_path, strerror(errno));
}

/* The measurement's admission time and the root's filesystem, for the cache. */
static int cache_setup(struct tree *t) {
    struct stat st;
    struct timespec now;
    if (fstat(t->root_fd, &st) < 0) return fail(t, TH_ERR_MEASURE, NULL, "cannot stat the rootfs: %s", strerror(errno));
    if (clock_gettime(CLOCK_REALTIME, &now) < 0)
        return fail(t, TH_ERR_MEASURE, NULL, "cannot read the clock: %s", strerror(errno));
    t->root_dev = st.st_dev;
    t->cache_fs = cacheable_fs(t->root_fd);
    long long age = t->cache->min_age_ns;
    t->admit_before.tv_sec = now.tv_sec - (time_t)(age / 1000000000LL);
    t->admit_before.tv_nsec = now.tv_nsec - (long)(age % 1000000000LL);
    if (t->admit_before.tv_nsec < 0) {
        t->admit_before.tv_nsec += 1000000000L;
        t->admit_before.tv_sec -= 1;
    }
    return TH_OK;
}

/* Walk (queueing files) while nthreads - 1 workers hash; then the caller hashes too. */
static int walk_and_hash(struct tree *t, int nthreads) {
    struct entry *root = add_entry(t, "", 0, "");
    struct stat st;
    if (!root) return oom(t);
    if (fstat(t->root_fd, &st) < 0) return fail(t, TH_ERR_MEASURE, NULL, "cannot stat the rootfs: %s", strerror(errno));
    root->kind = 'd';
    fill_stat(root, &st);
    int rc = read_xattrs(t, root, t->root_fd, NULL);
    if (rc != TH_OK) return rc;
    pthread_t *threads = calloc((size_t)nthreads, sizeof *threads);
    if (!threads) return oom(t);
    int started = 0;
    for (; started < nthreads - 1; started++)
        if (pthread_create(&threads[started], NULL, worker, t) != 0) break;
    walk(t, root);
    pthread_mutex_lock(&t->lock);
    t->walk_done = 1;
    pthread_cond_broadcast(&t->more);
    pthread_mutex_unlock(&t->lock);
    worker(t);
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    free(threads);
    return failed(t) ? t->status : TH_OK;
}

int th_tree_digest(const char *root_path, int nthreads, th_cache *cache, unsigned char *digest_out,
                   unsigned long long *entries_out, unsigned long long *bytes_out, char *errbuf, size_t errlen) {
    struct tree t;
    memset(&t, 0, sizeof t);
    t.root_fd = -1;
    t.cache = cache;
    t.errbuf = errbuf;
    t.errlen = errlen;
    pthread_mutex_init(&t.lock, NULL);
    pthread_cond_init(&t.more, NULL);
    EVP_MD *md = EVP_MD_fetch(NULL, "SHA256", NULL);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    struct out o = {0};
    int rc = !md || !ctx ? fail(&t, TH_ERR_CRYPTO, NULL, "OpenSSL has no SHA-256") : open_root(&t, root_path);
    t.md = md;
    if (rc == TH_OK && cache) rc = cache_setup(&t);
    if (rc == TH_OK) rc = walk_and_hash(&t, nthreads < 1 ? 1 : nthreads);
    if (rc == TH_OK) {
        qsort(t.v, t.n, sizeof *t.v, path_cmp);
        rc = mark_hardlinks(&t);
    }
    if (rc == TH_OK && (!EVP_DigestInit_ex2(ctx, md, NULL) || !EVP_DigestUpdate(ctx, MAGIC, sizeof MAGIC - 1)))
        rc = fail(&t, TH_ERR_CRYPTO, NULL, "OpenSSL SHA-256 failed");
    for (size_t i = 0; rc == TH_OK && i < t.n; i++) {
        if (encode(&o, t.v[i]) != 0) rc = oom(&t);
        if (o.len >= CHUNK || (rc == TH_OK && i + 1 == t.n)) {
            if (rc == TH_OK && !EVP_DigestUpdate(ctx, o.buf, o.len))
                rc = fail(&t, TH_ERR_CRYPTO, NULL, "OpenSSL SHA-256 failed");
            o.len = 0;
        }
    }
    unsigned int len = 0;
    if (rc == TH_OK && (!EVP_DigestFinal_ex(ctx, digest_out, &len) || len != 32))
        rc = fail(&t, TH_ERR_CRYPTO, NULL, "OpenSSL SHA-256 failed");
    if (rc == TH_OK) {
        *entries_out = t.n;
        *bytes_out = t.bytes;
    }
    free(o.buf);
    EVP_MD_CTX_free(ctx);
    EVP_MD_free(md);
    if (t.root_fd >= 0) close(t.root_fd);
    free_tree(&t);
    pthread_cond_destroy(&t.more);
    pthread_mutex_destroy(&t.lock);
    return rc;
}

int th_blob_digest_fd(int fd, unsigned char *digest_out, char *errbuf, size_t errlen) {
    EVP_MD *md = EVP_MD_fetch(NULL, "SHA256", NULL);
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char *buf = malloc(CHUNK);
    int rc = TH_OK;
    if (!md || !ctx || !buf) {
        snprintf(errbuf, errlen, "cannot set up SHA-256");
        rc = TH_ERR_NOMEM;
    } else {
        int h = hash_fd(fd, ctx, md, buf, digest_out, -1);
        if (h == -1) {
            snprintf(errbuf, errlen, "cannot read fd %d: %s", fd, strerror(errno));
            rc = TH_ERR_IO;
        } else if (h == -2) {
            snprintf(errbuf, errlen, "OpenSSL SHA-256 failed");
            rc = TH_ERR_CRYPTO;
        }
    }
    free(buf);
    EVP_MD_CTX_free(ctx);
    EVP_MD_free(md);
    return rc;
}

struct blobs {
    const char **paths;
    int n;
    int next;
    unsigned char *out;
    const EVP_MD *md;
    int failed;
    int status;
    pthread_mutex_t lock;
    char *errbuf;
    size_t errlen;
};

static void *blob_worker(void *arg) {
    struct blobs *b = arg;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char *buf = malloc(CHUNK);
    int err = 0, status = TH_OK;
    const char *path = NULL;
    if (!ctx || !buf) {
        status = TH_ERR_NOMEM;
        err = ENOMEM;
    }
    while (status == TH_OK && !__atomic_load_n(&b->failed, __ATOMIC_SEQ_CST)) {
        int i = __atomic_fetch_add(&b->next, 1, __ATOMIC_RELAXED);
        if (i >= b->n) break;
        path = b->paths[i];
        int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (fd < 0) {
            status = TH_ERR_IO;
            err = errno;
            break;
        }
        int h = hash_fd(fd, ctx, b->md, buf, b->out + 32 * (size_t)i, -1);
        if (h == -1) err = errno;
        close(fd);
        if (h) status = h == -1 ? TH_ERR_IO : TH_ERR_CRYPTO;
    }
    if (status != TH_OK) {
        pthread_mutex_lock(&b->lock);
        if (!b->failed) {
            if (status == TH_ERR_IO)
                snprintf(b->errbuf, b->errlen, "cannot read blob %s: %s", path, strerror(err));
            else
                snprintf(b->errbuf, b->errlen, "SHA-256 set-up or computation failed");
            b->status = status;
            __atomic_store_n(&b->failed, 1, __ATOMIC_SEQ_CST);
        }
        pthread_mutex_unlock(&b->lock);
    }
    free(buf);
    EVP_MD_CTX_free(ctx);
    return NULL;
}

int th_blob_digests(const char **paths, int n, int nthreads, unsigned char *digests_out, char *errbuf,
                    size_t errlen) {
    struct blobs b;
    memset(&b, 0, sizeof b);
    b.paths = paths;
    b.n = n;
    b.out = digests_out;
    b.errbuf = errbuf;
    b.errlen = errlen;
    pthread_mutex_init(&b.lock, NULL);
    EVP_MD *md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (!md) {
        snprintf(errbuf, errlen, "OpenSSL has no SHA-256");
        pthread_mutex_destroy(&b.lock);
        return TH_ERR_CRYPTO;
    }
    b.md = md;
    if (nthreads < 1) nthreads = 1;
    if (nthreads > n) nthreads = n > 0 ? n : 1;
    pthread_t *threads = calloc((size_t)nthreads, sizeof *threads);
    int started = 0;
    if (threads)
        for (; started < nthreads - 1; started++)
            if (pthread_create(&threads[started], NULL, blob_worker, &b) != 0) break;
    blob_worker(&b);
    for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
    free(threads);
    EVP_MD_free(md);
    pthread_mutex_destroy(&b.lock);
    return b.failed ? b.status : TH_OK;
}
