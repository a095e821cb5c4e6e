/*
 * client.c - the agent side of a session (docs/protocol.md §9): connect and HELLO, resume
 * after WELCOME, one BATCH in flight, ACK / RETRY / ERROR handling, heartbeats, reconnect
 * with jittered exponential backoff. All I/O goes through the tm_transport; all memory is
 * the caller's buffer. The queue is a byte ring of encoded readings, back to back; a
 * batch is the first N of them, framed at send time, so its bytes never move.
 */
#include "telemetry.h"
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum { LINK_DOWN = 0, LINK_AWAIT_WELCOME = 1, LINK_READY = 2 };
enum { RUN_POLL, RUN_FLUSH };

/* Room for control frames we send besides HELLO: PING/PONG, BYE, ERROR with a short text. */
#define CTL_MIN_BYTES 192u
#define RING_MIN_BYTES 64u
/* The agent gives up on a silent link after 2 heartbeat periods + 1 s (it pings every
 * period), and on a missing ACK after 3 periods + 1 s, like the reference agent. */
#define DEAD_LINK_EXTRA_MS 1000u
#define HEARTBEAT_FLOOR_MS 50u
/* A RETRY asking for longer than this is capped (the batch is retried anyway). */
#define RETRY_MAX_MS 60000u

const char *tm_strerror(int code)
{
    switch (code) {
    case TM_OK: return "ok";
    case TM_ERR_TIMEOUT: return "timed out";
    case TM_ERR_QUEUE_FULL: return "queue full";
    case TM_ERR_INVALID: return "reading cannot be encoded (string too long or not UTF-8, too many fields)";
    case TM_ERR_NOSPACE: return "buffer too small";
    case TM_ERR_AUTH: return "auth_failed: the collector refused the device id or token";
    case TM_ERR_VERSION: return "unsupported_version: the collector does not speak protocol v1";
    case TM_ERR_REFUSED: return "the collector refused the HELLO";
    case TM_ERR_CONFIG: return "bad configuration or buffer too small";
    case TM_ERR_IO: return "transport error";
    case TM_ERR_CLOSED: return "connection closed by the peer";
    case TM_ERR_MALFORMED: return "malformed_frame";
    case TM_ERR_BAD_MESSAGE: return "bad_message";
    case TM_ERR_FRAME_TOO_LARGE: return "frame_too_large: a collector frame exceeds rx_frame_bytes";
    default: return "unknown error";
    }
}

void tm_config_defaults(tm_config *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->max_batch_readings = 100;
    cfg->max_frame_bytes = 65536;
    cfg->rx_frame_bytes = 16384;
    cfg->connect_timeout_ms = 5000;
    cfg->backoff_initial_ms = 500;
    cfg->backoff_max_ms = 30000;
}

static void logf_(tm_client *c, const char *fmt, ...)
{
    va_list ap;
    if (!c->cfg.cb.on_log)
        return;
    va_start(ap, fmt);
    vsnprintf(c->logbuf, sizeof c->logbuf, fmt, ap);
    va_end(ap);
    c->cfg.cb.on_log(c->cfg.user, c->logbuf);
}

static size_t min_sz(size_t a, size_t b) { return a < b ? a : b; }
static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

static int stream_ok(const char *s)
{
    size_t n = strlen(s), i;
    if (n < 1 || n > TM_MAX_STREAM_CHARS)
        return 0;
    for (i = 0; i < n; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '_' || ch == '.' || ch == ':' || ch == '-'))
            return 0;
    }
    return 1;
}

