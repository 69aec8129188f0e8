/* An LD_PRELOAD malloc counter for scripts/malloc-count.sh: counts calls to malloc, calloc,
 * realloc, posix_memalign, aligned_alloc and memalign, and writes the total to stderr on SIGUSR2
 * ("mallocs N"), with write(2) only, so that the report allocates nothing itself. The real
 * functions are found with dlsym(RTLD_NEXT); the few calls made while dlsym runs are served
 * from a static area. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <signal.h>
#include <stdatomic.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>

static atomic_ulong calls;
static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);
static void (*real_free)(void *);
static char early[65536];
static size_t early_used;
static int resolving;

static void *early_alloc(size_t size) {
    size = (size + 15) & ~(size_t)15;
    if (early_used + size > sizeof early) return NULL;
    void *p = early + early_used;
    early_used += size;
    return p;
}

static int is_early(void *p) { return (char *)p >= early && (char *)p < early + sizeof early; }

static void report(int signal) {
    (void)signal;
    char text[64] = "mallocs ";
    unsigned long n = atomic_load(&calls);
    char digits[24];
    int count = 0;
    do { digits[count++] = (char)('0' + n % 10); n /= 10; } while (n);
    size_t at = strlen(text);
    while (count) text[at++] = digits[--count];
    text[at++] = '\n';
    ssize_t ignored = write(2, text, at);
    (void)ignored;
}

static void resolve(void) {
    if (real_malloc || resolving) return;
    resolving = 1;
    real_malloc = dlsym(RTLD_NEXT, "malloc");
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = dlsym(RTLD_NEXT, "memalign");
    real_free = dlsym(RTLD_NEXT, "free");
    resolving = 0;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = report;
    action.sa_flags = SA_RESTART;
    sigaction(SIGUSR2, &action, NULL);
}

void *malloc(size_t size) {
    resolve();
    if (!real_malloc) return early_alloc(size);
    atomic_fetch_add(&calls, 1);
    return real_malloc(size);
}

void *calloc(size_t count, size_t size) {
    resolve();
    if (!real_calloc) return early_alloc(count * size); /* static: already zero */
    atomic_fetch_add(&calls, 1);
    return real_calloc(count, size);
}

void *realloc(void *p, size_t size) {
    resolve();
    if (is_early(p)) {
        void *q = malloc(size);
        if (q) memcpy(q, p, size);
        return q;
    }
    atomic_fetch_add(&calls, 1);
    return real_realloc(p, size);
}

int posix_memalign(void **out, size_t alignment, size_t size) {
    resolve();
    atomic_fetch_add(&calls, 1);
    return real_posix_memalign(out, alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size) {
    resolve();
    atomic_fetch_add(&calls, 1);
    return real_aligned_alloc(alignment, size);
}

void *memalign(size_t alignment, size_t size) {
    resolve();
    atomic_fetch_add(&calls, 1);
    return real_memalign(alignment, size);
}

void free(void *p) {
    if (!p || is_early(p)) return;
    resolve();
    real_free(p);
}
