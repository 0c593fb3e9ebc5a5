/* trusthook native hasher: the canonical rootfs digest (docs/measurement.md) and SHA-256 of
 * OCI blobs, in C with OpenSSL's libcrypto. The Python wrapper (trusthook.measure.native)
 * validates arguments and turns status codes into typed errors; this header is also the cffi
 * cdef, so it holds only plain declarations. */

#define TH_NATIVE_VERSION 2

#define TH_OK 0
#define TH_ERR_MEASURE 1 /* the tree cannot be measured faithfully; errbuf names the path */
#define TH_ERR_IO 2      /* a blob cannot be read; errbuf names it */
#define TH_ERR_NOMEM 3
#define TH_ERR_CRYPTO 4

#define TH_ERR_ARG 5 /* an argument is out of range; errbuf says which */

int th_version(void);

/* A bounded digest cache (docs/measurement.md, 1.11): the content SHA-256 of regular files,
 * keyed by (st_dev, st_ino, st_size, st_mtime, st_ctime). It holds at most max_entries entries
 * (1 .. 2^30) in memory fixed at creation, and admits a file only if its ctime is at least
 * min_age_ns (>= 0) older than the start of the measurement. Thread-safe: one cache may serve
 * several th_tree_digest calls at once. th_cache_free(NULL) does nothing. */
typedef struct th_cache th_cache;
int th_cache_new(unsigned long long max_entries, long long min_age_ns, th_cache **cache_out,
                 char *errbuf, size_t errlen);
void th_cache_free(th_cache *cache);
/* Lookups answered (hits) and not (misses) since creation, entries held now, and the bound
 * actually used (max_entries rounded down to a multiple of the set size). */
void th_cache_stats(th_cache *cache, unsigned long long *hits, unsigned long long *misses,
                    unsigned long long *entries, unsigned long long *capacity);

/* Measure the tree rooted at root_path (its last component must not be a symlink) with
 * nthreads hashing threads, taking content digests from cache (NULL: none) where it holds
 * them. Writes the 32-byte digest, the number of entries and the number of content bytes the
 * digest covers (the same with or without a cache). On error writes a one-line message to
 * errbuf. */
int th_tree_digest(const char *root_path, int nthreads, th_cache *cache, unsigned char *digest_out,
                   unsigned long long *entries_out, unsigned long long *bytes_out,
                   char *errbuf, size_t errlen);

/* SHA-256 of everything readable from fd (from its current offset). */
int th_blob_digest_fd(int fd, unsigned char *digest_out, char *errbuf, size_t errlen);

/* SHA-256 of n files, nthreads at a time; digest i goes to digests_out + 32 * i. */
int th_blob_digests(const char **paths, int n, int nthreads, unsigned char *digests_out,
                    char *errbuf, size_t errlen);
