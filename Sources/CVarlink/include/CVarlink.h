// CVarlink: recvmsg(2) with SCM_RIGHTS for the varlink server. The CMSG_* macros never import
// into Swift; this is the one place that lays out a control message.
#pragma once

#include <stddef.h>
#include <string.h>
#include <errno.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>

/// recvmsg(fd, MSG_DONTWAIT | MSG_CMSG_CLOEXEC) into `buffer`, taking up to `max_fds` file
/// descriptors passed with SCM_RIGHTS into `fds` (their count in `*nfds`). Descriptors beyond
/// `max_fds`, or in a truncated control message, are closed here and `*truncated` is set, so
/// none leaks. Returns recvmsg's result with errno intact.
static inline ssize_t cvarlink_receive(int fd, void *buffer, size_t length, int *fds, int max_fds,
                                       int *nfds, int *truncated) {
    union {
        struct cmsghdr header;
        unsigned char bytes[CMSG_SPACE(sizeof(int) * 16)];
    } control;
    struct iovec iov = { .iov_base = buffer, .iov_len = length };
    struct msghdr message;
    memset(&message, 0, sizeof(message));
    memset(&control, 0, sizeof(control));
    message.msg_iov = &iov;
    message.msg_iovlen = 1;
    message.msg_control = control.bytes;
    message.msg_controllen = sizeof(control.bytes);
    *nfds = 0;
    *truncated = 0;
    ssize_t n = recvmsg(fd, &message, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
    if (n < 0) return n;
    if (message.msg_flags & MSG_CTRUNC) *truncated = 1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&message); c != NULL; c = CMSG_NXTHDR(&message, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
        int *passed = (int *)CMSG_DATA(c);
        for (size_t i = 0; i < count; i++) {
            int received;
            memcpy(&received, passed + i, sizeof(int));
            if (*nfds < max_fds) {
                fds[(*nfds)++] = received;
            } else {
                close(received);
                *truncated = 1;
            }
        }
    }
    return n;
}
