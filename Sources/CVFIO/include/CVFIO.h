// CVFIO: the kernel's own facts about VFIO and eventfd, made visible to Swift.
//
// Function-like macros (_IO, VFIO_DEVICE_FEATURE, ...) never import into Swift, and the
// variadic ioctl(2) does not either. This header re-exports every request number, flag and
// struct the project needs from <linux/vfio.h> and <sys/eventfd.h>, so no number is ever
// copied by hand, plus three non-variadic ioctl entry points, the few epoll calls the
// daemon's wakeup set needs (struct epoll_event is packed on x86-64: it stays on this side),
// and glibc's malloc_trim, which Swift's Glibc module does not import. Nothing else lives here.
#pragma once

#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <sys/ioctl.h>
#include <sys/eventfd.h>
#include <sys/epoll.h>
#include <malloc.h>
#include <unistd.h>
#include <sys/syscall.h>
#include <sys/inotify.h>
#include <linux/vfio.h>

// MARK: - Container and group (the group path, every kernel)
static const unsigned long CVFIO_GET_API_VERSION = VFIO_GET_API_VERSION;
static const unsigned long CVFIO_CHECK_EXTENSION = VFIO_CHECK_EXTENSION;
static const unsigned long CVFIO_SET_IOMMU = VFIO_SET_IOMMU;
static const unsigned long CVFIO_GROUP_GET_STATUS = VFIO_GROUP_GET_STATUS;
static const unsigned long CVFIO_GROUP_SET_CONTAINER = VFIO_GROUP_SET_CONTAINER;
static const unsigned long CVFIO_GROUP_UNSET_CONTAINER = VFIO_GROUP_UNSET_CONTAINER;
static const unsigned long CVFIO_GROUP_GET_DEVICE_FD = VFIO_GROUP_GET_DEVICE_FD;
static const int CVFIO_API_VERSION_VALUE = VFIO_API_VERSION;
static const unsigned long CVFIO_TYPE1v2_IOMMU = VFIO_TYPE1v2_IOMMU;
static const uint32_t CVFIO_GROUP_FLAGS_VIABLE = VFIO_GROUP_FLAGS_VIABLE;
static const uint32_t CVFIO_GROUP_FLAGS_CONTAINER_SET = VFIO_GROUP_FLAGS_CONTAINER_SET;

// MARK: - Device
static const unsigned long CVFIO_DEVICE_GET_INFO = VFIO_DEVICE_GET_INFO;
static const unsigned long CVFIO_DEVICE_GET_REGION_INFO = VFIO_DEVICE_GET_REGION_INFO;
static const unsigned long CVFIO_DEVICE_RESET = VFIO_DEVICE_RESET;
static const uint32_t CVFIO_DEVICE_FLAGS_PCI = VFIO_DEVICE_FLAGS_PCI;
static const uint32_t CVFIO_DEVICE_FLAGS_RESET = VFIO_DEVICE_FLAGS_RESET;
static const uint32_t CVFIO_PCI_CONFIG_REGION_INDEX = VFIO_PCI_CONFIG_REGION_INDEX;
static const uint32_t CVFIO_REGION_INFO_FLAG_READ = VFIO_REGION_INFO_FLAG_READ;
static const uint32_t CVFIO_REGION_INFO_FLAG_WRITE = VFIO_REGION_INFO_FLAG_WRITE;

// MARK: - Device request IRQ (the kernel asks for the device back: unbind, hot-unplug)
static const unsigned long CVFIO_DEVICE_GET_IRQ_INFO = VFIO_DEVICE_GET_IRQ_INFO;
static const unsigned long CVFIO_DEVICE_SET_IRQS = VFIO_DEVICE_SET_IRQS;
static const uint32_t CVFIO_PCI_REQ_IRQ_INDEX = VFIO_PCI_REQ_IRQ_INDEX;
static const uint32_t CVFIO_IRQ_INFO_EVENTFD = VFIO_IRQ_INFO_EVENTFD;

