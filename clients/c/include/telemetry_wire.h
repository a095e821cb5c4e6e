/*
 * telemetry_wire.h - sans-IO codec for the sensor-telemetry wire protocol v1 (and the
 * additive v1.1 fields). No sockets, no clock, no allocation: every function works on
 * caller-supplied buffers. The specification is docs/protocol.md; the v1.1 additions are
 * HELLO.stream, WELCOME.minor and ERROR.seq.
 *
 * Frame: 4-byte big-endian length N, then N bytes holding one msgpack array whose first
 * element is the message type. Encoders write the shortest msgpack form, except that
 * float values are always float64 (0xcb), so the bytes match the reference encoder.
 */
#ifndef TELEMETRY_WIRE_H
#define TELEMETRY_WIRE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- limits (§8) */

#define TM_PROTOCOL_VERSION 1u
#define TM_FRAME_HEADER_BYTES 4u
/* Largest frame either side sends unless WELCOME announces less. */
#define TM_MAX_FRAME_BYTES 1048576u
/* Most readings in one BATCH (also the longest ACK rejects list). */
#define TM_MAX_BATCH_READINGS 10000u
/* Longest msgpack str anywhere; 1024 chars of text need at most 4096 bytes of UTF-8. */
#define TM_MAX_STR_BYTES 4096u
/* Widest map anywhere. */
#define TM_MAX_MAP_ENTRIES 64u
/* Longest array other than BATCH readings / ACK rejects. */
#define TM_MAX_INNER_ARRAY_LEN 64u
/* Fields in one message: v1 has at most 7, the rest is room for additive fields. */
#define TM_MAX_MESSAGE_FIELDS 32u
/* Largest ext payload (the Timestamp ext). */
#define TM_MAX_EXT_BYTES 12u
/* Nesting the decoder follows. A valid frame is 4 levels deep; the reference decoder's
 * stack allows 1024, this one 32 (deeper values are malformed here, and never valid). */
#define TM_MAX_DEPTH 32u
/* Undecodable frames tolerated per connection before it is closed. */
#define TM_BAD_FRAME_BUDGET 16u
/* Defaults a WELCOME without the optional fields means. */
#define TM_HEARTBEAT_MS 15000u
/* HELLO must be answered this soon. */
#define TM_HANDSHAKE_TIMEOUT_MS 10000u
#define TM_MAX_INT64 9223372036854775807ull
/* Longest v1.1 stream id. */
#define TM_MAX_STREAM_CHARS 64u

/* ---------------------------------------------------------------- result codes */

enum {
    TM_OK = 0,
    TM_ERR_TIMEOUT = -1,        /* a deadline passed (flush) or nothing arrived in time */
    TM_ERR_QUEUE_FULL = -2,     /* no room in the queue for this reading */
    TM_ERR_INVALID = -3,        /* a reading the wire cannot carry (see tm_client_add) */
    TM_ERR_NOSPACE = -4,        /* an encoder ran out of buffer */
    TM_ERR_AUTH = -5,           /* collector: auth_failed (unknown device, wrong token) */
    TM_ERR_VERSION = -6,        /* collector: unsupported_version */
    TM_ERR_REFUSED = -7,        /* collector refused the HELLO otherwise (e.g. bad_message) */
    TM_ERR_CONFIG = -8,         /* bad configuration or a buffer too small at init */
    TM_ERR_IO = -9,             /* transport failure (connect, send, recv) */
    TM_ERR_CLOSED = -10,        /* the peer closed the connection */
    TM_ERR_MALFORMED = -11,     /* decoder: not one valid msgpack value within the limits */
    TM_ERR_BAD_MESSAGE = -12,   /* decoder: valid msgpack but not a v1 message */
    TM_ERR_FRAME_TOO_LARGE = -13 /* a collector frame larger than our receive buffer */
};

/* A short English description of a TM_* code ("auth_failed: ..."), never NULL. */
const char *tm_strerror(int code);

/* ---------------------------------------------------------------- strings and values */

/* A string that points into a received frame: not NUL-terminated. */
typedef struct tm_str {
    const char *ptr;
    size_t len;
} tm_str;

typedef enum tm_type {
    TM_NIL = 0,
    TM_FLOAT,  /* encoded as float64 (0xcb) */
    TM_INT,    /* shortest msgpack int form */
    TM_UINT,   /* shortest msgpack uint form (up to 2^64-1) */
    TM_BOOL,
    TM_STR,    /* NUL-terminated UTF-8 */
    TM_MAP     /* str -> scalar fields (gps, acceleration, user-defined object kinds) */
} tm_type;

struct tm_field;

typedef struct tm_value {
    tm_type type;
    union {
        double f;
        int64_t i;
        uint64_t u;
        int b;
        const char *s;
        struct {
            const struct tm_field *fields;
            size_t count;
        } map;
    } as;
} tm_value;

