/*
 * decode.c - the receive side: a bounded msgpack reader, the message parser, the
 * incremental frame reader and the per-connection state machine (docs/protocol.md §1, §2,
 * §9). A body is first checked as one msgpack value within the §8 limits (else
 * malformed_frame), then its fields are type-checked (else bad_message), like the
 * reference decoder. No I/O, no allocation, no recursion.
 */
#include "telemetry_wire.h"
#include "internal.h"

#include <string.h>

enum { K_NIL, K_BOOL, K_UINT, K_NINT, K_FLOAT, K_STR, K_BIN, K_ARRAY, K_MAP, K_EXT };

typedef struct item {
    int kind;
    uint64_t u;         /* K_UINT value, K_BOOL value, K_ARRAY/K_MAP/K_STR/K_BIN/K_EXT length */
    const uint8_t *data; /* K_STR/K_BIN/K_EXT payload */
    int ext_type;
} item;

static uint64_t be(const uint8_t *p, unsigned n)
{
    uint64_t v = 0;
    unsigned i;
    for (i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Reads one msgpack header (and the payload of str/bin/ext). 0 ok, -1 truncated/invalid. */
static int next_item(const uint8_t **pp, const uint8_t *end, item *it)
{
    const uint8_t *p = *pp;
    uint8_t c;
    unsigned lenbytes = 0, fixlen = 0;
    if (p >= end)
        return -1;
    c = *p++;
    it->data = NULL;
    it->ext_type = 0;
    if (c <= 0x7f) {
        it->kind = K_UINT;
        it->u = c;
    } else if (c <= 0x8f) {
        it->kind = K_MAP;
        it->u = c & 0x0fu;
    } else if (c <= 0x9f) {
        it->kind = K_ARRAY;
        it->u = c & 0x0fu;
    } else if (c <= 0xbf) {
        it->kind = K_STR;
        it->u = c & 0x1fu;
    } else if (c >= 0xe0) {
        it->kind = K_NINT;
        it->u = 0;
    } else {
        switch (c) {
        case 0xc0:
            it->kind = K_NIL;
            break;
        case 0xc2:
        case 0xc3:
            it->kind = K_BOOL;
            it->u = c == 0xc3;
            break;
        case 0xc4: case 0xc5: case 0xc6:
            it->kind = K_BIN;
            lenbytes = 1u << (c - 0xc4);
            break;
        case 0xc7: case 0xc8: case 0xc9:
            it->kind = K_EXT;
            lenbytes = 1u << (c - 0xc7);
            break;
        case 0xca: case 0xcb:
            it->kind = K_FLOAT;
            fixlen = c == 0xca ? 4 : 8;
            break;
        case 0xcc: case 0xcd: case 0xce: case 0xcf:
            it->kind = K_UINT;
            fixlen = 1u << (c - 0xcc);
            if ((size_t)(end - p) < fixlen)
                return -1;
            it->u = be(p, fixlen);
            break;
        case 0xd0: case 0xd1: case 0xd2: case 0xd3: {
            unsigned n = 1u << (c - 0xd0);
            uint64_t raw;
            if ((size_t)(end - p) < n)
                return -1;
            raw = be(p, n);
            fixlen = n;
            if (raw >> (8 * n - 1) & 1u) {
                it->kind = K_NINT;
                it->u = 0;
            } else {
                it->kind = K_UINT;
                it->u = raw;
            }
            break;
        }
        case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8:
            it->kind = K_EXT;
            it->u = 1u << (c - 0xd4);
            if (p >= end)
                return -1;
            it->ext_type = (int)(int8_t)*p++;
            break;
        case 0xd9: case 0xda: case 0xdb:
            it->kind = K_STR;
            lenbytes = 1u << (c - 0xd9);
            break;
        case 0xdc: case 0xdd:
            it->kind = K_ARRAY;
            lenbytes = c == 0xdc ? 2 : 4;
            break;
        case 0xde: case 0xdf:
            it->kind = K_MAP;
            lenbytes = c == 0xde ? 2 : 4;
            break;
        default: /* 0xc1 is never used */
            return -1;
        }
    }
    if (lenbytes) {
        if ((size_t)(end - p) < lenbytes)
            return -1;
        it->u = be(p, lenbytes);
        p += lenbytes;
        if (it->kind == K_EXT) {
            if (p >= end)
                return -1;
            it->ext_type = (int)(int8_t)*p++;
        }
    }
    if (fixlen) {
        if ((size_t)(end - p) < fixlen)
            return -1;
        p += fixlen;
    }
    if (it->kind == K_STR || it->kind == K_BIN || it->kind == K_EXT) {
        /* limits before the payload is looked at (a declared size never costs memory) */
        if ((it->kind == K_STR && it->u > TM_MAX_STR_BYTES) || (it->kind == K_BIN && it->u > 0) ||
            (it->kind == K_EXT && it->u > TM_MAX_EXT_BYTES))
            return -1;
        if ((uint64_t)(end - p) < it->u)
            return -1;
        it->data = p;
        p += (size_t)it->u;
        if (it->kind == K_STR && !tm__utf8_valid(it->data, (size_t)it->u))
            return -1;
        /* the Timestamp ext (-1) exists in 32, 64 and 96-bit forms only */
        if (it->kind == K_EXT && it->ext_type == -1 && it->u != 4 && it->u != 8 && it->u != 12)
            return -1;
    }
    *pp = p;
    return 0;
}

/* One whole value within the limits; arrays up to `max_array` elements at the first level
 * and TM_MAX_INNER_ARRAY_LEN below it. 0 ok, -1 malformed. */
static int check_value(const uint8_t **pp, const uint8_t *end, uint64_t max_array)
{
    uint32_t left[TM_MAX_DEPTH + 1];
    uint8_t is_map[TM_MAX_DEPTH + 1];
    unsigned depth = 0;
    item it;
    left[0] = 1;
    is_map[0] = 0;
    for (;;) {
        if (next_item(pp, end, &it) != 0)
            return -1;
        /* map keys sit at even positions (left counts keys and values down) */
        if (is_map[depth] && left[depth] % 2 == 0 && it.kind != K_STR && it.kind != K_BIN)
            return -1;
        left[depth]--;
        if (it.kind == K_ARRAY || it.kind == K_MAP) {
            if (it.kind == K_ARRAY && it.u > (depth == 0 ? max_array : TM_MAX_INNER_ARRAY_LEN))
                return -1;
            if (it.kind == K_MAP && it.u > TM_MAX_MAP_ENTRIES)
                return -1;
            if (it.u > 0) {
                if (depth + 1 >= TM_MAX_DEPTH)
                    return -1;
                depth++;
                left[depth] = (uint32_t)(it.kind == K_MAP ? 2 * it.u : it.u);
                is_map[depth] = it.kind == K_MAP;
            }
        }
        while (left[depth] == 0) {
            if (depth == 0)
                return 0;
            depth--;
        }
    }
}

/* Skips one value already checked by check_value. */
static void skip_value(const uint8_t **pp, const uint8_t *end)
{
    uint64_t left = 1;
    item it;
    while (left > 0) {
        if (next_item(pp, end, &it) != 0)
            return; /* cannot happen on a checked body */
        left--;
        if (it.kind == K_ARRAY)
            left += it.u;
        else if (it.kind == K_MAP)
            left += 2 * it.u;
    }
}

/* ------------------------------------------------------------------ message fields */

typedef struct fields {
    const uint8_t *start[TM_MAX_MESSAGE_FIELDS + 1];
    unsigned n;
    tm_wire_error *err;
} fields;

static int bad(fields *f, const char *detail)
{
    if (f->err) {
        f->err->code = "bad_message";
        f->err->detail = detail;
        f->err->fatal = 0;
    }
    return TM_ERR_BAD_MESSAGE;
}

/* `required`: 1 when the field must be present; else *out keeps its default. */
static int f_uint(fields *f, unsigned i, int required, uint64_t *out, const char *what)
{
    const uint8_t *p;
    item it;
    if (i >= f->n)
        return required ? bad(f, what) : TM_OK;
    p = f->start[i];
    next_item(&p, f->start[i + 1], &it);
    if (it.kind != K_UINT || it.u > TM_MAX_INT64)
        return bad(f, what);
    *out = it.u;
    return TM_OK;
}

static int f_str(fields *f, unsigned i, int required, tm_str *out, const char *what)
{
    const uint8_t *p;
    item it;
    if (i >= f->n)
        return required ? bad(f, what) : TM_OK;
    p = f->start[i];
    next_item(&p, f->start[i + 1], &it);
    if (it.kind != K_STR)
        return bad(f, what);
    out->ptr = (const char *)it.data;
    out->len = (size_t)it.u;
    return TM_OK;
}

static int f_bool(fields *f, unsigned i, int *out, const char *what)
{
    const uint8_t *p;
    item it;
    if (i >= f->n)
        return TM_OK;
    p = f->start[i];
    next_item(&p, f->start[i + 1], &it);
    if (it.kind != K_BOOL)
        return bad(f, what);
    *out = (int)it.u;
    return TM_OK;
}

static int f_array(fields *f, unsigned i, uint32_t *count, const uint8_t **items,
                   size_t *len, const char *what)
{
    const uint8_t *p;
    item it;
    if (i >= f->n)
        return bad(f, what);
    p = f->start[i];
    next_item(&p, f->start[i + 1], &it);
    if (it.kind != K_ARRAY)
        return bad(f, what);
    *count = (uint32_t)it.u;
    *items = p;
    *len = (size_t)(f->start[i + 1] - p);
    return TM_OK;
}

static const tm_str empty_str = {"", 0};

/* Type-checks one reject ([index, code, path, message], extra fields ignored). */
static int parse_reject(const uint8_t **pp, const uint8_t *end, tm_reject *out)
{
    const uint8_t *p = *pp, *elem;
    item it;
    uint64_t n, k;
    if (next_item(&p, end, &it) != 0 || it.kind != K_ARRAY || it.u < 4)
        return -1;
    n = it.u;
    for (k = 0; k < n; k++) {
        elem = p;
        skip_value(&p, end);
        if (k >= 4)
            continue;
        next_item(&elem, p, &it);
        if (k == 0) {
            if (it.kind != K_UINT || it.u > TM_MAX_INT64)
                return -1;
            out->index = it.u;
        } else {
            tm_str s;
            if (it.kind != K_STR)
                return -1;
            s.ptr = (const char *)it.data;
            s.len = (size_t)it.u;
            if (k == 1)
                out->code = s;
            else if (k == 2)
                out->path = s;
            else
                out->message = s;
        }
    }
    *pp = p;
    return 0;
}

static int parse(fields *f, int code, tm_msg *m)
{
    int rc = TM_OK;
    memset(m, 0, sizeof *m);
    m->type = code;
    switch (code) {
    case TM_MSG_HELLO:
        m->u.hello.agent = m->u.hello.agent_version = m->u.hello.stream = empty_str;
        if ((rc = f_uint(f, 1, 1, &m->u.hello.version, "HELLO.version")) ||
            (rc = f_str(f, 2, 1, &m->u.hello.device_id, "HELLO.device_id")) ||
            (rc = f_str(f, 3, 1, &m->u.hello.token, "HELLO.token")) ||
            (rc = f_str(f, 4, 0, &m->u.hello.agent, "HELLO.agent")) ||
            (rc = f_str(f, 5, 0, &m->u.hello.agent_version, "HELLO.agent_version")) ||
            (rc = f_uint(f, 6, 0, &m->u.hello.dropped, "HELLO.dropped")) ||
            (rc = f_str(f, 7, 0, &m->u.hello.stream, "HELLO.stream")))
            return rc;
        return TM_OK;
    case TM_MSG_WELCOME:
        m->u.welcome.max_frame_bytes = TM_MAX_FRAME_BYTES;
        m->u.welcome.max_batch_readings = TM_MAX_BATCH_READINGS;
        m->u.welcome.heartbeat_ms = TM_HEARTBEAT_MS;
        if ((rc = f_uint(f, 1, 1, &m->u.welcome.version, "WELCOME.version")) ||
            (rc = f_uint(f, 2, 1, &m->u.welcome.last_seq, "WELCOME.last_seq")) ||
            (rc = f_uint(f, 3, 0, &m->u.welcome.max_frame_bytes, "WELCOME.max_frame_bytes")) ||
            (rc = f_uint(f, 4, 0, &m->u.welcome.max_batch_readings,
                         "WELCOME.max_batch_readings")) ||
            (rc = f_uint(f, 5, 0, &m->u.welcome.heartbeat_ms, "WELCOME.heartbeat_ms")) ||
            (rc = f_uint(f, 6, 0, &m->u.welcome.minor, "WELCOME.minor")))
            return rc;
        return TM_OK;
    case TM_MSG_BATCH:
        if ((rc = f_uint(f, 1, 1, &m->u.batch.seq, "BATCH.seq")) ||
            (rc = f_array(f, 2, &m->u.batch.count, &m->u.batch.readings,
                          &m->u.batch.readings_len, "BATCH.readings must be an array")))
            return rc;
        return TM_OK;
    case TM_MSG_ACK: {
        const uint8_t *p, *end;
        uint32_t k;
        tm_reject r;
        if ((rc = f_uint(f, 1, 1, &m->u.ack.seq, "ACK.seq")) ||
            (rc = f_uint(f, 2, 1, &m->u.ack.accepted, "ACK.accepted")) ||
            (rc = f_uint(f, 3, 1, &m->u.ack.duplicate, "ACK.duplicate")) ||
            (rc = f_array(f, 4, &m->u.ack.reject_count, &m->u.ack.rejects,
                          &m->u.ack.rejects_len, "ACK.rejects must be an array")))
            return rc;
        p = m->u.ack.rejects;
        end = p + m->u.ack.rejects_len;
        for (k = 0; k < m->u.ack.reject_count; k++)
            if (parse_reject(&p, end, &r) != 0)
                return bad(f, "ACK.rejects: each reject is [index, code, path, message]");
        return TM_OK;
    }
    case TM_MSG_RETRY:
        m->u.retry.reason = empty_str;
        if ((rc = f_uint(f, 1, 1, &m->u.retry.seq, "RETRY.seq")) ||
            (rc = f_str(f, 2, 1, &m->u.retry.reason, "RETRY.reason")) ||
            (rc = f_uint(f, 3, 1, &m->u.retry.retry_after_ms, "RETRY.retry_after_ms")))
            return rc;
        return TM_OK;
    case TM_MSG_PING:
    case TM_MSG_PONG:
        return f_uint(f, 1, 0, &m->u.ping.nonce, "PING/PONG.nonce");
    case TM_MSG_ERROR:
        m->u.error.message = empty_str;
        m->u.error.fatal = 1;
        if ((rc = f_str(f, 1, 1, &m->u.error.code, "ERROR.code")) ||
            (rc = f_str(f, 2, 0, &m->u.error.message, "ERROR.message")) ||
            (rc = f_bool(f, 3, &m->u.error.fatal, "ERROR.fatal must be a boolean")) ||
            (rc = f_uint(f, 4, 0, &m->u.error.seq, "ERROR.seq")))
            return rc;
        return TM_OK;
    case TM_MSG_BYE:
        m->u.bye.reason = empty_str;
        return f_str(f, 1, 0, &m->u.bye.reason, "BYE.reason");
    default:
        return bad(f, "unknown message type");
    }
}

static int malformed(tm_wire_error *err, const char *detail)
{
    if (err) {
        err->code = "malformed_frame";
        err->detail = detail;
        err->fatal = 0;
    }
    return TM_ERR_MALFORMED;
}

int tm_decode_body(const uint8_t *body, size_t len, tm_msg *out, tm_wire_error *err)
{
    const uint8_t *p = body, *end = body + len, *q = body;
    fields f;
    item it;
    unsigned i;
    int code = -1;
    f.err = err;
    f.n = 0;
    if (next_item(&q, end, &it) != 0 || it.kind != K_ARRAY) {
        /* not an array: still one valid value, or malformed */
        if (check_value(&p, end, TM_MAX_INNER_ARRAY_LEN) != 0)
            return malformed(err, "frame body is not valid msgpack within the limits");
        if (p != end)
            return malformed(err, "trailing bytes after the message");
        return bad(&f, "a message must be a non-empty array");
    }
    if (it.u > TM_MAX_MESSAGE_FIELDS)
        return malformed(err, "more message fields than the limit");
    f.n = (unsigned)it.u;
    p = q;
    for (i = 0; i < f.n; i++) {
        int list_field = i > 0 && ((code == TM_MSG_BATCH && i == 2) || (code == TM_MSG_ACK && i == 4));
        f.start[i] = p;
        if (list_field) {
            /* BATCH readings / ACK rejects: up to TM_MAX_BATCH_READINGS elements, each an
             * inner value of its own */
            const uint8_t *h = p;
            if (next_item(&h, end, &it) == 0 && it.kind == K_ARRAY) {
                uint64_t k;
                if (it.u > TM_MAX_BATCH_READINGS)
                    return malformed(err, "list longer than max_batch_readings");
                p = h;
                for (k = 0; k < it.u; k++)
                    if (check_value(&p, end, TM_MAX_INNER_ARRAY_LEN) != 0)
                        return malformed(err, "frame body is not valid msgpack within the limits");
                continue;
            }
        }
        if (check_value(&p, end, TM_MAX_INNER_ARRAY_LEN) != 0)
            return malformed(err, "frame body is not valid msgpack within the limits");
        if (i == 0) {
            const uint8_t *c = f.start[0];
            next_item(&c, p, &it);
            if (it.kind == K_UINT && it.u <= 0x7fffffff)
                code = (int)it.u;
            else if (it.kind == K_UINT || it.kind == K_NINT)
                code = 0; /* an int, but no message type */
            else
                code = -1;
        }
    }
    f.start[f.n] = p;
    if (p != end)
        return malformed(err, "trailing bytes after the message");
    if (f.n == 0)
        return bad(&f, "a message must be a non-empty array");
    if (code < 0)
        return bad(&f, "the first element of a message must be its integer type code");
    return parse(&f, code, out);
}

void tm_rejects_begin(tm_reject_iter *it, const tm_msg *ack)
{
    it->p = ack->u.ack.rejects;
    it->end = ack->u.ack.rejects + ack->u.ack.rejects_len;
    it->left = ack->u.ack.reject_count;
}

int tm_rejects_next(tm_reject_iter *it, tm_reject *out)
{
    if (it->left == 0)
        return 0;
    memset(out, 0, sizeof *out);
    if (parse_reject(&it->p, it->end, out) != 0) {
        it->left = 0;
        return 0;
    }
    it->left--;
    return 1;
}

const char *tm_msg_name(int type)
{
    static const char *const names[] = {"?",     "HELLO", "WELCOME", "BATCH", "ACK",
                                        "RETRY", "PING",  "PONG",    "ERROR", "BYE"};
    return type >= 1 && type <= 9 ? names[type] : "?";
}

/* ------------------------------------------------------------------ frame reader */

void tm_frame_init(tm_frame_reader *fr, uint8_t *buf, size_t cap)
{
    fr->buf = buf;
    fr->cap = cap;
    tm_frame_reset(fr);
}

void tm_frame_reset(tm_frame_reader *fr)
{
    fr->have = 0;
    fr->body_len = 0;
    fr->in_body = 0;
}

void tm_frame_want(tm_frame_reader *fr, uint8_t **dst, size_t *n)
{
    if (!fr->in_body) {
        *dst = fr->header + fr->have;
        *n = TM_FRAME_HEADER_BYTES - fr->have;
    } else {
        *dst = fr->buf + fr->have;
        *n = fr->body_len - fr->have;
    }
}

int tm_frame_got(tm_frame_reader *fr, size_t n)
{
    fr->have += n;
    if (!fr->in_body) {
        if (fr->have < TM_FRAME_HEADER_BYTES)
            return TM_FRAME_MORE;
        fr->body_len = (uint32_t)be(fr->header, TM_FRAME_HEADER_BYTES);
        fr->have = 0;
        if (fr->body_len > fr->cap)
            return TM_ERR_FRAME_TOO_LARGE; /* refused from the header: the body is not read */
        if (fr->body_len == 0) {
            return TM_FRAME_READY;
        }
        fr->in_body = 1;
        return TM_FRAME_MORE;
    }
    if (fr->have < fr->body_len)
        return TM_FRAME_MORE;
    fr->in_body = 0;
    fr->have = 0;
    return TM_FRAME_READY;
}

int tm_frame_partial(const tm_frame_reader *fr) { return fr->in_body || fr->have > 0; }

/* ------------------------------------------------------------------ state machine */

int tm_may_send(tm_role role, tm_state state, int type)
{
    /* bit n set: message type n allowed (§9 table) */
    static const unsigned agent[4] = {
        (1u << TM_MSG_HELLO) | (1u << TM_MSG_ERROR) | (1u << TM_MSG_BYE),
        (1u << TM_MSG_PING) | (1u << TM_MSG_PONG) | (1u << TM_MSG_ERROR) | (1u << TM_MSG_BYE),
        (1u << TM_MSG_BATCH) | (1u << TM_MSG_PING) | (1u << TM_MSG_PONG) | (1u << TM_MSG_ERROR) |
            (1u << TM_MSG_BYE),
        (1u << TM_MSG_ERROR) | (1u << TM_MSG_BYE)};
    static const unsigned collector[4] = {
        (1u << TM_MSG_ERROR) | (1u << TM_MSG_BYE),
        (1u << TM_MSG_WELCOME) | (1u << TM_MSG_ERROR) | (1u << TM_MSG_BYE),
        (1u << TM_MSG_ACK) | (1u << TM_MSG_RETRY) | (1u << TM_MSG_PING) | (1u << TM_MSG_PONG) |
            (1u << TM_MSG_ERROR) | (1u << TM_MSG_BYE),
        (1u << TM_MSG_ERROR) | (1u << TM_MSG_BYE)};
    if (type < 1 || type > 9 || (unsigned)state > 3)
        return 0;
    return ((role == TM_ROLE_AGENT ? agent : collector)[state] >> type) & 1u;
}

void tm_conn_init(tm_conn *c, tm_role role, tm_state state)
{
    c->role = role;
    c->state = state;
    c->bad_frames = 0;
    c->bad_frame_budget = TM_BAD_FRAME_BUDGET;
}

static void advance(tm_conn *c, int type, int fatal_error)
{
    if (type == TM_MSG_HELLO)
        c->state = TM_STATE_AWAIT_WELCOME;
    else if (type == TM_MSG_WELCOME)
        c->state = TM_STATE_READY;
    else if (type == TM_MSG_BYE || (type == TM_MSG_ERROR && fatal_error))
        c->state = TM_STATE_CLOSED;
}

void tm_conn_sent(tm_conn *c, int type, int fatal_error) { advance(c, type, fatal_error); }

static int bad_frame(tm_conn *c, tm_wire_error *err, int rc)
{
    c->bad_frames++;
    if (c->bad_frames > c->bad_frame_budget) {
        err->code = "too_many_bad_frames";
        err->detail = "bad-frame budget spent";
        err->fatal = 1;
        c->state = TM_STATE_CLOSED;
        return rc;
    }
    err->fatal = 0;
    return rc;
}

int tm_conn_receive(tm_conn *c, const uint8_t *body, size_t len, tm_msg *out,
                    tm_wire_error *err)
{
    int rc;
    tm_role peer = c->role == TM_ROLE_AGENT ? TM_ROLE_COLLECTOR : TM_ROLE_AGENT;
    if (len == 0) {
        err->code = "malformed_frame";
        err->detail = "empty frame body";
        return bad_frame(c, err, TM_ERR_MALFORMED);
    }
    rc = tm_decode_body(body, len, out, err);
    if (rc != TM_OK)
        return bad_frame(c, err, rc);
    if (!tm_may_send(peer, c->state, out->type)) {
        err->code = "unexpected_message";
        err->detail = "message not allowed in this state";
        if (c->state != TM_STATE_READY) {
            err->fatal = 1;
            c->state = TM_STATE_CLOSED;
            return TM_ERR_BAD_MESSAGE;
        }
        return bad_frame(c, err, TM_ERR_BAD_MESSAGE);
    }
    advance(c, out->type, out->type == TM_MSG_ERROR && out->u.error.fatal);
    return TM_OK;
}
