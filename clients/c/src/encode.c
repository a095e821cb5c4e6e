/*
 * encode.c - the msgpack writer subset the agent side of the protocol needs, and the
 * frames an agent sends. Shortest forms everywhere (what the reference encoder writes),
 * floats always float64. No I/O, no allocation.
 */
#include "telemetry_wire.h"
#include "internal.h"

#include <string.h>

void tm_writer_init(tm_writer *w, uint8_t *buf, size_t cap)
{
    w->buf = buf;
    w->cap = cap;
    w->start = 0;
    w->len = 0;
    w->limit = cap;
    w->overflow = 0;
}

static void put(tm_writer *w, const uint8_t *p, size_t n)
{
    size_t pos, first;
    if (w->overflow || n > w->limit - w->len) {
        w->overflow = 1;
        return;
    }
    pos = w->start + w->len;
    if (pos >= w->cap)
        pos -= w->cap;
    first = w->cap - pos;
    if (first >= n) {
        memcpy(w->buf + pos, p, n);
    } else {
        memcpy(w->buf + pos, p, first);
        memcpy(w->buf, p + first, n - first);
    }
    w->len += n;
}

static void put1(tm_writer *w, uint8_t b) { put(w, &b, 1); }

static void put_be(tm_writer *w, uint8_t lead, uint64_t v, unsigned bytes)
{
    uint8_t tmp[9];
    unsigned i;
    tmp[0] = lead;
    for (i = 0; i < bytes; i++)
        tmp[1 + i] = (uint8_t)(v >> (8 * (bytes - 1 - i)));
    put(w, tmp, 1 + bytes);
}

void tm__mp_uint(tm_writer *w, uint64_t v)
{
    if (v < 0x80)
        put1(w, (uint8_t)v);
    else if (v <= 0xff)
        put_be(w, 0xcc, v, 1);
    else if (v <= 0xffff)
        put_be(w, 0xcd, v, 2);
    else if (v <= 0xffffffffu)
        put_be(w, 0xce, v, 4);
    else
        put_be(w, 0xcf, v, 8);
}

void tm__mp_int(tm_writer *w, int64_t v)
{
    if (v >= 0)
        tm__mp_uint(w, (uint64_t)v);
    else if (v >= -32)
        put1(w, (uint8_t)(0xe0 | (uint8_t)(v + 32)));
    else if (v >= -128)
        put_be(w, 0xd0, (uint64_t)v, 1);
    else if (v >= -32768)
        put_be(w, 0xd1, (uint64_t)v, 2);
    else if (v >= -2147483647 - 1)
        put_be(w, 0xd2, (uint64_t)v, 4);
    else
        put_be(w, 0xd3, (uint64_t)v, 8);
}

void tm__mp_float(tm_writer *w, double f)
{
    uint64_t bits;
    memcpy(&bits, &f, sizeof bits);
    put_be(w, 0xcb, bits, 8);
}

void tm__mp_nil(tm_writer *w) { put1(w, 0xc0); }
void tm__mp_bool(tm_writer *w, int b) { put1(w, b ? 0xc3 : 0xc2); }

void tm__mp_array(tm_writer *w, uint32_t n)
{
    if (n < 16)
        put1(w, (uint8_t)(0x90 | n));
    else if (n <= 0xffff)
        put_be(w, 0xdc, n, 2);
    else
        put_be(w, 0xdd, n, 4);
}

void tm__mp_map(tm_writer *w, uint32_t n)
{
    if (n < 16)
        put1(w, (uint8_t)(0x80 | n));
    else if (n <= 0xffff)
        put_be(w, 0xde, n, 2);
    else
        put_be(w, 0xdf, n, 4);
}

int tm__utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t more;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            more = 1;
            cp = c & 0x1fu;
            min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            more = 2;
            cp = c & 0x0fu;
            min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            more = 3;
            cp = c & 0x07u;
            min = 0x10000;
        } else {
            return 0;
        }
        if (n - i <= more)
            return 0;
        {
            size_t k;
            for (k = 1; k <= more; k++) {
                if ((s[i + k] & 0xc0) != 0x80)
                    return 0;
                cp = (cp << 6) | (s[i + k] & 0x3fu);
            }
        }
        /* overlong forms, UTF-16 surrogates and code points past U+10FFFF are invalid */
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return 0;
        i += more + 1;
    }
    return 1;
}