/* One field of a map value; its value must be a scalar (not a map). */
typedef struct tm_field {
    const char *key;
    tm_value value;
} tm_field;

static inline tm_value tm_nil(void) { tm_value v; v.type = TM_NIL; v.as.u = 0; return v; }
static inline tm_value tm_float(double f) { tm_value v; v.type = TM_FLOAT; v.as.f = f; return v; }
static inline tm_value tm_int(int64_t i) { tm_value v; v.type = TM_INT; v.as.i = i; return v; }
static inline tm_value tm_uint(uint64_t u) { tm_value v; v.type = TM_UINT; v.as.u = u; return v; }
static inline tm_value tm_bool(int b) { tm_value v; v.type = TM_BOOL; v.as.b = b != 0; return v; }
static inline tm_value tm_text(const char *s) { tm_value v; v.type = TM_STR; v.as.s = s; return v; }
static inline tm_value tm_map(const tm_field *fields, size_t count)
{
    tm_value v;
    v.type = TM_MAP;
    v.as.map.fields = fields;
    v.as.map.count = count;
    return v;
}

typedef struct tm_tag {
    const char *key;
    const char *value;
} tm_tag;

/* One reading: [sensor, kind, ts, value, unit, tags] on the wire (§4). */
typedef struct tm_reading {
    const char *sensor;
    const char *kind;
    int64_t ts_ns;        /* nanoseconds since 1970-01-01T00:00:00Z */
    tm_value value;
    const char *unit;     /* NULL: nil (the kind's default unit) */
    const tm_tag *tags;   /* NULL: nil; non-NULL with tag_count 0: an empty map */
    size_t tag_count;
} tm_reading;

/* ---------------------------------------------------------------- writer */

/* Writes into a byte ring: `len` bytes starting at `start` (mod cap), at most `limit`. A
 * plain buffer is a ring that starts at 0 with limit = cap. On overflow nothing more is
 * written and `overflow` is set. */
typedef struct tm_writer {
    uint8_t *buf;
    size_t cap;
    size_t start;
    size_t len;
    size_t limit;
    int overflow;
} tm_writer;

void tm_writer_init(tm_writer *w, uint8_t *buf, size_t cap);

/* The msgpack of one reading (no frame). TM_ERR_INVALID: a string over TM_MAX_STR_BYTES or
 * not valid UTF-8, a NULL string, more than TM_MAX_MAP_ENTRIES fields or tags, or a map
 * inside a map; TM_ERR_NOSPACE: the writer is full. */
int tm_encode_reading(tm_writer *w, const tm_reading *r);

typedef struct tm_hello {
    const char *device_id;
    const char *token;
    const char *agent;          /* NULL means "" */
    const char *agent_version;  /* NULL means "" */
    uint64_t dropped;
    const char *stream;         /* v1.1; NULL: omitted (the v1.0 seven-element HELLO) */
} tm_hello;

/* Whole frames (length prefix + body). Each returns TM_OK, TM_ERR_NOSPACE or
 * TM_ERR_INVALID. */
int tm_encode_hello(tm_writer *w, const tm_hello *h);
int tm_encode_batch(tm_writer *w, uint64_t seq, const tm_reading *readings, size_t count);
int tm_encode_ping(tm_writer *w, uint64_t nonce);
int tm_encode_pong(tm_writer *w, uint64_t nonce);
int tm_encode_bye(tm_writer *w, const char *reason);
int tm_encode_error(tm_writer *w, const char *code, const char *message, int fatal);

/* The header of a BATCH frame whose readings (`count` of them, `readings_bytes` bytes of
 * msgpack) follow it: length prefix, array, type, seq and the readings array header. At
 * most TM_BATCH_HEADER_MAX bytes. Returns its length. */
#define TM_BATCH_HEADER_MAX 20u
size_t tm_batch_header(uint8_t out[TM_BATCH_HEADER_MAX], uint64_t seq, uint32_t count,
                       size_t readings_bytes);

/* ---------------------------------------------------------------- decoder */

typedef enum tm_msg_type {
    TM_MSG_HELLO = 1,
    TM_MSG_WELCOME = 2,
    TM_MSG_BATCH = 3,
    TM_MSG_ACK = 4,
    TM_MSG_RETRY = 5,
    TM_MSG_PING = 6,
    TM_MSG_PONG = 7,
    TM_MSG_ERROR = 8,
    TM_MSG_BYE = 9
} tm_msg_type;

const char *tm_msg_name(int type);

