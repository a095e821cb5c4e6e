/*
 * unit_tests.c - the client against a scripted collector behind a fake transport with a
 * fake clock: every byte the client sends is decoded and checked, and the collector's
 * answers are chosen per batch (ACK, RETRY, a dropped connection, ERROR, silence).
 * Built and run under AddressSanitizer and UBSan by `make test`.
 */
#include "telemetry.h"
#include "internal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures, checks;

#define CHECK(cond)                                                                  \
    do {                                                                             \
        checks++;                                                                    \
        if (!(cond)) {                                                               \
            failures++;                                                              \
            fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__,    \
                    current, #cond);                                                 \
        }                                                                            \
    } while (0)

static const char *current = "";

/* ------------------------------------------------------------------ fake collector */

enum act { ACT_ACK, ACT_RETRY, ACT_CLOSE, ACT_ERROR_SEQ, ACT_ERROR_V10, ACT_SILENT, ACT_EXAMPLE_ACK,
           ACT_BIG_ACK, ACT_BYE, ACT_GARBAGE };

#define MAX_FRAMES 512

typedef struct frame_rec {
    size_t off, len; /* in tx */
    int conn;        /* connection number, from 1 */
    uint64_t at_ms;
    tm_msg msg;
} frame_rec;

typedef struct fake {
    uint64_t now, slept;
    int connected, conn_count, connect_fail;
    int hello_auth_failed;
    uint64_t welcome_last_seq[8]; /* per connection number (index conn-1), last used beyond */
    uint64_t welcome_max_batch[8];
    uint64_t welcome_minor, welcome_heartbeat;
    int welcome_len;              /* fields after the type: 5 (v1.0) or 6 (v1.1) */
    int ping_after_welcome;
    int answer_pings;
    enum act actions[64];
    int nactions, batches;
    uint64_t dup_next; /* ACK duplicates instead of accepting for the next batch */
    uint8_t rx[1 << 16];
    size_t rx_len, rx_pos;
    int eof;
    size_t recv_max; /* 0: as many bytes as asked for */
    uint8_t tx[1 << 20];
    size_t tx_len, tx_parsed, conn_start;
    frame_rec frames[MAX_FRAMES];
    int nframes;
} fake;

static void push(fake *f, const uint8_t *p, size_t n)
{
    memcpy(f->rx + f->rx_len, p, n);
    f->rx_len += n;
}

/* Collector frames, built with the library's msgpack writer. */
typedef struct out_frame {
    uint8_t buf[4096];
    tm_writer w;
} out_frame;

static tm_writer *begin(out_frame *o, uint32_t fields, int type)
{
    tm_writer_init(&o->w, o->buf, sizeof o->buf);
    o->w.len = 4;
    tm__mp_array(&o->w, fields + 1);
    tm__mp_uint(&o->w, (uint64_t)type);
    return &o->w;
}

static void finish(fake *f, out_frame *o)
{
    size_t body = o->w.len - 4;
    o->buf[0] = (uint8_t)(body >> 24);
    o->buf[1] = (uint8_t)(body >> 16);
    o->buf[2] = (uint8_t)(body >> 8);
    o->buf[3] = (uint8_t)body;
    push(f, o->buf, o->w.len);
}

static void send_welcome(fake *f)
{
    out_frame o;
    int k = f->conn_count - 1 < 8 ? f->conn_count - 1 : 7;
    tm_writer *w = begin(&o, (uint32_t)f->welcome_len, TM_MSG_WELCOME);
    tm__mp_uint(w, 1);
    tm__mp_uint(w, f->welcome_last_seq[k]);
    tm__mp_uint(w, 1048576);
    tm__mp_uint(w, f->welcome_max_batch[k] ? f->welcome_max_batch[k] : 10000);
    tm__mp_uint(w, f->welcome_heartbeat);
    if (f->welcome_len >= 6)
        tm__mp_uint(w, f->welcome_minor);
    finish(f, &o);
}

static void send_ack(fake *f, uint64_t seq, uint64_t accepted, uint64_t dup)
{
    out_frame o;
    tm_writer *w = begin(&o, 4, TM_MSG_ACK);
    tm__mp_uint(w, seq);
    tm__mp_uint(w, accepted);
    tm__mp_uint(w, dup);
    tm__mp_array(w, 0);
    finish(f, &o);
}

static void send_error(fake *f, const char *code, int fatal, uint64_t seq, int with_seq)
{
    out_frame o;
    tm_writer *w = begin(&o, with_seq ? 4u : 3u, TM_MSG_ERROR);
    tm__mp_str(w, code);
    tm__mp_str(w, "test");
    tm__mp_bool(w, fatal);
    if (with_seq)
        tm__mp_uint(w, seq);
    finish(f, &o);
}

static void send_ping(fake *f, uint64_t nonce)
{
    out_frame o;
    tm_writer *w = begin(&o, 1, TM_MSG_PING);
    tm__mp_uint(w, nonce);
    finish(f, &o);
}