int tm__mp_str(tm_writer *w, const char *s)
{
    size_t n;
    if (s == NULL)
        return TM_ERR_INVALID;
    n = strlen(s);
    if (n > TM_MAX_STR_BYTES || !tm__utf8_valid((const uint8_t *)s, n))
        return TM_ERR_INVALID;
    if (n < 32)
        put1(w, (uint8_t)(0xa0 | n));
    else if (n <= 0xff)
        put_be(w, 0xd9, n, 1);
    else
        put_be(w, 0xda, n, 2); /* n <= 4096 */
    put(w, (const uint8_t *)s, n);
    return TM_OK;
}

static int scalar(tm_writer *w, const tm_value *v)
{
    switch (v->type) {
    case TM_NIL:
        tm__mp_nil(w);
        return TM_OK;
    case TM_FLOAT:
        tm__mp_float(w, v->as.f);
        return TM_OK;
    case TM_INT:
        tm__mp_int(w, v->as.i);
        return TM_OK;
    case TM_UINT:
        tm__mp_uint(w, v->as.u);
        return TM_OK;
    case TM_BOOL:
        tm__mp_bool(w, v->as.b);
        return TM_OK;
    case TM_STR:
        return tm__mp_str(w, v->as.s);
    case TM_MAP:
        break;
    }
    return TM_ERR_INVALID;
}

static int value(tm_writer *w, const tm_value *v)
{
    size_t i;
    int rc;
    if (v->type != TM_MAP)
        return scalar(w, v);
    if (v->as.map.count > TM_MAX_MAP_ENTRIES || (v->as.map.count && !v->as.map.fields))
        return TM_ERR_INVALID;
    tm__mp_map(w, (uint32_t)v->as.map.count);
    for (i = 0; i < v->as.map.count; i++) {
        if ((rc = tm__mp_str(w, v->as.map.fields[i].key)) != TM_OK)
            return rc;
        if ((rc = scalar(w, &v->as.map.fields[i].value)) != TM_OK)
            return rc;
    }
    return TM_OK;
}

int tm_encode_reading(tm_writer *w, const tm_reading *r)
{
    int rc;
    size_t i;
    tm__mp_array(w, 6);
    if ((rc = tm__mp_str(w, r->sensor)) != TM_OK)
        return rc;
    if ((rc = tm__mp_str(w, r->kind)) != TM_OK)
        return rc;
    tm__mp_int(w, r->ts_ns);
    if ((rc = value(w, &r->value)) != TM_OK)
        return rc;
    if (r->unit == NULL)
        tm__mp_nil(w);
    else if ((rc = tm__mp_str(w, r->unit)) != TM_OK)
        return rc;
    if (r->tags == NULL) {
        tm__mp_nil(w);
    } else {
        if (r->tag_count > TM_MAX_MAP_ENTRIES)
            return TM_ERR_INVALID;
        tm__mp_map(w, (uint32_t)r->tag_count);
        for (i = 0; i < r->tag_count; i++) {
            if ((rc = tm__mp_str(w, r->tags[i].key)) != TM_OK)
                return rc;
            if ((rc = tm__mp_str(w, r->tags[i].value)) != TM_OK)
                return rc;
        }
    }
    return w->overflow ? TM_ERR_NOSPACE : TM_OK;
}

/* Frames: 4 placeholder bytes, the body, then the length written over the placeholder. */
static size_t frame_begin(tm_writer *w)
{
    static const uint8_t zero[TM_FRAME_HEADER_BYTES] = {0, 0, 0, 0};
    size_t at = w->len;
    put(w, zero, sizeof zero);
    return at;
}

static int frame_end(tm_writer *w, size_t at, int rc)
{
    size_t body, i, pos;
    if (rc != TM_OK)
        return rc;
    if (w->overflow)
        return TM_ERR_NOSPACE;
    body = w->len - at - TM_FRAME_HEADER_BYTES;
    for (i = 0; i < TM_FRAME_HEADER_BYTES; i++) {
        pos = w->start + at + i;
        while (pos >= w->cap)
            pos -= w->cap;
        w->buf[pos] = (uint8_t)(body >> (8 * (TM_FRAME_HEADER_BYTES - 1 - i)));
    }
    return TM_OK;
}

