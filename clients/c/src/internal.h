/*
 * internal.h - helpers shared by the library's own files; not part of the public API.
 */
#ifndef TELEMETRY_INTERNAL_H
#define TELEMETRY_INTERNAL_H

#include "telemetry_wire.h"

void tm__mp_uint(tm_writer *w, uint64_t v);
void tm__mp_int(tm_writer *w, int64_t v);
void tm__mp_float(tm_writer *w, double f);
void tm__mp_nil(tm_writer *w);
void tm__mp_bool(tm_writer *w, int b);
void tm__mp_array(tm_writer *w, uint32_t n);
void tm__mp_map(tm_writer *w, uint32_t n);
int tm__mp_str(tm_writer *w, const char *s);
int tm__utf8_valid(const uint8_t *s, size_t n);

#endif