static uint8_t hexbyte(const char *h)
{
    unsigned v;
    sscanf(h, "%2x", &v);
    return (uint8_t)v;
}

static size_t unhex(const char *h, uint8_t *out)
{
    size_t n = strlen(h) / 2, i;
    for (i = 0; i < n; i++)
        out[i] = hexbyte(h + 2 * i);
    return n;
}

/* docs/protocol.md §10 */
static const char EXAMPLE_HELLO[] =
    "00000034970101ac677265656e686f7573652d31ac7333637265742d746f6b656eaf74656c656d657472792d"
    "6167656e74a5302e312e3000";
static const char EXAMPLE_BATCH[] =
    "0000007d93032a9296b3677265656e686f7573652f6169722d74656d70ab74656d7065726174757265cf1797"
    "9cfe3d85cd15cb4035800000000000a143c096b7677265656e686f7573652f6169722d68756d6964697479a8"
    "68756d6964697479cf17979cfe3d85cd15cb405a000000000000a12581a562656e6368a56e6f727468";
static const char EXAMPLE_ACK[] =
    "0000004695042a0100919401ac6f75745f6f665f72616e6765a576616c7565d929496e7075742073686f756c"
    "64206265206c657373207468616e206f7220657175616c20746f20313030";

static void on_batch(fake *f, const tm_msg *m)
{
    enum act a = f->batches < f->nactions ? f->actions[f->batches] : ACT_ACK;
    f->batches++;
    switch (a) {
    case ACT_ACK:
        if (f->dup_next) {
            send_ack(f, m->u.batch.seq, 0, m->u.batch.count);
            f->dup_next--;
        } else {
            send_ack(f, m->u.batch.seq, m->u.batch.count, 0);
        }
        break;
    case ACT_RETRY: {
        out_frame o;
        tm_writer *w = begin(&o, 3, TM_MSG_RETRY);
        tm__mp_uint(w, m->u.batch.seq);
        tm__mp_str(w, "overloaded");
        tm__mp_uint(w, 250);
        finish(f, &o);
        break;
    }
    case ACT_CLOSE:
        f->eof = 1;
        break;
    case ACT_ERROR_SEQ:
        send_error(f, "bad_message", 0, m->u.batch.seq, 1);
        break;
    case ACT_ERROR_V10:
        send_error(f, "bad_message", 0, 0, 0);
        break;
    case ACT_SILENT:
        break;
    case ACT_EXAMPLE_ACK: {
        uint8_t b[128];
        push(f, b, unhex(EXAMPLE_ACK, b));
        break;
    }
    case ACT_BIG_ACK: {
        out_frame o;
        tm_writer *w = begin(&o, 4, TM_MSG_ACK);
        tm__mp_uint(w, m->u.batch.seq);
        tm__mp_uint(w, 0);
        tm__mp_uint(w, 0);
        tm__mp_array(w, 1);
        tm__mp_array(w, 4);
        tm__mp_uint(w, 0);
        tm__mp_str(w, "out_of_range");
        tm__mp_str(w, "value");
        tm__mp_str(w, "a message long enough to make this ACK larger than a tiny receive buffer");
        finish(f, &o);
        break;
    }
    case ACT_GARBAGE: {
        /* 17 undecodable frames: one more than the bad-frame budget */
        static const uint8_t bad[5] = {0, 0, 0, 1, 0xc1};
        int k;
        for (k = 0; k < 17; k++)
            push(f, bad, sizeof bad);
        break;
    }
    case ACT_BYE: {
        out_frame o;
        tm_writer *w = begin(&o, 1, TM_MSG_BYE);
        tm__mp_str(w, "shutting_down");
        finish(f, &o);
        f->eof = 1;
        break;
    }
    }
}

static void parse_tx(fake *f)
{
    for (;;) {
        size_t avail = f->tx_len - f->tx_parsed, len;
        frame_rec *r;
        const uint8_t *p = f->tx + f->tx_parsed;
        tm_wire_error err;
        if (avail < 4)
            return;
        len = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
        if (avail < 4 + len)
            return;
        if (f->nframes >= MAX_FRAMES) {
            fprintf(stderr, "too many frames\n");
            exit(1);
        }
        r = &f->frames[f->nframes++];
        r->off = f->tx_parsed;
        r->len = 4 + len;
        r->conn = f->conn_count;
        r->at_ms = f->now;
        f->tx_parsed += 4 + len;
        if (tm_decode_body(p + 4, len, &r->msg, &err) != TM_OK) {
            fprintf(stderr, "%s: client sent an undecodable frame: %s\n", current, err.detail);
            failures++;
            continue;
        }
        switch (r->msg.type) {
        case TM_MSG_HELLO:
            if (f->hello_auth_failed) {
                send_error(f, "auth_failed", 1, 0, 0);
                f->eof = 1;
            } else {
                send_welcome(f);
                if (f->ping_after_welcome)
                    send_ping(f, 77);
            }
            break;
        case TM_MSG_BATCH:
            on_batch(f, &r->msg);
            break;
        case TM_MSG_PING:
            if (f->answer_pings) {
                out_frame o;
                tm_writer *w = begin(&o, 1, TM_MSG_PONG);
                tm__mp_uint(w, r->msg.u.ping.nonce);
                finish(f, &o);
            }
            break;
        default:
            break;
        }
    }
}