/// VFIO_DEVICE_SET_IRQS with DATA_EVENTFD | ACTION_TRIGGER for one vector of `index`:
/// struct vfio_irq_set followed by one __s32 eventfd (-1 unregisters). Returns ioctl's result.
static inline int cvfio_set_irq_eventfd(int fd, uint32_t index, int32_t eventfd) {
    union {
        struct vfio_irq_set header;
        unsigned char bytes[sizeof(struct vfio_irq_set) + sizeof(int32_t)];
    } buffer;
    memset(&buffer, 0, sizeof(buffer));
    buffer.header.argsz = sizeof(buffer.bytes);
    buffer.header.flags = VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER;
    buffer.header.index = index;
    buffer.header.start = 0;
    buffer.header.count = 1;
    memcpy(buffer.header.data, &eventfd, sizeof(eventfd));
    return ioctl(fd, VFIO_DEVICE_SET_IRQS, &buffer);
}

// MARK: - Device features (Linux >= 5.19; low power >= 6.1)
static const unsigned long CVFIO_DEVICE_FEATURE = VFIO_DEVICE_FEATURE;
static const uint32_t CVFIO_DEVICE_FEATURE_MASK = VFIO_DEVICE_FEATURE_MASK;
static const uint32_t CVFIO_DEVICE_FEATURE_GET = VFIO_DEVICE_FEATURE_GET;
static const uint32_t CVFIO_DEVICE_FEATURE_SET = VFIO_DEVICE_FEATURE_SET;
static const uint32_t CVFIO_DEVICE_FEATURE_PROBE = VFIO_DEVICE_FEATURE_PROBE;
static const uint32_t CVFIO_DEVICE_FEATURE_LOW_POWER_ENTRY = VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY;
static const uint32_t CVFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP = VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY_WITH_WAKEUP;
static const uint32_t CVFIO_DEVICE_FEATURE_LOW_POWER_EXIT = VFIO_DEVICE_FEATURE_LOW_POWER_EXIT;
/// sizeof(struct vfio_device_feature): the header every feature call starts with.
static const uint32_t CVFIO_DEVICE_FEATURE_HEADER_SIZE = sizeof(struct vfio_device_feature);
/// sizeof(struct vfio_device_low_power_entry_with_wakeup): the one-shot entry's payload.
static const uint32_t CVFIO_LOW_POWER_WAKEUP_PAYLOAD_SIZE = sizeof(struct vfio_device_low_power_entry_with_wakeup);

// MARK: - eventfd
static const int CVFIO_EFD_CLOEXEC = EFD_CLOEXEC;
static const int CVFIO_EFD_NONBLOCK = EFD_NONBLOCK;
static const int CVFIO_EFD_SEMAPHORE = EFD_SEMAPHORE;

static inline int cvfio_eventfd(unsigned int initval, int flags) {
    return eventfd(initval, flags);
}

// MARK: - errno names

/// "EINVAL" for EINVAL (glibc's strerrorname_np), or NULL for an unknown number.
const char *cvfio_errno_name(int error);

// MARK: - ioctl entry points Swift can call

/// ioctl(fd, request, arg) for requests that take a pointer.
static inline int cvfio_ioctl_pointer(int fd, unsigned long request, void *arg) {
    return ioctl(fd, request, arg);
}

/// ioctl(fd, request, value) for requests that take an integer by value (VFIO_SET_IOMMU,
/// VFIO_CHECK_EXTENSION) or nothing at all (VFIO_GET_API_VERSION, VFIO_DEVICE_RESET).
static inline int cvfio_ioctl_value(int fd, unsigned long request, unsigned long value) {
    return ioctl(fd, request, value);
}

/// VFIO_DEVICE_FEATURE with the header laid out by the kernel's own struct: `argsz` and
/// `flags` go into struct vfio_device_feature, `payload` (may be NULL) is copied into its
/// data[] member. `argsz` is passed as given, so callers (and the real-kernel tests) can
/// send a short one on purpose. Returns ioctl's result with errno intact; EOVERFLOW if the
/// payload does not fit the local buffer.
static inline int cvfio_device_feature(int fd, uint32_t argsz, uint32_t flags,
                                       const void *payload, size_t payload_len) {
    union {
        struct vfio_device_feature header;
        unsigned char bytes[sizeof(struct vfio_device_feature) + 64];
    } buffer;
    if (payload_len > sizeof(buffer.bytes) - sizeof(struct vfio_device_feature)) {
        errno = EOVERFLOW;
        return -1;
    }
    memset(&buffer, 0, sizeof(buffer));
    buffer.header.argsz = argsz;
    buffer.header.flags = flags;
    if (payload_len > 0 && payload != NULL) {
        memcpy(buffer.header.data, payload, payload_len);
    }
    return ioctl(fd, VFIO_DEVICE_FEATURE, &buffer);
}