/* One decoded message. Strings and lists point into the body, which must outlive it. */
typedef struct tm_msg {
    int type;
    union {
        struct {
            uint64_t version;
            tm_str device_id, token, agent, agent_version;
            uint64_t dropped;
            tm_str stream;
        } hello;
        struct {
            uint64_t version, last_seq, max_frame_bytes, max_batch_readings, heartbeat_ms;
            uint64_t minor; /* v1.1; 0 from a v1.0 collector */
        } welcome;
        struct {
            uint64_t seq;
            uint32_t count;
            const uint8_t *readings; /* the readings' msgpack, one after the other */
            size_t readings_len;
        } batch;
        struct {
            uint64_t seq, accepted, duplicate;
            uint32_t reject_count;
            const uint8_t *rejects; /* the reject arrays, one after the other */
            size_t rejects_len;
        } ack;
        struct {
            uint64_t seq;
            tm_str reason;
            uint64_t retry_after_ms;
        } retry;
        struct {
            uint64_t nonce;
        } ping; /* PING and PONG */
        struct {
            tm_str code, message;
            int fatal;
            uint64_t seq; /* v1.1; 0 when absent */
        } error;
        struct {
            tm_str reason;
        } bye;
    } u;
} tm_msg;

/* Why a frame was refused: a protocol ERROR code (§7) and a short explanation. */
typedef struct tm_wire_error {
    const char *code;    /* "malformed_frame", "bad_message", "unexpected_message", ... */
    const char *detail;  /* static text */
    int fatal;
} tm_wire_error;

/* Decodes one frame body. Returns TM_OK, TM_ERR_MALFORMED (code malformed_frame) or
 * TM_ERR_BAD_MESSAGE (code bad_message); `err` may be NULL. */
int tm_decode_body(const uint8_t *body, size_t len, tm_msg *out, tm_wire_error *err);

typedef struct tm_reject {
    uint64_t index;
    tm_str code, path, message;
} tm_reject;

/* Iterates an ACK's rejects (after tm_decode_body accepted it). */
typedef struct tm_reject_iter {
    const uint8_t *p;
    const uint8_t *end;
    uint32_t left;
} tm_reject_iter;

void tm_rejects_begin(tm_reject_iter *it, const tm_msg *ack);
/* 1 with *out filled, 0 at the end. */
int tm_rejects_next(tm_reject_iter *it, tm_reject *out);

/* ---------------------------------------------------------------- receive side */

/* Incremental frame reader: two reads per frame, straight into the caller's buffer.
 * tm_frame_want() says where to put the next bytes and how many are needed; after the
 * transport put n bytes there, tm_frame_got() says whether a body is complete. */
typedef struct tm_frame_reader {
    uint8_t *buf;          /* body buffer */
    size_t cap;            /* its size: the largest body accepted */
    uint8_t header[TM_FRAME_HEADER_BYTES];
    size_t have;           /* bytes of the current header or body received */
    uint32_t body_len;
    int in_body;
} tm_frame_reader;

enum { TM_FRAME_MORE = 1, TM_FRAME_READY = 2 };

void tm_frame_init(tm_frame_reader *fr, uint8_t *buf, size_t cap);
void tm_frame_reset(tm_frame_reader *fr);
void tm_frame_want(tm_frame_reader *fr, uint8_t **dst, size_t *n);
/* TM_FRAME_MORE, TM_FRAME_READY (body at fr->buf, fr->body_len bytes; N = 0 is READY with
 * body_len 0), or TM_ERR_FRAME_TOO_LARGE (checked on the header: the body is not read). */
int tm_frame_got(tm_frame_reader *fr, size_t n);
/* 1 when a frame was started but not finished (end of stream here is truncated_frame). */
int tm_frame_partial(const tm_frame_reader *fr);

typedef enum tm_role { TM_ROLE_AGENT = 0, TM_ROLE_COLLECTOR = 1 } tm_role;
typedef enum tm_state {
    TM_STATE_AWAIT_HELLO = 0,
    TM_STATE_AWAIT_WELCOME,
    TM_STATE_READY,
    TM_STATE_CLOSED
} tm_state;

/* 1 when `role` may send a message of `type` in `state` (§9). */
int tm_may_send(tm_role role, tm_state state, int type);

/* One side of a connection, receive direction: decode a body, check it against the state
 * machine, count bad frames. */
typedef struct tm_conn {
    tm_role role;
    tm_state state;
    uint32_t bad_frames;
    uint32_t bad_frame_budget;
} tm_conn;

void tm_conn_init(tm_conn *c, tm_role role, tm_state state);
/* A complete body. TM_OK: *out is the next event (the state advanced). Otherwise *err says
 * what ERROR to answer with; err->fatal means the connection is now closed. */
int tm_conn_receive(tm_conn *c, const uint8_t *body, size_t len, tm_msg *out,
                    tm_wire_error *err);
/* Advance the state for a message this side sent. */
void tm_conn_sent(tm_conn *c, int type, int fatal_error);

#ifdef __cplusplus
}
#endif

#endif /* TELEMETRY_WIRE_H */