static int f_connect(void *ctx, const char *address, uint32_t timeout_ms)
{
    fake *f = (fake *)ctx;
    (void)address;
    (void)timeout_ms;
    if (f->connect_fail > 0) {
        f->connect_fail--;
        return TM_ERR_IO;
    }
    f->connected = 1;
    f->conn_count++;
    f->rx_len = f->rx_pos = 0;
    f->eof = 0;
    return TM_OK;
}

static int f_send(void *ctx, const uint8_t *buf, size_t n, uint32_t timeout_ms)
{
    fake *f = (fake *)ctx;
    (void)timeout_ms;
    if (!f->connected || f->eof)
        return TM_ERR_IO;
    memcpy(f->tx + f->tx_len, buf, n);
    f->tx_len += n;
    parse_tx(f);
    return TM_OK;
}

static long f_recv(void *ctx, uint8_t *buf, size_t n, uint32_t timeout_ms)
{
    fake *f = (fake *)ctx;
    size_t avail = f->rx_len - f->rx_pos;
    if (!f->connected)
        return TM_ERR_IO;
    if (avail) {
        if (n > avail)
            n = avail;
        if (f->recv_max && n > f->recv_max)
            n = f->recv_max;
        memcpy(buf, f->rx + f->rx_pos, n);
        f->rx_pos += n;
        return (long)n;
    }
    if (f->eof)
        return 0;
    f->now += timeout_ms;
    return TM_ERR_TIMEOUT;
}

static void f_close(void *ctx)
{
    fake *f = (fake *)ctx;
    f->connected = 0;
    /* a frame cut by the close is dropped, as the collector would */
    f->tx_len = f->tx_parsed;
}

static uint64_t f_now(void *ctx) { return ((fake *)ctx)->now; }

static void f_sleep(void *ctx, uint32_t ms)
{
    fake *f = (fake *)ctx;
    f->now += ms;
    f->slept += ms;
}

static int f_random(void *ctx, uint8_t *buf, size_t n)
{
    size_t i;
    (void)ctx;
    for (i = 0; i < n; i++)
        buf[i] = (uint8_t)i;
    return TM_OK;
}

/* ------------------------------------------------------------------ test harness */

static fake F;
static tm_client C;
static uint8_t BUF[1 << 20];

typedef struct seen {
    tm_reject_info rejects[16];
    char codes[16][32], paths[16][32];
    int nrejects, nacks, ndrops;
    uint64_t drop_first;
    uint32_t drop_count;
} seen;
static seen S;

static void cb_reject(void *user, const tm_reject_info *r)
{
    (void)user;
    if (S.nrejects < 16) {
        S.rejects[S.nrejects] = *r;
        snprintf(S.codes[S.nrejects], 32, "%.*s", (int)r->code.len, r->code.ptr);
        snprintf(S.paths[S.nrejects], 32, "%.*s", (int)r->path.len, r->path.ptr);
        S.nrejects++;
    }
}

static void cb_ack(void *user, const tm_ack_info *a)
{
    (void)user;
    (void)a;
    S.nacks++;
}

static void cb_drop(void *user, uint64_t first, uint32_t count, tm_str code)
{
    (void)user;
    (void)code;
    S.ndrops++;
    S.drop_first = first;
    S.drop_count = count;
}

static int logging;
static void cb_log(void *user, const char *line)
{
    (void)user;
    if (logging)
        fprintf(stderr, "  log: %s\n", line);
}

static tm_config base_config(void)
{
    tm_config cfg;
    tm_config_defaults(&cfg);
    cfg.address = "fake:1";
    cfg.device_id = "greenhouse-1";
    cfg.token = "s3cret-token";
    cfg.cb.on_reject = cb_reject;
    cfg.cb.on_ack = cb_ack;
    cfg.cb.on_drop = cb_drop;
    cfg.cb.on_log = cb_log;
    return cfg;
}

static tm_transport fake_transport(void)
{
    tm_transport t;
    t.ctx = &F;
    t.connect = f_connect;
    t.send = f_send;
    t.recv = f_recv;
    t.close = f_close;
    t.now_ms = f_now;
    t.sleep_ms = f_sleep;
    t.random = f_random;
    return t;
}

