#ifndef PORTFORWARD_CZLIB_SHIM_H
#define PORTFORWARD_CZLIB_SHIM_H
#include <zlib.h>

/* deflateInit2 and inflateInit are macros (they pass the library's version and z_stream size
   for an ABI check), which Swift cannot import. */
static inline int pf_deflate_init(z_streamp stream, int level) {
    return deflateInit2(stream, level, Z_DEFLATED, 15, 8, Z_DEFAULT_STRATEGY);
}
static inline int pf_inflate_init(z_streamp stream) {
    return inflateInit(stream);
}
#endif
