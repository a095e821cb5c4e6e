/*
 * transport_posix.c - the tm_transport for POSIX: a non-blocking TCP socket driven with
 * poll(2), so every call honours its timeout. TCP_NODELAY is set because a BATCH is
 * written as a header and one or two spans of the queue. SIGPIPE is suppressed per send.
 */
#define _POSIX_C_SOURCE 200809L

#include "telemetry_posix.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#ifndef MSG_NOSIGNAL
#define MSG_NOSIGNAL 0
#endif

static uint64_t px_now_ms(void *ctx)
{
    struct timespec ts;
    (void)ctx;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void px_sleep_ms(void *ctx, uint32_t ms)
{
    struct timespec ts;
    (void)ctx;
    ts.tv_sec = (time_t)(ms / 1000u);
    ts.tv_nsec = (long)(ms % 1000u) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static int px_random(void *ctx, uint8_t *buf, size_t n)
{
    size_t got = 0;
    int fd;
    (void)ctx;
    fd = open("/dev/urandom", O_RDONLY);
    if (fd < 0)
        return TM_ERR_IO;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r <= 0) {
            if (r < 0 && errno == EINTR)
                continue;
            close(fd);
            return TM_ERR_IO;
        }
        got += (size_t)r;
    }
    close(fd);
    return TM_OK;
}

/* Waits for `events` on fd until the deadline: 1 ready, 0 timed out, -1 error. */
static int wait_fd(int fd, short events, uint64_t deadline)
{
    for (;;) {
        struct pollfd p;
        uint64_t now = px_now_ms(NULL);
        int r;
        p.fd = fd;
        p.events = events;
        p.revents = 0;
        r = poll(&p, 1, now >= deadline ? 0 : (int)(deadline - now > 0x7fffffff ? 0x7fffffff : deadline - now));
        if (r > 0)
            return 1;
        if (r == 0)
            return 0;
        if (errno != EINTR)
            return -1;
    }
}

static void px_close(void *ctx)
{
    tm_posix *px = (tm_posix *)ctx;
    if (px->fd >= 0) {
        close(px->fd);
        px->fd = -1;
    }
}

static int px_connect(void *ctx, const char *address, uint32_t timeout_ms)
{
    tm_posix *px = (tm_posix *)ctx;
    char host[256];
    const char *colon, *port, *h = address;
    size_t hlen;
    struct addrinfo hints, *res = NULL, *ai;
    int rc = TM_ERR_IO;
    uint64_t deadline = px_now_ms(NULL) + timeout_ms;

    px_close(px);
    if (address[0] == '[') {
        const char *close_br = strchr(address, ']');
        if (!close_br || close_br[1] != ':')
            return TM_ERR_IO;
        h = address + 1;
        hlen = (size_t)(close_br - h);
        port = close_br + 2;
    } else {
        colon = strrchr(address, ':');
        if (!colon)
            return TM_ERR_IO;
        hlen = (size_t)(colon - address);
        port = colon + 1;
    }
    if (hlen == 0 || hlen >= sizeof host || !*port)
        return TM_ERR_IO;
    memcpy(host, h, hlen);
    host[hlen] = '\0';

    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &res) != 0)
        return TM_ERR_IO;
    for (ai = res; ai; ai = ai->ai_next) {
        int fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol), one = 1, r;
        if (fd < 0)
            continue;
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
#ifdef SO_NOSIGPIPE
        setsockopt(fd, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof one);
#endif
        r = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (r != 0 && errno == EINPROGRESS) {
            int w = wait_fd(fd, POLLOUT, deadline), soerr = 0;
            socklen_t sl = sizeof soerr;
            if (w == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0)
                r = 0;
            else if (w == 0)
                rc = TM_ERR_TIMEOUT;
        }
        if (r == 0) {
            px->fd = fd;
            rc = TM_OK;
            break;
        }
        close(fd);
    }
    freeaddrinfo(res);
    return rc;
}

static int px_send(void *ctx, const uint8_t *buf, size_t n, uint32_t timeout_ms)
{
    tm_posix *px = (tm_posix *)ctx;
    uint64_t deadline = px_now_ms(NULL) + timeout_ms;
    size_t off = 0;
    if (px->fd < 0)
        return TM_ERR_IO;
    while (off < n) {
        ssize_t r = send(px->fd, buf + off, n - off, MSG_NOSIGNAL);
        if (r > 0) {
            off += (size_t)r;
            continue;
        }
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int w = wait_fd(px->fd, POLLOUT, deadline);
            if (w == 0)
                return TM_ERR_TIMEOUT;
            if (w < 0)
                return TM_ERR_IO;
            continue;
        }
        return TM_ERR_IO;
    }
    return TM_OK;
}

static long px_recv(void *ctx, uint8_t *buf, size_t n, uint32_t timeout_ms)
{
    tm_posix *px = (tm_posix *)ctx;
    uint64_t deadline = px_now_ms(NULL) + timeout_ms;
    if (px->fd < 0)
        return TM_ERR_IO;
    for (;;) {
        ssize_t r = recv(px->fd, buf, n, 0);
        if (r >= 0)
            return (long)r;
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) {
            int w = wait_fd(px->fd, POLLIN, deadline);
            if (w == 0)
                return TM_ERR_TIMEOUT;
            if (w < 0)
                return TM_ERR_IO;
            continue;
        }
        return TM_ERR_IO;
    }
}

void tm_posix_transport(tm_transport *t, tm_posix *ctx)
{
    ctx->fd = -1;
    t->ctx = ctx;
    t->connect = px_connect;
    t->send = px_send;
    t->recv = px_recv;
    t->close = px_close;
    t->now_ms = px_now_ms;
    t->sleep_ms = px_sleep_ms;
    t->random = px_random;
}