static void setup(const char *name, const tm_config *cfg, size_t buflen)
{
    tm_transport t = fake_transport();
    current = name;
    memset(&F, 0, sizeof F);
    memset(&S, 0, sizeof S);
    F.now = 1000000;
    F.welcome_len = 5;
    F.welcome_heartbeat = 15000;
    F.answer_pings = 1;
    CHECK(tm_client_init(&C, cfg, &t, BUF, buflen) == TM_OK);
}

static tm_reading counter_reading(const char *sensor, uint64_t v)
{
    tm_reading r;
    memset(&r, 0, sizeof r);
    r.sensor = sensor;
    r.kind = "counter";
    r.ts_ns = 1700000000000000000 + (int64_t)v;
    r.value = tm_uint(v);
    return r;
}

static int frames_of(int type, int *idx, int max)
{
    int i, n = 0;
    for (i = 0; i < F.nframes; i++)
        if (F.frames[i].msg.type == type && n < max)
            idx[n++] = i;
    return n;
}

static int same_bytes(int a, int b)
{
    return F.frames[a].len == F.frames[b].len &&
           memcmp(F.tx + F.frames[a].off, F.tx + F.frames[b].off, F.frames[a].len) == 0;
}

/* ------------------------------------------------------------------ tests */

static void test_worked_example(void)
{
    static const tm_tag bench[] = {{"bench", "north"}};
    tm_config cfg = base_config();
    tm_reading r[2];
    uint8_t expect[256];
    size_t n;
    int hello[4], batch[4];
    cfg.agent = "telemetry-agent";
    cfg.agent_version = "0.1.0";
    setup("worked_example", &cfg, sizeof BUF);
    F.welcome_last_seq[0] = 41;
    F.actions[0] = ACT_EXAMPLE_ACK;
    F.nactions = 1;
    memset(r, 0, sizeof r);
    r[0].sensor = "greenhouse/air-temp";
    r[0].kind = "temperature";
    r[0].ts_ns = 1700000000123456789;
    r[0].value = tm_float(21.5);
    r[0].unit = "C";
    r[1].sensor = "greenhouse/air-humidity";
    r[1].kind = "humidity";
    r[1].ts_ns = 1700000000123456789;
    r[1].value = tm_float(104.0);
    r[1].unit = "%";
    r[1].tags = bench;
    r[1].tag_count = 1;
    CHECK(tm_client_add(&C, &r[0], NULL) == TM_OK);
    CHECK(tm_client_add(&C, &r[1], NULL) == TM_OK);
    CHECK(tm_client_flush(&C, 5000) == TM_OK);

    CHECK(frames_of(TM_MSG_HELLO, hello, 4) == 1);
    CHECK(frames_of(TM_MSG_BATCH, batch, 4) == 1);
    /* HELLO is the §10 example plus the v1.1 stream: 8 elements, then str8(32) */
    n = unhex(EXAMPLE_HELLO, expect);
    expect[4] = 0x98;
    expect[n++] = 0xd9;
    expect[n++] = 32;
    memcpy(expect + n, "000102030405060708090a0b0c0d0e0f", 32);
    n += 32;
    expect[3] = (uint8_t)(n - 4);
    CHECK(F.frames[hello[0]].len == n && memcmp(F.tx + F.frames[hello[0]].off, expect, n) == 0);
    CHECK(strcmp(tm_client_stream(&C), "000102030405060708090a0b0c0d0e0f") == 0);
    /* BATCH seq 42 (WELCOME.last_seq 41 + 1) is byte for byte the §10 example */
    n = unhex(EXAMPLE_BATCH, expect);
    CHECK(F.frames[batch[0]].len == n && memcmp(F.tx + F.frames[batch[0]].off, expect, n) == 0);
    /* the ACK's reject names the second reading (id 2) */
    CHECK(S.nrejects == 1);
    CHECK(S.nrejects == 1 && S.rejects[0].reading_id == 2 && S.rejects[0].index == 1);
    CHECK(strcmp(S.codes[0], "out_of_range") == 0 && strcmp(S.paths[0], "value") == 0);
    CHECK(C.stats.readings_accepted == 1 && C.stats.readings_rejected == 1);
    CHECK(tm_client_pending(&C) == 0);
}

static void test_collector_bytes_one_at_a_time(void)
{
    tm_config cfg = base_config();
    tm_reading r = counter_reading("s/1", 1);
    setup("one_byte_reads", &cfg, sizeof BUF);
    F.recv_max = 1;
    F.actions[0] = ACT_RETRY;
    F.nactions = 1;
    F.ping_after_welcome = 1;
    CHECK(tm_client_add(&C, &r, NULL) == TM_OK);
    CHECK(tm_client_flush(&C, 5000) == TM_OK);
    CHECK(C.stats.retries == 1 && C.stats.readings_accepted == 1 && C.stats.bad_frames == 0);
}

