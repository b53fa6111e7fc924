// A VM launcher that opens a vfio-pci device itself and hands its device file to vfio-powerd
// over the control socket (io.vfiopowerd.Manager.Handoff, the file passed as SCM_RIGHTS).
// The lab's VM test (vmm_under_systemd.py) builds and drives it: every number and struct
// comes from <linux/vfio.h>.
//
//   handoff_launcher SOCKET DEVICE
//
// Prints the daemon's reply on one line, then reads commands from stdin, one per line:
// "d3hot" and "d0" write the device's PMCSR through the config region (what a guest's
// driver does through its VMM), "exit" (or EOF) exits. Prints "ok" after each command.
#include <errno.h>
#include <fcntl.h>
#include <linux/vfio.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static void die(const char *what) {
    fprintf(stderr, "handoff_launcher: %s: %s\n", what, strerror(errno));
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: handoff_launcher SOCKET DEVICE\n");
        return 2;
    }
    const char *device = argv[2];
    char link[256], target[256];
    snprintf(link, sizeof link, "/sys/bus/pci/devices/%s/iommu_group", device);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n < 0) die("readlink iommu_group");
    target[n] = 0;
    char group_path[64];
    snprintf(group_path, sizeof group_path, "/dev/vfio/%s", strrchr(target, '/') + 1);

    int container = open("/dev/vfio/vfio", O_RDWR | O_CLOEXEC);
    if (container < 0) die("open /dev/vfio/vfio");
    int group = open(group_path, O_RDWR | O_CLOEXEC);
    if (group < 0) die(group_path);
    if (ioctl(group, VFIO_GROUP_SET_CONTAINER, &container) < 0) die("VFIO_GROUP_SET_CONTAINER");
    if (ioctl(container, VFIO_SET_IOMMU, VFIO_TYPE1v2_IOMMU) < 0) die("VFIO_SET_IOMMU");
    int fd = ioctl(group, VFIO_GROUP_GET_DEVICE_FD, device);
    if (fd < 0) die("VFIO_GROUP_GET_DEVICE_FD");
    struct vfio_region_info region = { .argsz = sizeof region, .index = VFIO_PCI_CONFIG_REGION_INDEX };
    if (ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, &region) < 0) die("VFIO_DEVICE_GET_REGION_INFO");

    // The PM capability's PMCSR (capability list from 0x34; id 1; PMCSR at +4).
    uint8_t pointer = 0, id = 0;
    if (pread(fd, &pointer, 1, region.offset + 0x34) != 1) die("read capability pointer");
    while (pointer) {
        if (pread(fd, &id, 1, region.offset + pointer) != 1) die("read capability");
        if (id == 1) break;
        if (pread(fd, &pointer, 1, region.offset + pointer + 1) != 1) die("read next capability");
    }
    if (!pointer) {
        fprintf(stderr, "handoff_launcher: %s has no PM capability\n", device);
        return 1;
    }
    off_t pmcsr = region.offset + pointer + 4;

    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0) die("socket");
    struct sockaddr_un address = { .sun_family = AF_UNIX };
    if (strlen(argv[1]) >= sizeof address.sun_path) { errno = ENAMETOOLONG; die(argv[1]); }
    strcpy(address.sun_path, argv[1]);
    if (connect(sock, (struct sockaddr *)&address, sizeof address) < 0) die("connect");

    char call[256];
    int length = snprintf(call, sizeof call,
                          "{\"method\":\"io.vfiopowerd.Manager.Handoff\",\"parameters\":{\"address\":\"%s\"}}", device);
    struct iovec iov = { .iov_base = call, .iov_len = (size_t)length + 1 };  // with its NUL
    union { struct cmsghdr header; char bytes[CMSG_SPACE(sizeof(int))]; } control;
    memset(&control, 0, sizeof control);
    struct msghdr message = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.bytes,
                              .msg_controllen = sizeof control.bytes };
    struct cmsghdr *c = CMSG_FIRSTHDR(&message);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(c), &fd, sizeof(int));
    if (sendmsg(sock, &message, MSG_NOSIGNAL) < 0) die("sendmsg");

    char reply[65536];
    size_t got = 0;
    while (got < sizeof reply - 1) {
        n = read(sock, reply + got, sizeof reply - 1 - got);
        if (n <= 0) die("read reply");
        got += (size_t)n;
        if (memchr(reply, 0, got)) break;
    }
    reply[got] = 0;
    printf("%s\n", reply);
    fflush(stdout);

    char line[64];
    while (fgets(line, sizeof line, stdin)) {
        if (strncmp(line, "exit", 4) == 0) break;
        uint16_t value;
        if (pread(fd, &value, 2, pmcsr) != 2) die("read PMCSR");
        value = (value & ~3) | (strncmp(line, "d3hot", 5) == 0 ? 3 : 0);
        if (pwrite(fd, &value, 2, pmcsr) != 2) die("write PMCSR");
        printf("ok\n");
        fflush(stdout);
    }
    return 0;
}