int tm_client_init(tm_client *c, const tm_config *cfg, const tm_transport *t, uint8_t *buf,
                   size_t len)
{
    size_t hello_bytes, rx;
    uint8_t rnd[16];
    memset(c, 0, sizeof *c);
    if (!cfg || !t || !buf || !cfg->address || !cfg->device_id || !cfg->token || !t->connect ||
        !t->send || !t->recv || !t->close || !t->now_ms || !t->sleep_ms || !t->random)
        return TM_ERR_CONFIG;
    c->cfg = *cfg;
    c->t = *t;
    if (!c->cfg.agent)
        c->cfg.agent = TM_CLIENT_NAME;
    if (!c->cfg.agent_version)
        c->cfg.agent_version = TM_CLIENT_VERSION;
    if (c->cfg.max_batch_readings == 0 || c->cfg.max_batch_readings > TM_MAX_BATCH_READINGS)
        c->cfg.max_batch_readings = TM_MAX_BATCH_READINGS;
    if (c->cfg.max_frame_bytes == 0 || c->cfg.max_frame_bytes > TM_MAX_FRAME_BYTES)
        c->cfg.max_frame_bytes = TM_MAX_FRAME_BYTES;
    if (c->cfg.backoff_initial_ms == 0)
        c->cfg.backoff_initial_ms = 1;
    if (c->cfg.backoff_max_ms < c->cfg.backoff_initial_ms)
        c->cfg.backoff_max_ms = c->cfg.backoff_initial_ms;
    rx = c->cfg.rx_frame_bytes ? c->cfg.rx_frame_bytes : 16384;
    if (rx < 64)
        return TM_ERR_CONFIG;

    if (cfg->stream) {
        if (!stream_ok(cfg->stream))
            return TM_ERR_CONFIG;
        memcpy(c->stream, cfg->stream, strlen(cfg->stream) + 1);
    } else {
        static const char hex[] = "0123456789abcdef";
        size_t i;
        if (t->random(t->ctx, rnd, sizeof rnd) != TM_OK)
            return TM_ERR_IO;
        for (i = 0; i < sizeof rnd; i++) {
            c->stream[2 * i] = hex[rnd[i] >> 4];
            c->stream[2 * i + 1] = hex[rnd[i] & 15];
        }
        c->stream[2 * sizeof rnd] = '\0';
        c->rng = (uint32_t)rnd[0] | (uint32_t)rnd[1] << 8 | (uint32_t)rnd[2] << 16 |
                 (uint32_t)rnd[3] << 24;
    }
    c->rng |= 1u;
    c->cfg.stream = c->stream;

    /* HELLO: 4 header + array/type/version + 5 str headers (<= 3 bytes) + dropped (<= 9) */
    hello_bytes = 4 + 3 + 5 * 3 + 9 + strlen(c->cfg.device_id) + strlen(c->cfg.token) +
                  strlen(c->cfg.agent) + strlen(c->cfg.agent_version) + strlen(c->stream);
    c->ctl_cap = hello_bytes > CTL_MIN_BYTES ? hello_bytes : CTL_MIN_BYTES;
    if (len < c->ctl_cap + rx + RING_MIN_BYTES)
        return TM_ERR_CONFIG;
    c->ctl = buf;
    tm_frame_init(&c->fr, buf + c->ctl_cap, rx);
    c->ring = buf + c->ctl_cap + rx;
    c->ring_cap = len - c->ctl_cap - rx;
    c->first_id = 1;
    c->next_seq = 1;
    c->link = LINK_DOWN;
    c->next_attempt_ms = 0;
    return TM_OK;
}

/* ------------------------------------------------------------------ the queue (ring) */

static uint8_t rb(const tm_client *c, size_t off)
{
    size_t p = c->ring_head + off;
    if (p >= c->ring_cap)
        p -= c->ring_cap;
    return c->ring[p];
}

static uint32_t rb_be(const tm_client *c, size_t off, unsigned n)
{
    uint32_t v = 0;
    unsigned i;
    for (i = 0; i < n; i++)
        v = (v << 8) | rb(c, off + i);
    return v;
}

/* Length of the queued reading at ring offset `off` (relative to the head): walks the
 * msgpack forms tm_encode_reading writes. */
static size_t reading_len(const tm_client *c, size_t off)
{
    size_t start = off;
    uint64_t left = 1;
    while (left > 0) {
        uint8_t b = rb(c, off++);
        left--;
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3)
            continue;
        if (b <= 0x8f) {
            left += 2u * (b & 0x0fu);
            continue;
        }
        if (b <= 0x9f) {
            left += b & 0x0fu;
            continue;
        }
        if (b <= 0xbf) {
            off += b & 0x1fu;
            continue;
        }
        switch (b) {
        case 0xcc: case 0xd0: off += 1; break;
        case 0xcd: case 0xd1: off += 2; break;
        case 0xce: case 0xd2: off += 4; break;
        case 0xcb: case 0xcf: case 0xd3: off += 8; break;
        case 0xd9: off += 1 + (size_t)rb(c, off); break;
        case 0xda: off += 2 + (size_t)rb_be(c, off, 2); break;
        case 0xdc: left += rb_be(c, off, 2); off += 2; break;
        case 0xde: left += 2u * rb_be(c, off, 2); off += 2; break;
        default: break; /* never written by the encoder */
        }
    }
    return off - start;
}