static void test_bad_frame_budget(void)
{
    tm_config cfg = base_config();
    tm_reading r = counter_reading("s/1", 1);
    int err[32], i, fatal = 0, nonfatal = 0;
    setup("bad_frame_budget", &cfg, sizeof BUF);
    F.actions[0] = ACT_GARBAGE;
    F.nactions = 1;
    CHECK(tm_client_add(&C, &r, NULL) == TM_OK);
    CHECK(tm_client_flush(&C, 60000) == TM_OK);
    CHECK(frames_of(TM_MSG_ERROR, err, 32) == 17);
    for (i = 0; i < 17; i++) {
        const tm_msg *m = &F.frames[err[i]].msg;
        if (m->u.error.fatal && m->u.error.code.len == 19 &&
            memcmp(m->u.error.code.ptr, "too_many_bad_frames", 19) == 0)
            fatal++;
        else if (!m->u.error.fatal && m->u.error.code.len == 15 &&
                 memcmp(m->u.error.code.ptr, "malformed_frame", 15) == 0)
            nonfatal++;
    }
    CHECK(nonfatal == 16 && fatal == 1);
    CHECK(C.stats.bad_frames == 17 && C.stats.disconnects == 1);
    CHECK(C.stats.readings_accepted == 1 && C.stats.resends == 1);
}

static void test_retry_resends_same_bytes(void)
{
    tm_config cfg = base_config();
    tm_reading r = counter_reading("s/1", 1);
    int batch[4];
    setup("retry", &cfg, sizeof BUF);
    F.actions[0] = ACT_RETRY;
    F.nactions = 1;
    CHECK(tm_client_add(&C, &r, NULL) == TM_OK);
    CHECK(tm_client_flush(&C, 5000) == TM_OK);
    CHECK(frames_of(TM_MSG_BATCH, batch, 4) == 2);
    CHECK(same_bytes(batch[0], batch[1]));
    CHECK(F.frames[batch[1]].at_ms - F.frames[batch[0]].at_ms >= 250);
    CHECK(C.stats.retries == 1 && C.stats.readings_accepted == 1);
    CHECK(F.frames[batch[0]].msg.u.batch.seq == 1);
}

static void test_reconnect_resends_unacked_batch(void)
{
    tm_config cfg = base_config();
    tm_reading r1 = counter_reading("s/1", 1), r2 = counter_reading("s/1", 2);
    int batch[8], hello[8];
    setup("reconnect", &cfg, sizeof BUF);
    F.actions[0] = ACT_CLOSE;
    F.nactions = 1;
    F.connect_fail = 0;
    CHECK(tm_client_add(&C, &r1, NULL) == TM_OK);
    CHECK(tm_client_poll(&C, 50) == TM_OK);
    F.connect_fail = 2; /* the collector is away for two attempts */
    CHECK(tm_client_add(&C, &r2, NULL) == TM_OK);
    CHECK(tm_client_flush(&C, 60000) == TM_OK);
    CHECK(frames_of(TM_MSG_HELLO, hello, 8) == 2);
    CHECK(frames_of(TM_MSG_BATCH, batch, 8) == 3);
    /* the unacknowledged batch goes again, unchanged, before the new one */
    CHECK(same_bytes(batch[0], batch[1]));
    CHECK(F.frames[batch[1]].conn == 2);
    CHECK(F.frames[batch[2]].msg.u.batch.seq == 2 && F.frames[batch[2]].msg.u.batch.count == 1);
    /* same stream on the new connection */
    CHECK(F.frames[hello[1]].msg.u.hello.stream.len == 32 &&
          memcmp(F.frames[hello[1]].msg.u.hello.stream.ptr, tm_client_stream(&C), 32) == 0);
    CHECK(C.stats.resends == 1 && C.stats.connects == 2 && C.stats.disconnects == 1);
    CHECK(C.stats.connect_failures == 2);
    CHECK(F.slept >= cfg.backoff_initial_ms / 2);
    CHECK(C.stats.readings_accepted == 2);
}

static void test_resume_after_lost_ack(void)
{
    tm_config cfg = base_config();
    tm_reading r1 = counter_reading("s/1", 1), r2 = counter_reading("s/1", 2);
    int batch[8];
    setup("resume", &cfg, sizeof BUF);
    F.welcome_last_seq[0] = 41; /* a v1.0 collector: one sequence per device */
    F.welcome_last_seq[1] = 42; /* seq 42 was committed, its ACK lost */
    F.actions[0] = ACT_CLOSE;
    F.nactions = 1;
    F.dup_next = 0;
    CHECK(tm_client_add(&C, &r1, NULL) == TM_OK);
    CHECK(tm_client_poll(&C, 50) == TM_OK);
    F.dup_next = 1;
    CHECK(tm_client_add(&C, &r2, NULL) == TM_OK);
    CHECK(tm_client_flush(&C, 60000) == TM_OK);
    CHECK(frames_of(TM_MSG_BATCH, batch, 8) == 3);
    CHECK(F.frames[batch[0]].msg.u.batch.seq == 42 && F.frames[batch[1]].msg.u.batch.seq == 42);
    CHECK(F.frames[batch[2]].msg.u.batch.seq == 43);
    CHECK(C.stats.readings_duplicate == 1 && C.stats.readings_accepted == 1);
}

