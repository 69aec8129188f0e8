// A small-object cache for one single-threaded user (one nghttp2 session): freed blocks are
// kept on a list per power-of-two size class and handed out again, so a session in steady state
// (WINDOW_UPDATE items, frame buffers grown for large DATA frames) calls malloc no more.
#include "clinuxshim.h"
#include <stdlib.h>
#include <string.h>

enum { CLASSES = 15, MIN_SHIFT = 5, KEEP = 256 };  // 32 bytes .. 512 KiB

typedef struct block {
    size_t class_;            // CLASSES: not cached (too large)
    size_t size;              // usable bytes
    struct block *next;
    size_t pad;               // keeps the payload 16-byte aligned
} block;

struct pf_block_cache {
    block *free[CLASSES];
    int count[CLASSES];
};

pf_block_cache *pf_block_cache_new(void) { return calloc(1, sizeof(pf_block_cache)); }

void pf_block_cache_delete(pf_block_cache *cache) {
    if (!cache) return;
    for (int c = 0; c < CLASSES; c++) {
        block *b = cache->free[c];
        while (b) { block *next = b->next; free(b); b = next; }
    }
    free(cache);
}

static size_t class_of(size_t size) {
    size_t c = 0, capacity = (size_t)1 << MIN_SHIFT;
    while (capacity < size && c < CLASSES) { capacity <<= 1; c++; }
    return c;
}

void *pf_cache_malloc(size_t size, void *user) {
    pf_block_cache *cache = user;
    size_t c = class_of(size);
    if (c < CLASSES && cache->free[c]) {
        block *b = cache->free[c];
        cache->free[c] = b->next;
        cache->count[c]--;
        return b + 1;
    }
    size_t usable = c < CLASSES ? ((size_t)1 << (c + MIN_SHIFT)) : size;
    block *b = malloc(sizeof(block) + usable);
    if (!b) return NULL;
    b->class_ = c;
    b->size = usable;
    return b + 1;
}

void pf_cache_free(void *ptr, void *user) {
    if (!ptr) return;
    pf_block_cache *cache = user;
    block *b = (block *)ptr - 1;
    if (b->class_ < CLASSES && cache->count[b->class_] < KEEP) {
        b->next = cache->free[b->class_];
        cache->free[b->class_] = b;
        cache->count[b->class_]++;
        return;
    }
    free(b);
}

void *pf_cache_calloc(size_t count, size_t size, void *user) {
    void *p = pf_cache_malloc(count * size, user);
    if (p) memset(p, 0, count * size);
    return p;
}

void *pf_cache_realloc(void *ptr, size_t size, void *user) {
    if (!ptr) return pf_cache_malloc(size, user);
    block *b = (block *)ptr - 1;
    if (size <= b->size) return ptr;
    void *grown = pf_cache_malloc(size, user);
    if (!grown) return NULL;
    memcpy(grown, ptr, b->size);
    pf_cache_free(ptr, user);
    return grown;
}
