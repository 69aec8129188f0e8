#ifndef PORTFORWARD_CNGHTTP2_SHIM_H
#define PORTFORWARD_CNGHTTP2_SHIM_H
#include <nghttp2/nghttp2.h>

/* Macros Swift cannot import. */
static const int pf_nghttp2_data_flag_eof = NGHTTP2_DATA_FLAG_EOF;
static const int pf_nghttp2_data_flag_no_copy = NGHTTP2_DATA_FLAG_NO_COPY;
static const int pf_nghttp2_data_flag_no_end_stream = NGHTTP2_DATA_FLAG_NO_END_STREAM;
#endif