static void test_error_naming_seq_drops_batch(void)
{
    tm_config cfg = base_config();
    int i, batch[8], hello[8];
    cfg.max_batch_readings = 2;
    setup("error_seq", &cfg, sizeof BUF);
    F.welcome_len = 6;
    F.welcome_minor = 1;
    F.actions[0] = ACT_ERROR_SEQ;
    F.actions[1] = ACT_CLOSE;
    F.nactions = 2;
    for (i = 1; i <= 3; i++) {
        tm_reading r = counter_reading("s/1", (uint64_t)i);
        CHECK(tm_client_add(&C, &r, NULL) == TM_OK);
    }
    CHECK(tm_client_flush(&C, 60000) == TM_OK);
    CHECK(S.ndrops == 1 && S.drop_first == 1 && S.drop_count == 2);
    CHECK(C.stats.readings_dropped == 2 && C.stats.readings_accepted == 1);
    CHECK(frames_of(TM_MSG_BATCH, batch, 8) == 3);
    CHECK(F.frames[batch[1]].msg.u.batch.seq == 2 && F.frames[batch[1]].msg.u.batch.count == 1);
    /* the dropped readings are reported in the next HELLO, and only there */
    CHECK(frames_of(TM_MSG_HELLO, hello, 8) == 2);
    CHECK(F.frames[hello[0]].msg.u.hello.dropped == 0);
    CHECK(F.frames[hello[1]].msg.u.hello.dropped == 2);
    F.eof = 1;
    CHECK(tm_client_poll(&C, 2000) == TM_OK);
    CHECK(frames_of(TM_MSG_HELLO, hello, 8) == 3);
    CHECK(F.frames[hello[2]].msg.u.hello.dropped == 0);
}

static void test_v10_error_without_seq_drops_batch(void)
{
    tm_config cfg = base_config();
    tm_reading r1 = counter_reading("s/1", 1);
    setup("error_v10", &cfg, sizeof BUF);
    F.actions[0] = ACT_ERROR_V10;
    F.nactions = 1;
    CHECK(tm_client_add(&C, &r1, NULL) == TM_OK);
    CHECK(tm_client_flush(&C, 5000) == TM_OK);
    CHECK(S.ndrops == 1 && C.stats.readings_dropped == 1 && C.stats.batches_sent == 1);
}

static void test_auth_failed_is_returned(void)
{
    tm_config cfg = base_config();
    tm_reading r1 = counter_reading("s/1", 1);
    setup("auth_failed", &cfg, sizeof BUF);
    F.hello_auth_failed = 1;
    CHECK(tm_client_add(&C, &r1, NULL) == TM_OK);
    CHECK(tm_client_flush(&C, 5000) == TM_ERR_AUTH);
    CHECK(C.stats.auth_failures == 1);
    CHECK(tm_client_pending(&C) == 1);
    CHECK(strstr(tm_strerror(TM_ERR_AUTH), "auth_failed") != NULL);
    /* the next attempt waits the longest backoff */
    CHECK(C.next_attempt_ms - F.now >= cfg.backoff_max_ms / 2);
}

static void test_ping_answered_with_pong(void)
{
    tm_config cfg = base_config();
    int pong[4];
    setup("ping_pong", &cfg, sizeof BUF);
    F.ping_after_welcome = 1;
    CHECK(tm_client_poll(&C, 100) == TM_OK);
    CHECK(frames_of(TM_MSG_PONG, pong, 4) == 1);
    CHECK(F.frames[pong[0]].msg.u.ping.nonce == 77);
}

static void test_heartbeat_and_dead_link(void)
{
    tm_config cfg = base_config();
    int ping[8], hello[8];
    uint64_t t0;
    setup("heartbeat", &cfg, sizeof BUF);
    F.welcome_heartbeat = 1000;
    F.answer_pings = 0; /* a silent collector: the link is dead */
    t0 = F.now;
    CHECK(tm_client_poll(&C, 3500) == TM_OK);
    CHECK(frames_of(TM_MSG_PING, ping, 8) >= 2);
    CHECK(F.frames[ping[0]].at_ms - t0 >= 1000 && F.frames[ping[0]].at_ms - t0 < 1100);
    /* given up 2 periods + 1 s after the last byte received (the WELCOME), then reconnected */
    CHECK(frames_of(TM_MSG_HELLO, hello, 8) == 2);
    CHECK(C.stats.disconnects == 1);
    CHECK(F.frames[hello[1]].at_ms - t0 >= 3000);
}