int tm_encode_hello(tm_writer *w, const tm_hello *h)
{
    size_t at = frame_begin(w);
    int rc;
    /* v1.1: an empty stream is the default stream and is left out, as v1.0 sent it */
    int with_stream = h->stream != NULL && h->stream[0] != '\0';
    tm__mp_array(w, with_stream ? 8u : 7u);
    tm__mp_uint(w, TM_MSG_HELLO);
    tm__mp_uint(w, TM_PROTOCOL_VERSION);
    if ((rc = tm__mp_str(w, h->device_id)) != TM_OK)
        return rc;
    if ((rc = tm__mp_str(w, h->token)) != TM_OK)
        return rc;
    if ((rc = tm__mp_str(w, h->agent ? h->agent : "")) != TM_OK)
        return rc;
    if ((rc = tm__mp_str(w, h->agent_version ? h->agent_version : "")) != TM_OK)
        return rc;
    tm__mp_uint(w, h->dropped);
    if (with_stream)
        rc = tm__mp_str(w, h->stream);
    return frame_end(w, at, rc);
}

int tm_encode_batch(tm_writer *w, uint64_t seq, const tm_reading *readings, size_t count)
{
    size_t at = frame_begin(w), i;
    int rc = TM_OK;
    if (count > 0xffffffffu)
        return TM_ERR_INVALID;
    tm__mp_array(w, 3);
    tm__mp_uint(w, TM_MSG_BATCH);
    tm__mp_uint(w, seq);
    tm__mp_array(w, (uint32_t)count);
    for (i = 0; i < count && rc == TM_OK; i++)
        rc = tm_encode_reading(w, &readings[i]);
    return frame_end(w, at, rc);
}

static int nonce_frame(tm_writer *w, int type, uint64_t nonce)
{
    size_t at = frame_begin(w);
    tm__mp_array(w, 2);
    tm__mp_uint(w, (uint64_t)type);
    tm__mp_uint(w, nonce);
    return frame_end(w, at, TM_OK);
}

int tm_encode_ping(tm_writer *w, uint64_t nonce) { return nonce_frame(w, TM_MSG_PING, nonce); }
int tm_encode_pong(tm_writer *w, uint64_t nonce) { return nonce_frame(w, TM_MSG_PONG, nonce); }

int tm_encode_bye(tm_writer *w, const char *reason)
{
    size_t at = frame_begin(w);
    tm__mp_array(w, 2);
    tm__mp_uint(w, TM_MSG_BYE);
    return frame_end(w, at, tm__mp_str(w, reason ? reason : ""));
}

int tm_encode_error(tm_writer *w, const char *code, const char *message, int fatal)
{
    size_t at = frame_begin(w);
    int rc;
    tm__mp_array(w, 4);
    tm__mp_uint(w, TM_MSG_ERROR);
    if ((rc = tm__mp_str(w, code)) != TM_OK)
        return rc;
    rc = tm__mp_str(w, message ? message : "");
    tm__mp_bool(w, fatal);
    return frame_end(w, at, rc);
}

size_t tm_batch_header(uint8_t out[TM_BATCH_HEADER_MAX], uint64_t seq, uint32_t count,
                       size_t readings_bytes)
{
    tm_writer w;
    size_t body;
    tm_writer_init(&w, out, TM_BATCH_HEADER_MAX);
    w.len = TM_FRAME_HEADER_BYTES;
    tm__mp_array(&w, 3);
    tm__mp_uint(&w, TM_MSG_BATCH);
    tm__mp_uint(&w, seq);
    tm__mp_array(&w, count);
    body = w.len - TM_FRAME_HEADER_BYTES + readings_bytes;
    out[0] = (uint8_t)(body >> 24);
    out[1] = (uint8_t)(body >> 16);
    out[2] = (uint8_t)(body >> 8);
    out[3] = (uint8_t)body;
    return w.len;
}