static void ring_pop(tm_client *c, uint32_t count)
{
    size_t off = 0;
    uint32_t i;
    for (i = 0; i < count && i < c->ring_count; i++)
        off += reading_len(c, off);
    c->ring_head += off;
    if (c->ring_head >= c->ring_cap)
        c->ring_head -= c->ring_cap;
    c->ring_used -= off;
    c->ring_count -= i;
    c->first_id += i;
    if (c->ring_count == 0) {
        c->ring_head = 0;
        c->ring_used = 0;
    }
}

int tm_client_add(tm_client *c, const tm_reading *r, uint64_t *id)
{
    tm_writer w;
    int rc;
    w.buf = c->ring;
    w.cap = c->ring_cap;
    w.start = c->ring_head + c->ring_used;
    if (w.start >= c->ring_cap)
        w.start -= c->ring_cap;
    w.len = 0;
    w.limit = c->ring_cap - c->ring_used;
    w.overflow = 0;
    rc = tm_encode_reading(&w, r);
    if (rc == TM_ERR_NOSPACE || w.overflow)
        return TM_ERR_QUEUE_FULL;
    if (rc != TM_OK)
        return rc;
    c->ring_used += w.len;
    c->ring_count++;
    c->stats.readings_queued++;
    if (id)
        *id = c->first_id + c->ring_count - 1;
    return TM_OK;
}

void tm_client_count_dropped(tm_client *c, uint64_t n)
{
    c->dropped_unreported += n;
    c->stats.readings_dropped += n;
}

/* ------------------------------------------------------------------ link */

static uint32_t next_rand(tm_client *c)
{
    /* xorshift32 seeded from transport->random: jitter only */
    uint32_t x = c->rng;
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    c->rng = x;
    return x;
}

static uint32_t backoff_ms(tm_client *c)
{
    uint64_t base = c->cfg.backoff_initial_ms;
    uint32_t shift = c->attempt < 30 ? c->attempt : 30;
    base <<= shift;
    if (base > c->cfg.backoff_max_ms)
        base = c->cfg.backoff_max_ms;
    return (uint32_t)(base / 2 + next_rand(c) % (base / 2 + 1));
}

static void link_down(tm_client *c, const char *why)
{
    uint32_t delay;
    uint64_t now = c->t.now_ms(c->t.ctx);
    c->t.close(c->t.ctx);
    if (c->link == LINK_READY)
        c->stats.disconnects++;
    else
        c->stats.connect_failures++;
    c->link = LINK_DOWN;
    tm_frame_reset(&c->fr);
    c->retry_wait = 0;
    if (c->inflight)
        c->resend = 1;
    delay = backoff_ms(c);
    if (c->attempt < 1000)
        c->attempt++;
    c->next_attempt_ms = now + delay;
    logf_(c, "link down: %s; reconnecting in %lu ms", why, (unsigned long)delay);
}

static int send_ctl(tm_client *c, size_t n)
{
    int rc = c->t.send(c->t.ctx, c->ctl, n, 2 * c->heartbeat_ms + DEAD_LINK_EXTRA_MS);
    if (rc != TM_OK)
        link_down(c, "send failed");
    return rc;
}

static int send_error(tm_client *c, const char *code, const char *detail, int fatal)
{
    tm_writer w;
    tm_writer_init(&w, c->ctl, c->ctl_cap);
    if (tm_encode_error(&w, code, detail, fatal) != TM_OK)
        return TM_ERR_NOSPACE;
    return send_ctl(c, w.len);
}