static void test_queue_full_and_ring_wrap(void)
{
    tm_config cfg = base_config();
    uint64_t next = 1, expect_id = 1;
    int round, i, full = 0, wrapped = 0;
    char sensors[3][40] = {"a", "sensor/with-a-longer-name", "x/yy/zzz"};
    cfg.rx_frame_bytes = 256;
    cfg.max_batch_readings = 7;
    /* control frames + 256 receive bytes + a 400-byte queue */
    setup("ring_wrap", &cfg, 192 + 256 + 400);
    for (round = 0; round < 40; round++) {
        int added = 0;
        for (;;) {
            tm_reading r = counter_reading(sensors[next % 3], next * 977);
            int rc = tm_client_add(&C, &r, NULL);
            if (rc == TM_ERR_QUEUE_FULL) {
                full++;
                break;
            }
            CHECK(rc == TM_OK);
            next++;
            if (++added == 5 + round % 9)
                break;
        }
        if (C.ring_head + C.ring_used > C.ring_cap)
            wrapped++;
        /* one batch out and ACKed per poll: the queue never empties, so it wraps */
        CHECK(tm_client_poll(&C, 10000) == TM_OK);
    }
    CHECK(tm_client_flush(&C, 10000) == TM_OK);
    CHECK(full > 0);
    CHECK(wrapped > 0);
    CHECK(C.stats.readings_accepted == next - 1);
    /* every batch is byte for byte what tm_encode_batch makes of the same readings */
    for (i = 0; i < F.nframes; i++) {
        static uint8_t buf[8192];
        tm_reading rs[16];
        tm_writer w;
        uint32_t k, n;
        if (F.frames[i].msg.type != TM_MSG_BATCH)
            continue;
        n = F.frames[i].msg.u.batch.count;
        CHECK(n >= 1 && n <= 7);
        for (k = 0; k < n && k < 16; k++)
            rs[k] = counter_reading(sensors[(expect_id + k) % 3], (expect_id + k) * 977);
        tm_writer_init(&w, buf, sizeof buf);
        CHECK(tm_encode_batch(&w, F.frames[i].msg.u.batch.seq, rs, n) == TM_OK);
        CHECK(w.len == F.frames[i].len && memcmp(buf, F.tx + F.frames[i].off, w.len) == 0);
        expect_id += n;
    }
    CHECK(expect_id == next);
}

static void test_welcome_limits_split_batches(void)
{
    tm_config cfg = base_config();
    int i, batch[8];
    setup("welcome_limits", &cfg, sizeof BUF);
    F.welcome_max_batch[0] = 2;
    for (i = 1; i <= 5; i++) {
        tm_reading r = counter_reading("s/1", (uint64_t)i);
        CHECK(tm_client_add(&C, &r, NULL) == TM_OK);
    }
    CHECK(tm_client_flush(&C, 5000) == TM_OK);
    CHECK(frames_of(TM_MSG_BATCH, batch, 8) == 3);
    CHECK(F.frames[batch[0]].msg.u.batch.count == 2 && F.frames[batch[2]].msg.u.batch.count == 1);
    CHECK(F.frames[batch[2]].msg.u.batch.seq == 3);
}

static void test_resend_under_smaller_limits_keeps_seq(void)
{
    tm_config cfg = base_config();
    int i, batch[8];
    setup("smaller_limits", &cfg, sizeof BUF);
    F.actions[0] = ACT_CLOSE;
    F.nactions = 1;
    F.welcome_max_batch[1] = 2;
    for (i = 1; i <= 3; i++) {
        tm_reading r = counter_reading("s/1", (uint64_t)i);
        CHECK(tm_client_add(&C, &r, NULL) == TM_OK);
    }
    CHECK(tm_client_flush(&C, 60000) == TM_OK);
    CHECK(frames_of(TM_MSG_BATCH, batch, 8) == 3);
    CHECK(F.frames[batch[0]].msg.u.batch.count == 3);
    CHECK(F.frames[batch[1]].msg.u.batch.seq == 1 && F.frames[batch[1]].msg.u.batch.count == 2);
    CHECK(F.frames[batch[2]].msg.u.batch.seq == 2 && F.frames[batch[2]].msg.u.batch.count == 1);
    CHECK(C.stats.readings_accepted == 3);
}

static void test_frame_too_large_for_receive_buffer(void)
{
    tm_config cfg = base_config();
    tm_reading r1 = counter_reading("s/1", 1);
    int err[4];
    cfg.rx_frame_bytes = 64;
    setup("rx_too_large", &cfg, sizeof BUF);
    F.actions[0] = ACT_BIG_ACK;
    F.nactions = 1;
    CHECK(tm_client_add(&C, &r1, NULL) == TM_OK);
    CHECK(tm_client_flush(&C, 5000) == TM_ERR_FRAME_TOO_LARGE);
    CHECK(frames_of(TM_MSG_ERROR, err, 4) == 1);
    CHECK(F.frames[err[0]].msg.u.error.fatal == 1 &&
          F.frames[err[0]].msg.u.error.code.len == 15 &&
          memcmp(F.frames[err[0]].msg.u.error.code.ptr, "frame_too_large", 15) == 0);
    CHECK(tm_client_pending(&C) == 1);
}

