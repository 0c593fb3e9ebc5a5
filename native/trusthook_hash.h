/* trusthook native hasher: the canonical rootfs digest (docs/measurement.md) and SHA-256 of
 * OCI blobs, in C with OpenSSL's libcrypto. The Python wrapper (trusthook.measure.native)
 * validates arguments and turns status codes into typed errors; this header is also the cffi
 * cdef, so it holds only plain declarations. */

#define TH_NATIVE_VERSION 1

#define TH_OK 0
#define TH_ERR_MEASURE 1 /* the tree cannot be measured faithfully; errbuf names the path */
#define TH_ERR_IO 2      /* a blob cannot be read; errbuf names it */
#define TH_ERR_NOMEM 3
#define TH_ERR_CRYPTO 4

int th_version(void);

/* Measure the tree rooted at root_path (its last component must not be a symlink) with
 * nthreads hashing threads. Writes the 32-byte digest, the number of entries and the number
 * of content bytes hashed. On error writes a one-line message to errbuf. */
int th_tree_digest(const char *root_path, int nthreads, unsigned char *digest_out,
                   unsigned long long *entries_out, unsigned long long *bytes_out,
                   char *errbuf, size_t errlen);

/* SHA-256 of everything readable from fd (from its current offset). */
int th_blob_digest_fd(int fd, unsigned char *digest_out, char *errbuf, size_t errlen);

/* SHA-256 of n files, nthreads at a time; digest i goes to digests_out + 32 * i. */
int th_blob_digests(const char **paths, int n, int nthreads, unsigned char *digests_out,
                    char *errbuf, size_t errlen);