static void connect_(tm_client *c)
{
    tm_writer w;
    tm_hello h;
    int rc;
    c->heartbeat_ms = TM_HEARTBEAT_MS;
    rc = c->t.connect(c->t.ctx, c->cfg.address, c->cfg.connect_timeout_ms);
    if (rc != TM_OK) {
        c->link = LINK_AWAIT_WELCOME; /* so link_down counts a failed attempt */
        link_down(c, rc == TM_ERR_TIMEOUT ? "connect timed out" : "connect failed");
        return;
    }
    tm_conn_init(&c->conn, TM_ROLE_AGENT, TM_STATE_AWAIT_HELLO);
    tm_frame_reset(&c->fr);
    h.device_id = c->cfg.device_id;
    h.token = c->cfg.token;
    h.agent = c->cfg.agent;
    h.agent_version = c->cfg.agent_version;
    h.dropped = c->dropped_unreported;
    h.stream = c->stream;
    tm_writer_init(&w, c->ctl, c->ctl_cap);
    if (tm_encode_hello(&w, &h) != TM_OK) {
        c->link = LINK_AWAIT_WELCOME;
        c->pending_rc = TM_ERR_CONFIG;
        link_down(c, "HELLO cannot be encoded (device id or token not UTF-8 or too long)");
        return;
    }
    c->link = LINK_AWAIT_WELCOME;
    if (send_ctl(c, w.len) != TM_OK)
        return;
    tm_conn_sent(&c->conn, TM_MSG_HELLO, 0);
    c->dropped_in_hello = h.dropped;
    c->hello_ms = c->last_rx_ms = c->t.now_ms(c->t.ctx);
}

/* Sends the in-flight batch (a new one when none is in flight): the first readings of the
 * queue that fit the batch and frame limits, framed by a header written in front. */
static void send_batch(tm_client *c)
{
    uint8_t hdr[TM_BATCH_HEADER_MAX];
    size_t off = 0, hlen, first, pos;
    uint32_t n = 0, limit;
    int rc;
    limit = c->inflight ? c->inflight_count : c->ring_count;
    if (limit > c->max_batch)
        limit = c->max_batch;
    while (n < limit) {
        size_t len = reading_len(c, off);
        if (TM_BATCH_HEADER_MAX + off + len > c->max_frame)
            break;
        off += len;
        n++;
    }
    if (n == 0) {
        /* the oldest reading alone exceeds the collector's frame limit: it can never be
         * sent, so it is dropped and counted */
        tm_str code = {"frame_too_large", 15};
        uint64_t id = c->first_id;
        ring_pop(c, 1);
        c->inflight = 0;
        c->resend = 0;
        tm_client_count_dropped(c, 1);
        c->progress = 1;
        logf_(c, "dropped reading %llu: larger than the frame limit of %lu bytes",
              (unsigned long long)id, (unsigned long)c->max_frame);
        if (c->cfg.cb.on_drop)
            c->cfg.cb.on_drop(c->cfg.user, id, 1, code);
        return;
    }
    if (!c->inflight) {
        c->inflight = 1;
        c->inflight_seq = c->next_seq++;
    } else if (c->resend) {
        c->stats.resends++;
    }
    /* a resend under smaller limits keeps the seq: seq <= last_seq means "all of it
     * committed", and the readings cut off go in the next batch */
    c->inflight_count = n;
    c->resend = 0;
    hlen = tm_batch_header(hdr, c->inflight_seq, n, off);
    rc = c->t.send(c->t.ctx, hdr, hlen, 2 * c->heartbeat_ms + DEAD_LINK_EXTRA_MS);
    /* the readings: one span, or two when they wrap around the end of the ring */
    pos = c->ring_head;
    first = min_sz(off, c->ring_cap - pos);
    if (rc == TM_OK)
        rc = c->t.send(c->t.ctx, c->ring + pos, first, 2 * c->heartbeat_ms + DEAD_LINK_EXTRA_MS);
    if (rc == TM_OK && off > first)
        rc = c->t.send(c->t.ctx, c->ring, off - first, 2 * c->heartbeat_ms + DEAD_LINK_EXTRA_MS);
    if (rc != TM_OK) {
        link_down(c, "send failed");
        return;
    }
    c->stats.batches_sent++;
    c->batch_sent_ms = c->t.now_ms(c->t.ctx);
}