/// Fills struct vfio_device_low_power_entry_with_wakeup, so Swift never lays it out itself.
static inline struct vfio_device_low_power_entry_with_wakeup
cvfio_low_power_wakeup_payload(int32_t wakeup_eventfd) {
    struct vfio_device_low_power_entry_with_wakeup payload;
    memset(&payload, 0, sizeof(payload));
    payload.wakeup_eventfd = wakeup_eventfd;
    return payload;
}

// MARK: - epoll (every device's eventfds in one set, watched by one Dispatch source)

/// epoll_create1(EPOLL_CLOEXEC).
static inline int cvfio_epoll_create(void) { return epoll_create1(EPOLL_CLOEXEC); }

/// Watches `fd` for readability, level-triggered, with `token` as the event's data.
static inline int cvfio_epoll_add(int epfd, int fd, uint64_t token) {
    struct epoll_event event;
    memset(&event, 0, sizeof(event));
    event.events = EPOLLIN;
    event.data.u64 = token;
    return epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &event);
}

/// Stops watching `fd`.
static inline int cvfio_epoll_remove(int epfd, int fd) {
    return epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
}

/// The tokens of up to `max` (at most 256) ready descriptors, without waiting. Returns how
/// many were written to `tokens`, or -1 with errno set.
static inline int cvfio_epoll_ready(int epfd, uint64_t *tokens, int max) {
    struct epoll_event events[256];
    if (max > 256) max = 256;
    int count = epoll_wait(epfd, events, max, 0);
    for (int i = 0; i < count; i++) tokens[i] = events[i].data.u64;
    return count;
}

// MARK: - pidfd (following the VMM that holds a device)

/// pidfd_open(pid, 0): a descriptor that becomes readable when the process exits. syscall(2)
/// is variadic, so Swift reaches it through here.
static inline int cvfio_pidfd_open(int pid) { return (int)syscall(SYS_pidfd_open, pid, 0); }

/// pidfd_getfd(pidfd, targetfd, 0): a duplicate of another process's open file (needs
/// PTRACE_MODE_ATTACH_REALCREDS over it: CAP_SYS_PTRACE). The duplicate is close-on-exec.
static inline int cvfio_pidfd_getfd(int pidfd, int targetfd) {
    return (int)syscall(SYS_pidfd_getfd, pidfd, targetfd, 0);
}

// MARK: - inotify (a VMM opening a device's group node)

static const uint32_t CVFIO_IN_OPEN = IN_OPEN;
static const uint32_t CVFIO_IN_IGNORED = IN_IGNORED;
static const uint32_t CVFIO_IN_Q_OVERFLOW = IN_Q_OVERFLOW;
static const int CVFIO_INOTIFY_EVENT_SIZE = sizeof(struct inotify_event);

/// inotify_init1(IN_NONBLOCK | IN_CLOEXEC).
static inline int cvfio_inotify_init(void) { return inotify_init1(IN_NONBLOCK | IN_CLOEXEC); }

/// The watch descriptor and mask of the event at `offset` in `buffer`; returns the offset of
/// the next event (struct inotify_event has a flexible name member: it stays on this side).
static inline size_t cvfio_inotify_event_at(const unsigned char *buffer, size_t offset,
                                            int32_t *wd, uint32_t *mask) {
    struct inotify_event event;
    memcpy(&event, buffer + offset, sizeof(event));
    *wd = event.wd;
    *mask = event.mask;
    return offset + sizeof(struct inotify_event) + event.len;
}

// MARK: - glibc's heap

/// malloc_trim(0): returns freed heap memory to the kernel. 1 if any was returned.
static inline int cvfio_malloc_trim(void) { return malloc_trim(0); }