static void test_bye_reconnects(void)
{
    tm_config cfg = base_config();
    tm_reading r1 = counter_reading("s/1", 1);
    int hello[4];
    setup("bye", &cfg, sizeof BUF);
    F.actions[0] = ACT_BYE;
    F.nactions = 1;
    CHECK(tm_client_add(&C, &r1, NULL) == TM_OK);
    CHECK(tm_client_flush(&C, 60000) == TM_OK);
    CHECK(frames_of(TM_MSG_HELLO, hello, 4) == 2);
    CHECK(C.stats.readings_accepted == 1 && C.stats.resends == 1);
}

static void test_readings_the_wire_cannot_carry(void)
{
    static char long_text[TM_MAX_STR_BYTES + 2];
    static tm_tag many[TM_MAX_MAP_ENTRIES + 1];
    tm_config cfg = base_config();
    tm_reading r = counter_reading("s/1", 1);
    tm_field inner[1], outer[1];
    size_t i;
    setup("invalid", &cfg, sizeof BUF);
    memset(long_text, 'x', TM_MAX_STR_BYTES + 1);
    r.kind = "text";
    r.value = tm_text(long_text);
    CHECK(tm_client_add(&C, &r, NULL) == TM_ERR_INVALID);
    long_text[TM_MAX_STR_BYTES] = '\0'; /* exactly the limit */
    CHECK(tm_client_add(&C, &r, NULL) == TM_OK);
    r.value = tm_text("\xc3\x28");
    CHECK(tm_client_add(&C, &r, NULL) == TM_ERR_INVALID);
    r.value = tm_text("\xed\xa0\x80"); /* a UTF-16 surrogate */
    CHECK(tm_client_add(&C, &r, NULL) == TM_ERR_INVALID);
    r.value = tm_text("caf\xc3\xa9 \xe2\x9c\x93");
    CHECK(tm_client_add(&C, &r, NULL) == TM_OK);
    for (i = 0; i <= TM_MAX_MAP_ENTRIES; i++) {
        many[i].key = "k";
        many[i].value = "v";
    }
    r.value = tm_uint(1);
    r.tags = many;
    r.tag_count = TM_MAX_MAP_ENTRIES + 1;
    CHECK(tm_client_add(&C, &r, NULL) == TM_ERR_INVALID);
    r.tags = NULL;
    r.tag_count = 0;
    inner[0].key = "x";
    inner[0].value = tm_float(1.0);
    outer[0].key = "nested";
    outer[0].value = tm_map(inner, 1);
    r.value = tm_map(outer, 1);
    CHECK(tm_client_add(&C, &r, NULL) == TM_ERR_INVALID);
    r.sensor = NULL;
    r.value = tm_uint(1);
    CHECK(tm_client_add(&C, &r, NULL) == TM_ERR_INVALID);
    CHECK(tm_client_pending(&C) == 2);
    CHECK(C.stats.readings_queued == 2);
}

static void test_init_checks(void)
{
    tm_config cfg = base_config();
    tm_transport t = fake_transport();
    current = "init";
    CHECK(tm_client_init(&C, &cfg, &t, BUF, 100) == TM_ERR_CONFIG);
    cfg.token = NULL;
    CHECK(tm_client_init(&C, &cfg, &t, BUF, sizeof BUF) == TM_ERR_CONFIG);
    cfg = base_config();
    cfg.stream = "has space";
    CHECK(tm_client_init(&C, &cfg, &t, BUF, sizeof BUF) == TM_ERR_CONFIG);
    cfg.stream = "dev-1:boot.7";
    CHECK(tm_client_init(&C, &cfg, &t, BUF, sizeof BUF) == TM_OK);
    CHECK(strcmp(tm_client_stream(&C), "dev-1:boot.7") == 0);
}

int main(int argc, char **argv)
{
    logging = argc > 1 && strcmp(argv[1], "-v") == 0;
    test_worked_example();
    test_retry_resends_same_bytes();
    test_collector_bytes_one_at_a_time();
    test_bad_frame_budget();
    test_reconnect_resends_unacked_batch();
    test_resume_after_lost_ack();
    test_error_naming_seq_drops_batch();
    test_v10_error_without_seq_drops_batch();
    test_auth_failed_is_returned();
    test_ping_answered_with_pong();
    test_heartbeat_and_dead_link();
    test_queue_full_and_ring_wrap();
    test_welcome_limits_split_batches();
    test_resend_under_smaller_limits_keeps_seq();
    test_frame_too_large_for_receive_buffer();
    test_bye_reconnects();
    test_readings_the_wire_cannot_carry();
    test_init_checks();
    if (failures) {
        fprintf(stderr, "%d of %d checks failed\n", failures, checks);
        return 1;
    }
    printf("unit tests: %d checks passed\n", checks);
    return 0;
}