static void drop_inflight(tm_client *c, tm_str code)
{
    uint64_t first = c->first_id;
    uint32_t n = c->inflight_count;
    ring_pop(c, n);
    c->inflight = 0;
    c->resend = 0;
    c->retry_wait = 0;
    tm_client_count_dropped(c, n);
    c->progress = 1;
    logf_(c, "collector refused batch seq=%llu (%.*s): %lu readings dropped",
          (unsigned long long)c->inflight_seq, (int)code.len, code.ptr, (unsigned long)n);
    if (c->cfg.cb.on_drop)
        c->cfg.cb.on_drop(c->cfg.user, first, n, code);
}

static int str_is(tm_str s, const char *lit)
{
    return s.len == strlen(lit) && memcmp(s.ptr, lit, s.len) == 0;
}

static void on_welcome(tm_client *c, const tm_msg *m)
{
    uint64_t hb = m->u.welcome.heartbeat_ms;
    if (c->cfg.heartbeat_ms && c->cfg.heartbeat_ms < hb)
        hb = c->cfg.heartbeat_ms;
    if (hb < HEARTBEAT_FLOOR_MS)
        hb = HEARTBEAT_FLOOR_MS;
    c->heartbeat_ms = (uint32_t)min_u64(hb, 3600000u);
    c->max_batch = (uint32_t)min_u64(c->cfg.max_batch_readings, m->u.welcome.max_batch_readings);
    c->max_frame = (uint32_t)min_u64(c->cfg.max_frame_bytes, m->u.welcome.max_frame_bytes);
    if (c->max_batch == 0)
        c->max_batch = 1;
    c->minor = m->u.welcome.minor;
    /* Resume (§9): a new batch continues after what the collector committed for this
     * stream (a v1.0 collector keeps one sequence per device). A batch already in flight
     * keeps its seq and is resent: if it was committed, the ACK says duplicate. */
    if (m->u.welcome.last_seq >= c->next_seq)
        c->next_seq = m->u.welcome.last_seq + 1;
    c->dropped_unreported -= min_u64(c->dropped_unreported, c->dropped_in_hello);
    c->dropped_in_hello = 0;
    c->attempt = 0;
    c->link = LINK_READY;
    c->stats.connects++;
    c->last_ping_ms = c->t.now_ms(c->t.ctx);
    logf_(c, "connected: last_seq=%llu minor=%llu heartbeat_ms=%lu stream=%s",
          (unsigned long long)m->u.welcome.last_seq, (unsigned long long)c->minor,
          (unsigned long)c->heartbeat_ms, c->stream);
}

static void on_ack(tm_client *c, const tm_msg *m)
{
    tm_ack_info info;
    tm_reject_iter it;
    tm_reject r;
    if (!c->inflight || c->retry_wait || m->u.ack.seq != c->inflight_seq) {
        logf_(c, "ignoring ACK for seq=%llu (in flight: %llu)", (unsigned long long)m->u.ack.seq,
              (unsigned long long)(c->inflight ? c->inflight_seq : 0));
        return;
    }
    info.seq = m->u.ack.seq;
    info.first_id = c->first_id;
    info.count = c->inflight_count;
    info.accepted = m->u.ack.accepted;
    info.duplicate = m->u.ack.duplicate;
    info.rejected = m->u.ack.reject_count;
    tm_rejects_begin(&it, m);
    while (tm_rejects_next(&it, &r)) {
        tm_reject_info ri;
        ri.reading_id = c->first_id + r.index;
        ri.seq = info.seq;
        ri.index = r.index;
        ri.code = r.code;
        ri.path = r.path;
        ri.message = r.message;
        if (c->cfg.cb.on_reject)
            c->cfg.cb.on_reject(c->cfg.user, &ri);
    }
    c->stats.readings_accepted += info.accepted;
    c->stats.readings_duplicate += info.duplicate;
    c->stats.readings_rejected += info.rejected;
    c->stats.batches_acked++;
    ring_pop(c, c->inflight_count);
    c->inflight = 0;
    c->progress = 1;
    if (c->cfg.cb.on_ack)
        c->cfg.cb.on_ack(c->cfg.user, &info);
}

static void on_error(tm_client *c, const tm_msg *m)
{
    tm_str code = m->u.error.code;
    if (m->u.error.fatal) {
        if (str_is(code, "auth_failed")) {
            c->stats.auth_failures++;
            c->pending_rc = TM_ERR_AUTH;
            c->attempt = 1000; /* straight to the longest backoff: retrying fast will not help */
        } else if (str_is(code, "unsupported_version")) {
            c->pending_rc = TM_ERR_VERSION;
            c->attempt = 1000;
        } else if (c->link == LINK_AWAIT_WELCOME && str_is(code, "bad_message")) {
            c->pending_rc = TM_ERR_REFUSED;
            c->attempt = 1000;
        }
        logf_(c, "collector error %.*s (fatal): %.*s", (int)code.len, code.ptr,
              (int)m->u.error.message.len, m->u.error.message.ptr);
        link_down(c, "fatal error from the collector");
        return;
    }
    /* A non-fatal ERROR naming the in-flight batch (v1.1), or, from a v1.0 collector (no
     * seq in ERROR), a decode error while a batch is in flight (our only frames besides
     * it are PING/PONG): that batch can never be accepted, so it is dropped, not resent. */
    if (c->inflight && !c->retry_wait &&
        (m->u.error.seq == c->inflight_seq ||
         (m->u.error.seq == 0 && c->minor == 0 &&
          (str_is(code, "bad_message") || str_is(code, "malformed_frame"))))) {
        drop_inflight(c, code);
        return;
    }
    logf_(c, "collector error %.*s: %.*s", (int)code.len, code.ptr, (int)m->u.error.message.len,
          m->u.error.message.ptr);
}

static void on_frame(tm_client *c)
{
    tm_msg m;
    tm_wire_error err;
    tm_writer w;
    int was_ready = c->link == LINK_READY;
    int rc = tm_conn_receive(&c->conn, c->fr.buf, c->fr.body_len, &m, &err);
    if (rc != TM_OK) {
        c->stats.bad_frames++;
        logf_(c, "bad frame from the collector: %s (%s)", err.code, err.detail);
        if (send_error(c, err.code, err.detail, err.fatal) == TM_OK && err.fatal)
            link_down(c, "protocol error");
        return;
    }
    switch (m.type) {
    case TM_MSG_WELCOME:
        on_welcome(c, &m);
        break;
    case TM_MSG_ACK:
        on_ack(c, &m);
        break;
    case TM_MSG_RETRY:
        if (c->inflight && !c->retry_wait && m.u.retry.seq == c->inflight_seq) {
            c->stats.retries++;
            c->retry_wait = 1;
            c->retry_at_ms = c->t.now_ms(c->t.ctx) + min_u64(m.u.retry.retry_after_ms, RETRY_MAX_MS);
        }
        break;
    case TM_MSG_PING:
        tm_writer_init(&w, c->ctl, c->ctl_cap);
        if (tm_encode_pong(&w, m.u.ping.nonce) == TM_OK)
            (void)send_ctl(c, w.len);
        break;
    case TM_MSG_PONG:
        break;
    case TM_MSG_ERROR:
        on_error(c, &m);
        break;
    case TM_MSG_BYE:
        logf_(c, "collector said goodbye: %.*s", (int)m.u.bye.reason.len, m.u.bye.reason.ptr);
        link_down(c, "BYE");
        break;
    default:
        break;
    }
    (void)was_ready;
}

/* One receive call of at most wait_ms; handles a frame when one completes. */
static void receive(tm_client *c, uint32_t wait_ms)
{
    uint8_t *dst;
    size_t n;
    long got;
    int rc;
    tm_frame_want(&c->fr, &dst, &n);
    got = c->t.recv(c->t.ctx, dst, n, wait_ms);
    if (got == TM_ERR_TIMEOUT)
        return;
    if (got < 0) {
        link_down(c, "receive failed");
        return;
    }
    if (got == 0) {
        link_down(c, tm_frame_partial(&c->fr) ? "connection closed inside a frame (truncated_frame)"
                                              : "connection closed by the collector");
        return;
    }
    c->last_rx_ms = c->t.now_ms(c->t.ctx);
    rc = tm_frame_got(&c->fr, (size_t)got);
    if (rc == TM_FRAME_READY) {
        on_frame(c);
    } else if (rc == TM_ERR_FRAME_TOO_LARGE) {
        c->stats.bad_frames++;
        c->pending_rc = TM_ERR_FRAME_TOO_LARGE;
        (void)send_error(c, "frame_too_large", "frame exceeds the receive buffer", 1);
        if (c->link != LINK_DOWN)
            link_down(c, "frame from the collector exceeds rx_frame_bytes");
    }
}

static int run(tm_client *c, uint64_t deadline, int mode)
{
    c->progress = 0;
    for (;;) {
        uint64_t now = c->t.now_ms(c->t.ctx), until = deadline;
        if (c->pending_rc != TM_OK) {
            int rc = c->pending_rc;
            c->pending_rc = TM_OK;
            return rc;
        }
        if (mode == RUN_FLUSH && c->ring_count == 0)
            return TM_OK;
        if (mode == RUN_POLL && c->progress)
            return TM_OK;
        if (now >= deadline)
            return mode == RUN_FLUSH ? TM_ERR_TIMEOUT : TM_OK;
        if (c->link == LINK_DOWN) {
            if (now < c->next_attempt_ms) {
                c->t.sleep_ms(c->t.ctx, (uint32_t)(min_u64(deadline, c->next_attempt_ms) - now));
                continue;
            }
            connect_(c);
            continue;
        }
        if (c->link == LINK_AWAIT_WELCOME) {
            if (now >= c->hello_ms + TM_HANDSHAKE_TIMEOUT_MS) {
                link_down(c, "no WELCOME in time");
                continue;
            }
            until = min_u64(until, c->hello_ms + TM_HANDSHAKE_TIMEOUT_MS);
        } else {
            uint64_t hb = c->heartbeat_ms;
            if (now >= c->last_rx_ms + 2 * hb + DEAD_LINK_EXTRA_MS) {
                link_down(c, "no data from the collector (dead link)");
                continue;
            }
            until = min_u64(until, c->last_rx_ms + 2 * hb + DEAD_LINK_EXTRA_MS);
            if (c->retry_wait && now >= c->retry_at_ms) {
                c->retry_wait = 0;
                c->resend = 1;
            }
            if (!c->retry_wait && (c->resend || (!c->inflight && c->ring_count > 0))) {
                send_batch(c);
                continue;
            }
            if (c->retry_wait)
                until = min_u64(until, c->retry_at_ms);
            if (c->inflight && !c->retry_wait) {
                uint64_t ack_deadline = c->batch_sent_ms + 3 * hb + DEAD_LINK_EXTRA_MS;
                if (now >= ack_deadline) {
                    link_down(c, "no ACK in time");
                    continue;
                }
                until = min_u64(until, ack_deadline);
            }
            if (now >= c->last_ping_ms + hb) {
                tm_writer w;
                tm_writer_init(&w, c->ctl, c->ctl_cap);
                c->last_ping_ms = now;
                if (tm_encode_ping(&w, ++c->ping_nonce) == TM_OK && send_ctl(c, w.len) == TM_OK)
                    c->stats.pings_sent++;
                continue;
            }
            until = min_u64(until, c->last_ping_ms + hb);
        }
        receive(c, (uint32_t)min_u64(until > now ? until - now : 0, 0x7fffffffu));
    }
}

int tm_client_poll(tm_client *c, uint32_t timeout_ms)
{
    return run(c, c->t.now_ms(c->t.ctx) + timeout_ms, RUN_POLL);
}

int tm_client_flush(tm_client *c, uint32_t timeout_ms)
{
    return run(c, c->t.now_ms(c->t.ctx) + timeout_ms, RUN_FLUSH);
}

void tm_client_close(tm_client *c)
{
    if (c->link != LINK_DOWN) {
        tm_writer w;
        tm_writer_init(&w, c->ctl, c->ctl_cap);
        if (c->link == LINK_READY && tm_encode_bye(&w, "closing") == TM_OK)
            (void)c->t.send(c->t.ctx, c->ctl, w.len, 1000);
        c->t.close(c->t.ctx);
        if (c->link == LINK_READY)
            c->stats.disconnects++;
        c->link = LINK_DOWN;
        tm_frame_reset(&c->fr);
        if (c->inflight)
            c->resend = 1;
        c->retry_wait = 0;
    }
}

const tm_stats *tm_client_stats(const tm_client *c) { return &c->stats; }
size_t tm_client_pending(const tm_client *c) { return c->ring_count; }
const char *tm_client_stream(const tm_client *c) { return c->stream; }
int tm_client_connected(const tm_client *c) { return c->link == LINK_READY; }
